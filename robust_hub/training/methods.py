"""Pre-training methods: each owns its per-step loss; the loop owns everything else."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

import torch

from robust_hub.attacks import contrastive_pgd
from robust_hub.config import RunConfig
from robust_hub.losses import acl_loss, nt_xent
from robust_hub.models import RobustBackbone
from robust_hub.training.distributed import gather_with_grad


class ACL:
    """Adversarial contrastive learning, dual-stream (Jiang et al., 2020)."""

    name = "acl"

    def __init__(self, config: RunConfig):
        self.config = config

    def strength(self, epoch: int) -> float:
        """Augmentation strength s for ``epoch`` (0-based)."""
        return self.config.method.strength

    def adv_weight(self, epoch: int) -> float:
        """w in ((1-w) L_nat + (1+w) L_adv) / 2."""
        return self.config.method.adv_weight

    def attack(self, model: RobustBackbone, view_i: torch.Tensor, view_j: torch.Tensor,
               autocast: Callable[[], AbstractContextManager]) -> tuple[torch.Tensor, torch.Tensor]:
        """Contrastive PGD on the pgd route with the model in eval mode."""
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
             adversarial: tuple[torch.Tensor, torch.Tensor], epoch: int) -> torch.Tensor:
        """The training loss on clean views (normal route) and adversarial views (pgd route)."""
        z_clean = self.global_pairs(model(torch.cat(views), route="normal", project=True))
        z_adv = self.global_pairs(model(torch.cat(adversarial), route="pgd", project=True))
        return acl_loss(z_clean, z_adv, self.adv_weight(epoch), self.config.method.temperature)

    @staticmethod
    def global_pairs(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(view i, view j) embeddings of the global batch from this process's [i; j] rows."""
        z_i, z_j = z.chunk(2)
        return gather_with_grad(z_i), gather_with_grad(z_j)


METHODS: dict[str, type[ACL]] = {"acl": ACL}
