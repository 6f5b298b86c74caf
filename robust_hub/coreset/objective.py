"""The representational divergence (RD) RCS minimises on the validation set, with its own PGD."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

RD_KINDS = ("minmax_kl", "softmax_kl")
_FLOOR = 1e-8  # the reference's floor under rescaled rows, so the logarithm stays finite

Embed = Callable[[torch.Tensor, str], torch.Tensor]  # (images, route) -> embeddings


def minmax_rows(z: torch.Tensor) -> torch.Tensor:
    """Each row rescaled to [0, 1] (not a distribution, unlike a softmax)."""
    low = z.min(dim=1, keepdim=True).values
    span = (z.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    return (z - low) / span


def representational_divergence(z_adv: torch.Tensor, z_nat: torch.Tensor, kind: str = "minmax_kl") -> torch.Tensor:
    """d(z_adv, z_nat), a scalar averaged over the batch.

    ``minmax_kl`` (the reference code's choice): with a = minmax(z_adv) + 1e-8 and b = minmax(z_nat) + 1e-8,
    the element-wise mean of a * (log a - log b), i.e. KL(a || b) averaged over every entry.
    ``softmax_kl`` (the ImageNet-scale choice): KL(softmax(z_adv) || softmax(z_nat)) summed over the
    embedding and averaged over the batch.
    """
    z_adv, z_nat = z_adv.float(), z_nat.float()
    if kind == "minmax_kl":
        a, b = minmax_rows(z_adv) + _FLOOR, minmax_rows(z_nat) + _FLOOR
        return (a * (a.log() - b.log())).mean()
    if kind == "softmax_kl":
        log_a, log_b = F.log_softmax(z_adv, dim=1), F.log_softmax(z_nat, dim=1)
        return (log_a.exp() * (log_a - log_b)).sum(dim=1).mean()
    raise ValueError(f"unknown RD kind {kind!r}; choose one of {RD_KINDS}")


def rd_attack(embed: Embed, x: torch.Tensor, eps: float, alpha: float, steps: int, kind: str,
              random_start: bool = True) -> torch.Tensor:
    """L-inf PGD maximising RD(embed(x~, pgd), embed(x, normal)); input gradients only."""
    with torch.no_grad():
        z_nat = embed(x, "normal")
    adv = x.detach().clone()
    if random_start and eps > 0:
        adv = (adv + torch.empty_like(adv).uniform_(-eps, eps)).clamp_(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = representational_divergence(embed(adv, "pgd"), z_nat, kind)
            (grad,) = torch.autograd.grad(loss, [adv])
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp_(0, 1)
    return adv.detach()
