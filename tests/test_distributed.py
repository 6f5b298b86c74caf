"""The gathered NT-Xent on 2 gloo processes equals the single-process loss on the whole batch."""

import os
import socket
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from robust_hub.losses import nt_xent
from robust_hub.training.distributed import gather_with_grad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, z_i, z_j, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        share = z_i.shape[0] // world
        local_i = z_i[rank * share:(rank + 1) * share].clone().requires_grad_(True)
        local_j = z_j[rank * share:(rank + 1) * share].clone().requires_grad_(True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = nt_xent(gather_with_grad(local_i), gather_with_grad(local_j))
            loss.backward()
        # DDP would average parameter gradients over processes; do the same to these leaves.
        results[rank] = (loss.item(), local_i.grad / world, local_j.grad / world, [str(w.message) for w in caught])
    finally:
        dist.destroy_process_group()


def test_gathered_loss_and_gradients_match_the_global_batch():
    torch.manual_seed(0)
    z_i, z_j = torch.randn(8, 5), torch.randn(8, 5)
    full_i, full_j = z_i.clone().requires_grad_(True), z_j.clone().requires_grad_(True)
    expected = nt_xent(full_i, full_j)
    expected.backward()
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), z_i, z_j, results), nprocs=2, join=True)
    for rank in range(2):
        loss, grad_i, grad_j, warned = results[rank]
        assert warned == []  # no deprecation warning from the gather, once per process and step
        assert abs(loss - expected.item()) < 1e-5
        assert torch.allclose(grad_i, full_i.grad[rank * 4:(rank + 1) * 4], atol=1e-6)
        assert torch.allclose(grad_j, full_j.grad[rank * 4:(rank + 1) * 4], atol=1e-6)
