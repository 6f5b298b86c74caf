"""LARS and warm-up + cosine schedule, from timm."""

from __future__ import annotations

from timm.optim import Lars, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from robust_hub.config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig) -> Lars:
    """LARS; biases and batch-norm parameters get no weight decay and hence no LARS adaptation."""
    groups = param_groups_weight_decay(model, weight_decay=train.weight_decay)
    return Lars(groups, lr=train.lr, momentum=train.momentum, trust_coeff=train.trust_coefficient)


def build_scheduler(optimizer: Lars, train: TrainConfig) -> CosineLRScheduler:
    """Linear warm-up from 0, then cosine to 0; stepped with fractional epochs.

    Stepping by epoch progress (not a step count) keeps the schedule right when the number of
    steps per epoch changes, as it does when a coreset replaces the full set.
    """
    return CosineLRScheduler(
        optimizer,
        t_initial=train.epochs,
        warmup_t=train.warmup_epochs,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        lr_min=0.0,
        t_in_epochs=True,
    )
