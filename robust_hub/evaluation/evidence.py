"""Evidence for robust numbers: the adversarial examples that broke test images, kept so anyone can re-check
a record's robust accuracy with one forward pass (``robust-hub verify``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AdversarialSet:
    """Adversarial examples an attack found: ``images[k]`` (float32 in [0,1], ``[K,C,H,W]``) is misclassified by the
    attacked model and lies in the threat model around test image ``indices[k]`` (int64 ``[K]``, a position in the
    evaluated test subset, increasing)."""

    indices: torch.Tensor
    images: torch.Tensor

    @classmethod
    def empty(cls, shape: tuple[int, ...] = (3, 32, 32)) -> "AdversarialSet":
        return cls(torch.zeros(0, dtype=torch.long), torch.zeros(0, *shape))

    @classmethod
    def concat(cls, parts: list["AdversarialSet"]) -> "AdversarialSet":
        """Parts of one attack's examples (e.g. from several chunks or processes), ordered by index."""
        parts = [p for p in parts if len(p.indices)]
        if not parts:
            return cls.empty()
        indices, images = torch.cat([p.indices for p in parts]), torch.cat([p.images for p in parts])
        order = indices.argsort()
        return cls(indices[order], images[order])
