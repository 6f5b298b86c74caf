"""Cross-process gathering so contrastive losses see the whole global batch as negatives."""

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process (rank order), keeping the autograd graph.

    Every process then computes the same global loss; the all-gather's backward sums each
    process's share of the gradient, and DDP's averaging turns that into the global gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return torch.cat(all_gather(tensor), dim=0)
