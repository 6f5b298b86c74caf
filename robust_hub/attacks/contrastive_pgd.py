"""PGD that maximises a loss of a pair of views, asking autograd for input gradients only."""

from __future__ import annotations

from typing import Callable

import torch

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def contrastive_pgd(
    loss_fn: PairLoss,
    x_i: torch.Tensor,
    x_j: torch.Tensor,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 5,
    random_start: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf PGD on both views jointly; returns detached adversarial views in [0,1].

    Each step: x <- clip_[0,1](x + alpha * sign(grad)), then projection onto the eps-ball
    around the clean view. ``torch.autograd.grad`` with the inputs as the only targets means
    no parameter ``.grad`` is touched (the caller puts the model in eval mode).
    """
    clean = torch.stack([x_i, x_j]).detach()
    adv = clean.clone()
    if random_start and eps > 0:
        # Contiguous noise: the same start whatever the views' memory format (channels-last).
        noise = torch.empty_like(adv, memory_format=torch.contiguous_format).uniform_(-eps, eps)
        adv = (adv + noise).clamp_(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(adv[0], adv[1])
            (grad,) = torch.autograd.grad(loss, [adv])
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.min(torch.max(adv, clean - eps), clean + eps).clamp_(0, 1)
    return adv[0].detach(), adv[1].detach()
