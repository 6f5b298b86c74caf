"""Every eval argument is checked before any model is loaded or finetuned, and before anything is written."""

from __future__ import annotations

from pathlib import Path

import torch

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.records import EVIDENCE_DIR
from robust_hub.io import check_writable_path, claim_directory

RESULTS_KIND = "eval-results"
STATE_DIR = "state"  # resumable state of an eval --out (finetuned heads, AutoAttack progress)


def _positive(name: str, value: int | None, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RobustHubError(f"{name} must be a positive integer, got {value!r}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` or a device that exists on this machine; anything else is one clear error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RobustHubError(f"--device {device!r} is not a device name (auto, cpu, cuda, cuda:1, ...)") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index is not None and resolved.index >= count):
            raise RobustHubError(f"--device {device}: this machine has {count} CUDA device(s)")
        return resolved
    backend = getattr(torch, resolved.type, None) or getattr(torch.backends, resolved.type, None)
    if not (backend is not None and getattr(backend, "is_available", lambda: False)()):
        raise RobustHubError(f"--device {device}: no {resolved.type} device on this machine")
    return resolved


def validate_eval_arguments(*, out_dir, n_train, n_test, n_autoattack, batch_size, autoattack_chunk_size,
                            c10c_dir, c10c_n_per_severity, overwrite: bool) -> None:
    _positive("--n-train", n_train)
    _positive("--n-test", n_test)
    _positive("--n-autoattack", n_autoattack)
    _positive("--c10c-n-per-severity", c10c_n_per_severity)
    _positive("--batch-size", batch_size, optional=False)
    _positive("--autoattack-chunk-size", autoattack_chunk_size, optional=False)
    if c10c_dir is not None and not Path(c10c_dir).is_dir():
        raise RobustHubError(f"--c10c-dir {c10c_dir} is not a directory (it should hold the CIFAR-10-C .npy files)")
    check_writable_path(out_dir)
    claim_directory(out_dir, RESULTS_KIND, overwrite=overwrite, what="--out", writes=(STATE_DIR, EVIDENCE_DIR))
