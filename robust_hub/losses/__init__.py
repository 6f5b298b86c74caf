"""Losses: pure functions of embeddings with explicit hyperparameters."""

from robust_hub.losses.acl import acl_loss
from robust_hub.losses.ir import IR_DIVERGENCES, air_loss, ir_divergence, sir_loss
from robust_hub.losses.nt_xent import nt_xent

__all__ = ["IR_DIVERGENCES", "acl_loss", "air_loss", "ir_divergence", "nt_xent", "sir_loss"]
