"""Attacks: functions on [0,1] images that ask autograd for the input gradient only."""

from robust_hub.attacks.contrastive_pgd import contrastive_pgd

__all__ = ["contrastive_pgd"]
