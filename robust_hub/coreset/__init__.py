"""Robustness-aware coreset selection (RCS): functions of (model, data, config) that return indices."""

from robust_hub.coreset.objective import RD_KINDS, minmax_rows, rd_attack, representational_divergence
from robust_hub.coreset.select import (
    Selection,
    budget_batches,
    chunk_picks,
    coreset_active,
    greedy_select,
    partition,
    row_mean_compressor,
    select_coreset,
    selection_due,
)

__all__ = ["RD_KINDS", "Selection", "budget_batches", "chunk_picks", "coreset_active", "greedy_select", "minmax_rows",
           "partition", "rd_attack", "representational_divergence", "row_mean_compressor", "select_coreset",
           "selection_due"]
