"""One evaluation over several processes (``accelerate launch`` / torchrun): who I am, which units of work are
mine, and how the results come together.

The work of a metric is cut into fixed units that do not depend on the process count (batches at fixed
index ranges, AutoAttack chunks); units are dealt round-robin and each unit seeds itself from (seed, unit
start), so per-image results are the same whatever process runs a unit and however many there are.
A plain single process never creates a process group: every function here is then a no-op.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from robust_hub.errors import RobustHubError

T = TypeVar("T")
# Collectives wait this long: the other processes wait in a barrier while the main process finetunes a
# classifier (hours for AFF). A crashed process does not leave the rest hanging: the launcher ends them.
WAIT_TIMEOUT = timedelta(hours=48)
UNIT_SEEDING = "each unit of images seeds its attack with sha256('<seed>:<index of its first image>')"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def _group() -> bool:
    """Join the launcher's process group on first use; False for a single process."""
    if world_size() == 1:
        return False
    if not dist.is_initialized():  # gloo on GPUs too: only small CPU results and barriers go over it
        dist.init_process_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return True


def process_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda`` becomes ``cuda:<local rank>`` under a launcher."""
    if device.type == "cuda" and device.index is None and world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def unit_seed(seed: int, start: int) -> int:
    """The seed of the unit whose first image is ``start`` (see ``UNIT_SEEDING``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{start}".encode()).digest()[:7], "big")


def mine(units: Sequence[T]) -> list[T]:
    """This process's share of ``units``: every ``world_size``-th one, from its rank."""
    return list(units[rank()::world_size()])


def gather(part: dict[Any, Any]) -> dict[Any, Any]:
    """Every process's ``part`` merged (on every process); the parts must have disjoint keys."""
    if not _group():
        return part
    parts: list[dict | None] = [None] * world_size()
    dist.all_gather_object(parts, part)
    merged: dict = {}
    for p in parts:
        merged.update(p or {})
    return merged


def barrier() -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if _group():
        dist.barrier()


def main_first(load: Callable[[], T]) -> T:
    """``load()`` on the first process of each machine, then on the others: a download or cache fill happens once
    per machine.

    Bad input found by a first process (a missing dataset) ends every process with the one ``error:`` line the
    main process prints: the others learn of the failure and wait until the failing process has reported it
    (``RobustHubError.after_report``), so no process dies in a collective and the launcher cannot stop the
    failing one before its report is out.
    """
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        _share_outcome(None)
        return load()
    try:
        value = load()
    except RobustHubError as error:
        if _group():
            _share_outcome(str(error))
            error.after_report = dist.barrier  # releases the processes waiting in _share_outcome
        raise
    _share_outcome(None)
    return value


def _share_outcome(failure: str | None) -> None:
    """Every first process's ``failure`` (None: it loaded) shared; a process that did not fail raises the first
    failure, once the failing processes have reported theirs."""
    if not _group():
        return
    failures: list[str | None] = [None] * world_size()
    dist.all_gather_object(failures, failure)
    first = next((f for f in failures if f is not None), None)
    if first is not None and failure is None:
        dist.barrier()
        raise RobustHubError(first)


def same_everywhere(value: T) -> T:
    """The main process's ``value``, on every process (e.g. a decision made from timings or files)."""
    if not _group():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
