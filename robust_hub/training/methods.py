"""Pre-training methods: each owns its per-step loss; the loop owns everything else.

A method is a plug-in of the one loop (``loop.py``): ``strength(epoch)`` sets the data pipeline of
an epoch, ``attack`` crafts the adversarial views, ``loss`` returns a :class:`LossTerms`. ACL and
DynACL differ only in their schedules; invariant regularisation (``method.ir``) adds SIR and AIR to
either, so the four combinations ACL, ACL+IR, DynACL, DynACL+IR come from the config.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

import torch

from robust_hub.attacks import contrastive_pgd
from robust_hub.config import RunConfig
from robust_hub.losses import air_loss, nt_xent, sir_loss
from robust_hub.models import RobustBackbone
from robust_hub.training.distributed import gather_with_grad


@dataclass
class LossTerms:
    """The training loss and its named parts; each part is a weighted share, so they sum to ``total``."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]


class ACL:
    """Adversarial contrastive learning, dual-stream (Jiang et al., 2020), optionally with IR."""

    name = "acl"

    def __init__(self, config: RunConfig):
        self.config = config

    @property
    def label(self) -> str:
        """What the run trains, e.g. ``DynACL+IR``."""
        from robust_hub.training.card import method_label

        return method_label(self.config)

    def strength(self, epoch: int) -> float:
        """Augmentation strength s for ``epoch`` (0-based)."""
        return self.config.method.strength

    def adv_weight(self, epoch: int) -> float:
        """w in ((1-w) L_nat + (1+w) L_adv) / 2."""
        return self.config.method.adv_weight

    def attack(self, model: RobustBackbone, view_i: torch.Tensor, view_j: torch.Tensor,
               autocast: Callable[[], AbstractContextManager]) -> tuple[torch.Tensor, torch.Tensor]:
        """Contrastive PGD on the pgd route with the model in eval mode (plain NT-Xent, also with IR)."""
        attack, t = self.config.attack, self.config.method.temperature

        def pair_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            with autocast():
                z = model(torch.cat([a, b]), route="pgd", project=True)
            return nt_xent(*z.chunk(2), temperature=t)

        was_training = model.training
        model.eval()
        try:
            return contrastive_pgd(pair_loss, view_i, view_j, attack.eps, attack.alpha, attack.steps, attack.random_start)
        finally:
            model.train(was_training)

    def loss(self, model: torch.nn.Module, views: tuple[torch.Tensor, torch.Tensor],
             adversarial: tuple[torch.Tensor, torch.Tensor], epoch: int,
             original: torch.Tensor | None = None) -> LossTerms:
        """The training loss on clean views (normal route), adversarial views (pgd route) and, with IR,
        the un-augmented images ``original`` (normal route, their own forward pass).

        Without IR: ((1-w) L_nat + (1+w) L_adv) / 2. With IR (no /2, method.md):
        (1-w) L_nat + (1+w) L_adv + lambda1 SIR + lambda2 AIR.
        """
        me = self.config.method
        w, t = self.adv_weight(epoch), me.temperature
        z_i, z_j = self.global_pairs(model(torch.cat(views), route="normal", project=True))
        a_i, a_j = self.global_pairs(model(torch.cat(adversarial), route="pgd", project=True))
        scale = 1.0 if me.ir else 0.5
        parts = {"nat": scale * (1 - w) * nt_xent(z_i, z_j, t), "adv": scale * (1 + w) * nt_xent(a_i, a_j, t)}
        if me.ir:
            if original is None:
                raise ValueError("IR needs the un-augmented images (original=...)")
            z_o = gather_with_grad(model(original, route="normal", project=True))
            parts["sir"] = me.sir_weight * sir_loss(z_i, z_j, z_o, t, me.ir_divergence)
            parts["air"] = me.air_weight * air_loss(a_i, a_j, z_i, z_j, z_o, t, me.ir_divergence)
        return LossTerms(sum(parts.values()), parts)

    @staticmethod
    def global_pairs(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(view i, view j) embeddings of the global batch from this process's [i; j] rows."""
        z_i, z_j = z.chunk(2)
        return gather_with_grad(z_i), gather_with_grad(z_j)


class DynACL(ACL):
    """Dynamic ACL (Luo et al., ICLR 2023): augmentations weaken and the adversarial term grows.

    With 1-based epoch e of E: s = 1 - floor((e - 1) / K) * K / E (K = ``method.schedule_period``,
    50 in the paper) and w = (2/3)(1 - s). Both are functions of the epoch alone, so a resumed run
    is on the same schedule.
    """

    name = "dynacl"

    def strength(self, epoch: int) -> float:
        period, epochs = self.config.method.schedule_period, self.config.train.epochs
        return 1.0 - math.floor(epoch / period) * period / epochs  # epoch is 0-based: e - 1 = epoch

    def adv_weight(self, epoch: int) -> float:
        return 2.0 / 3.0 * (1.0 - self.strength(epoch))


METHODS: dict[str, type[ACL]] = {"acl": ACL, "dynacl": DynACL}
