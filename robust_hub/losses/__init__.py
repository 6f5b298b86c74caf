"""Losses: pure functions of embeddings with explicit hyperparameters."""

from robust_hub.losses.acl import acl_loss
from robust_hub.losses.nt_xent import nt_xent

__all__ = ["acl_loss", "nt_xent"]
