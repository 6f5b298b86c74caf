"""Small real image sets that ship inside installed packages, so everything runs offline.

Only ``digits`` exists today: scikit-learn's copy of the UCI handwritten digits
(1797 grey 8x8 images, 10 classes), rendered as RGB uint8 at a chosen size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from robust_hub.errors import RobustHubError

# The fixed held-out share and seed of the embedded "test" split; changing either
# changes every embedded fingerprint, so they are constants, not options.
TEST_FRACTION = 0.2
SPLIT_SEED = 0
DEFAULT_SIZE = 32

RenderedSet = tuple[torch.Tensor, torch.Tensor, list[str]]


def _render_digits(size: int) -> RenderedSet:
    """All 1797 digits as ``[N, 3, size, size]`` uint8, their labels and class names."""
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    bunch = load_digits()
    grey = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8], values 0..16
    grey = grey * (255.0 / 16.0)
    if size != grey.shape[-1]:
        # Bicubic upsampling of an 8x8 glyph overshoots; the clamp keeps it a valid image.
        grey = F.interpolate(grey, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    images = grey.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels, [str(k) for k in range(10)]


_EMBEDDED: dict[str, Callable[[int], RenderedSet]] = {"digits": _render_digits}


def embedded_names() -> list[str]:
    """The names accepted after ``embedded:``."""
    return sorted(_EMBEDDED)


def render_embedded(name: str, size: int | None) -> RenderedSet:
    """Every image of the embedded set ``name`` (both splits), at ``size`` (default 32)."""
    if name not in _EMBEDDED:
        choices = ", ".join(f"embedded:{n}" for n in embedded_names())
        raise RobustHubError(f"unknown embedded dataset 'embedded:{name}'; available: {choices}.")
    return _EMBEDDED[name](DEFAULT_SIZE if size is None else size)
