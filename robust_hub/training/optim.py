"""LARS and the warm-up + cosine schedule, from timm, set up as the reference code optimises."""

from __future__ import annotations

import logging

import torch
from timm.optim import Lars, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from robust_hub.config import TrainConfig

LARS_CONVENTIONS = ("reference", "simclr")


class ReferenceMomentumLars(Lars):
    """timm's LARS whose momentum buffer behaves as the reference code's: it holds lr x update.

    timm keeps buf = m buf + ratio (g + wd w) and steps by lr x buf; the reference keeps
    buf = m buf + lr ratio (g + wd w) and steps by buf. They agree at a constant lr, but while the
    lr moves (warm-up, cosine) timm applies today's lr to the whole history (``tests/test_optim.py``
    prints how far that drifts). Rescaling timm's buffer by lr_old / lr_new whenever the lr
    changes makes lr_new x buf equal the reference's buffer, by induction.
    """

    def step(self, closure=None):
        for group in self.param_groups:
            buffer_lr = group.setdefault("buffer_lr", group["lr"])  # saved with the optimiser's state
            if group["lr"] != buffer_lr:
                factor = buffer_lr / group["lr"] if group["lr"] > 0 else 0.0
                buffers = [self.state[p]["momentum_buffer"] for p in group["params"]
                           if p in self.state and self.state[p].get("momentum_buffer") is not None]
                if buffers:  # one multi-tensor kernel, not one per parameter: the lr moves every step
                    torch._foreach_mul_(buffers, factor)
                group["buffer_lr"] = group["lr"]
        return super().step(closure)


def build_optimizer(model: nn.Module, train: TrainConfig) -> Lars:
    """LARS with the trust ratio eta ||w|| / (||g|| + wd ||w||) (1 where a norm is 0).

    ``reference`` (the ACL/DynACL/IR code): one parameter group; the trust ratio and the weight
    decay apply to every parameter, batch-norm weights and biases included. ``simclr``: biases
    and batch-norm parameters get neither, so they move with the raw learning rate.

    Both conventions use the reference's momentum rule (:class:`ReferenceMomentumLars`).
    """
    common = dict(lr=train.lr, momentum=train.momentum, trust_coeff=train.trust_coefficient)
    if train.lars_convention == "reference":
        # eps=0: the ratio as the reference writes it. timm's default adds 1e-8 to the denominator,
        # which is not negligible for the near-zero gradient of a bias followed by batch norm.
        return ReferenceMomentumLars(model.parameters(), weight_decay=train.weight_decay, always_adapt=True,
                                     eps=0.0, **common)
    return ReferenceMomentumLars(param_groups_weight_decay(model, weight_decay=train.weight_decay), **common)


def build_scheduler(optimizer: Lars, train: TrainConfig) -> CosineLRScheduler:
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine to ``lr_min`` at the last epoch.

    At epoch progress e (fractional) of E, warm-up W: lr = lr0 e / W while e < W, then
    lr_min + (lr0 - lr_min)(1 + cos(pi (e - W) / (E - W))) / 2, which is method.md's per-iteration
    formula with e = s / steps_per_epoch. Stepping by epoch progress (not a step count) keeps
    the schedule right when the number of steps per epoch changes, as with coresets.
    """
    # timm warns that a cosine over one epoch "will have no effect"; stepped by fractional epoch progress it has.
    timm_log = logging.getLogger(CosineLRScheduler.__module__)
    level = timm_log.level
    timm_log.setLevel(logging.ERROR)
    try:
        return CosineLRScheduler(
            optimizer,
            t_initial=train.epochs - train.warmup_epochs,
            warmup_t=train.warmup_epochs,
            warmup_lr_init=0.0,
            warmup_prefix=True,
            lr_min=train.lr_min,
            t_in_epochs=True,
        )
    finally:
        timm_log.setLevel(level)
