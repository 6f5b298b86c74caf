"""The ACL dual-stream loss (DynACL's is the same with w > 0)."""

import torch

from robust_hub.losses.nt_xent import nt_xent


def acl_loss(
    clean: tuple[torch.Tensor, torch.Tensor],
    adversarial: tuple[torch.Tensor, torch.Tensor],
    adv_weight: float = 0.0,
    temperature: float = 0.5,
) -> torch.Tensor:
    """((1-w) NT-Xent(clean pair, normal route) + (1+w) NT-Xent(adversarial pair, pgd route)) / 2."""
    natural = nt_xent(*clean, temperature=temperature)
    robust = nt_xent(*adversarial, temperature=temperature)
    return ((1 - adv_weight) * natural + (1 + adv_weight) * robust) / 2
