"""Cross-process gathering so contrastive losses see the whole global batch as negatives."""

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward hands each process the sum, over processes, of the gradient of its shard.

    Written on the public ``dist.all_gather``/``all_reduce`` (gloo and NCCL alike): torch's own autograd
    all-gathers are deprecated or private and change from release to release. Shards must have equal shapes.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        shards = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, tensor.contiguous())
        return torch.cat(shards, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every process's loss depends on every shard
        share = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * share:(rank + 1) * share]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process (rank order), keeping the autograd graph.

    Every process then computes the same global loss; the all-gather's backward sums each
    process's share of the gradient, and DDP's averaging turns that into the global gradient.
    """
    if _LOCAL_ONLY[0] or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


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
