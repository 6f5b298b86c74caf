"""Which indices each process trains on, step by step: a pure function of (seed, epoch)."""

from __future__ import annotations

import torch


def epoch_batches(
    indices: torch.Tensor, global_batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[torch.Tensor]:
    """The epoch's shuffled global batches (last partial one dropped), this process's share of each.

    Being a function of (seed, epoch) only, resuming at step k is ``epoch_batches(...)[k:]``:
    nothing about the data order lives in RNG state that a restart could disturb.
    """
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = indices[torch.randperm(len(indices), generator=generator)]
    steps = len(order) // global_batch
    per_process = global_batch // world
    return [
        order[s * global_batch + rank * per_process: s * global_batch + (rank + 1) * per_process]
        for s in range(steps)
    ]
