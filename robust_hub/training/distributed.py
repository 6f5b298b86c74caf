"""Cross-process gathering so contrastive losses see the whole global batch as negatives."""

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process (rank order), keeping the autograd graph.

    Every process then computes the same global loss; the all-gather's backward sums each
    process's share of the gradient, and DDP's averaging turns that into the global gradient.
    """
    if _LOCAL_ONLY[0] or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return torch.cat(all_gather(tensor), dim=0)


_LOCAL_ONLY = [False]


@contextmanager
def local_only() -> Iterator[None]:
    """Inside, ``gather_with_grad`` returns the local tensor: coreset selection scores each process's own
    minibatches on their own, as in a single process."""
    previous, _LOCAL_ONLY[0] = _LOCAL_ONLY[0], True
    try:
        yield
    finally:
        _LOCAL_ONLY[0] = previous
