"""What a run needs to say about how it was made: versions, hardware, seeds, command."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from datetime import datetime, timezone
from typing import Any

import torch

PACKAGES = ("robust-hub", "torch", "torchvision", "timm", "transformers", "datasets", "accelerate",
            "huggingface_hub", "safetensors", "kornia", "pyautoattack", "numpy")


def library_versions() -> dict[str, str]:
    """Installed versions, keyed by import-style name (``robust_hub``, ``huggingface_hub``)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name.replace("-", "_")] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name.replace("-", "_")] = "not installed"
    return versions


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.machine(),
                            "cpu_count": os.cpu_count(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment(seeds: dict[str, int], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"versions": library_versions(), "hardware": hardware(), "seeds": seeds,
            "command": sys.argv, "recorded_at": now(), **(extra or {})}
