"""The fast path of a training step: bf16 autocast, channels-last, torch.compile, multi-tensor
optimiser steps, CUDA graphs, and losses read back without a host synchronisation per step.

``speed.*`` in the run config switches each part; ``auto`` turns a part on where it is safe and
pays. Channels-last pays everywhere (1.03-1.85x on a CPU too); bf16 and compile only on CUDA: on a
CPU without bf16 units bf16 ran 11x slower, and compiling costs minutes
(``bench/bench_acl_step.py`` measures the variants in one process).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from robust_hub.config import SpeedConfig
from robust_hub.errors import RobustHubError

Autocast = Callable[[], AbstractContextManager]


@dataclass(frozen=True)
class FastPath:
    """The resolved switches for one device (no ``auto`` left)."""

    device_type: str = "cpu"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    foreach: bool | None = None  # None: the optimiser's own choice (timm: multi-tensor on CUDA)
    sync_free: bool = False
    compile_backend: str = "inductor"

    @classmethod
    def resolve(cls, speed: SpeedConfig, device: torch.device, mixed_precision: str = "no") -> "FastPath":
        """Decide every ``auto`` for ``device``; ``mixed_precision`` is what Accelerate already does."""
        cuda = device.type == "cuda"

        def pick(value: bool | str) -> bool:
            return cuda if value == "auto" else bool(value)

        if speed.cuda_graphs and not cuda:
            raise RobustHubError(f"speed.cuda_graphs=true needs a CUDA device; this run is on {device.type}")
        bf16 = pick(speed.bf16) and mixed_precision in (None, "no")
        if speed.bf16 == "auto" and cuda:
            bf16 = bf16 and torch.cuda.is_bf16_supported()
        return cls(
            device_type=device.type, bf16=bf16, channels_last=speed.channels_last in ("auto", True),
            compile=pick(speed.compile) or speed.cuda_graphs, cuda_graphs=speed.cuda_graphs,
            foreach=None if speed.foreach == "auto" else bool(speed.foreach), sync_free=speed.sync_free,
        )

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    def autocast_factory(self, fallback: Autocast = nullcontext) -> Autocast:
        """bf16 autocast when the fast path has it, else ``fallback`` (e.g. Accelerate's own)."""
        if not self.bf16:
            return fallback
        return lambda: torch.autocast(self.device_type, dtype=torch.bfloat16)

    def autocast(self) -> AbstractContextManager:
        return self.autocast_factory()()

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Channels-last weights and an in-place compile, before the optimiser and Accelerate see it.

        ``nn.Module.compile`` keeps the module object, its parameters and its state-dict keys, so
        checkpoints, ``unwrap_model`` and the attack (which calls the unwrapped model) are
        unchanged and all share the compiled code. The route is an argument of ``forward``:
        dynamo specialises on it, so each (route, train/eval) pair compiles once and later steps
        reuse it (``tests/test_fast.py`` checks there are no graph breaks and no recompiles).
        """
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            mode = "reduce-overhead" if self.cuda_graphs else None
            model.compile(backend=self.compile_backend, mode=mode, dynamic=False)
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        if self.foreach is not None:
            for group in optimizer.param_groups:
                if "foreach" in group:
                    group["foreach"] = self.foreach
        return optimizer


class DeviceLosses:
    """Per-step losses (the total and its named parts) kept on the device, read back together:
    one collective and one host synchronisation for any number of steps."""

    def __init__(self) -> None:
        self.pending: list[torch.Tensor] = []
        self.names: tuple[str, ...] = ()

    def add(self, total: torch.Tensor, parts: dict[str, torch.Tensor] | None = None) -> None:
        parts = parts or {}
        if self.pending and tuple(parts) != self.names:
            raise ValueError(f"loss parts changed from {self.names} to {tuple(parts)} between reads")
        self.names = tuple(parts)
        self.pending.append(torch.stack([total.detach().float(), *(v.detach().float() for v in parts.values())]))

    def __len__(self) -> int:
        return len(self.pending)

    def read(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> list[tuple[float, dict[str, float]]]:
        """Each pending step's (loss, parts), reduced over processes by ``reduce``, as Python floats."""
        if not self.pending:
            return []
        rows = reduce(torch.stack(self.pending)).tolist()
        self.pending = []
        return [(row[0], dict(zip(self.names, row[1:]))) for row in rows]
