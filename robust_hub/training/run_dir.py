"""A run's output directory belongs to one run: ownership, resume checks and checkpoint pruning.

- A fresh run refuses a directory that holds another run's checkpoints or model, or files robust-hub
  did not write, unless told to overwrite. With overwrite, the earlier run's checkpoints are set
  aside (renamed ``.step_N.replaced``) and deleted only once this run's first checkpoint is complete.
- ``--resume`` refuses a checkpoint whose saved config differs from the current one in anything that
  changes the result; only bookkeeping keys and the ``speed.*`` switches may differ, and
  ``train.epochs`` may only grow.
- Pruning keeps the newest ``keep`` checkpoints, by step number, and touches nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from robust_hub.config import RunConfig, SpeedConfig
from robust_hub.errors import RobustHubError
from robust_hub.io import check_writable_path, claim_directory

log = logging.getLogger("robust_hub.pretrain")

CHECKPOINTS = "checkpoints"
PROGRESS_FILE = "progress.json"
CONFIG_FILE = "run_config.json"  # the config a checkpoint was written with
# Keys that do not change what a run computes: they may differ on --resume.
# The speed switches choose how the same computation is executed (as a change of device does).
RESUMABLE_KEYS = {"train.output_dir", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.probe",
                  "data.cache_dir"} | {f"speed.{f.name}" for f in dataclasses.fields(SpeedConfig)}


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_", 1)[1])


def checkpoints_in(out: Path) -> list[Path]:
    """The finished checkpoints under ``out``, oldest first (by step number, not by name)."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=step_of)


def prepare_output_dir(out: Path, config: RunConfig, resume: str | bool | None, overwrite: bool) -> Path | None:
    """Check ``out`` before any work; return the checkpoint to resume from, if any. Writes nothing."""
    check_writable_path(out)
    if resume:
        checkpoint = find_checkpoint(out, resume)
        check_resume_config(checkpoint, config)
        return checkpoint
    earlier = checkpoints_in(out)
    if (earlier or (out / "model").exists()) and not overwrite:
        what = f"checkpoints up to {earlier[-1].name}" if earlier else "a finished model"
        raise RobustHubError(f"train.output_dir {out} holds another run's {what}; continue it with --resume, choose "
                             "another train.output_dir, or pass --overwrite to start over there")
    claim_directory(out, "run", overwrite=overwrite, what="train.output_dir")
    return None


def set_aside_earlier_checkpoints(out: Path) -> None:
    """With overwrite: the earlier run's checkpoints stay until this run has one of its own."""
    for checkpoint in checkpoints_in(out):
        os.replace(checkpoint, checkpoint.with_name(f".{checkpoint.name}.replaced"))


def clean_stale_checkpoints(out: Path) -> None:
    """Remove half-written checkpoints a kill left (``.step_N.tmp``)."""
    root = out / CHECKPOINTS
    if root.is_dir():
        for stale in root.glob(".step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def prune_checkpoints(out: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; drop the ones an overwritten run left aside."""
    root = out / CHECKPOINTS
    for replaced in root.glob(".step_*.replaced"):
        shutil.rmtree(replaced, ignore_errors=True)
    for stale in checkpoints_in(out)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)


def find_checkpoint(out: Path, resume: str | bool) -> Path:
    if resume is True or resume == "latest":
        candidates = checkpoints_in(out)
        if not candidates:
            raise RobustHubError(f"--resume: no checkpoint under {out / CHECKPOINTS}")
        return candidates[-1]
    path = Path(resume)
    if not (path / PROGRESS_FILE).is_file() or not any(path.glob("model*.safetensors")):
        raise RobustHubError(f"--resume: {path} is not a robust-hub checkpoint directory")
    return path


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def saved_config(checkpoint: Path) -> dict[str, Any]:
    """The config a checkpoint was written with (older checkpoints: the run's run_config.yaml)."""
    try:
        if (checkpoint / CONFIG_FILE).is_file():
            return json.loads((checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
        legacy = checkpoint.parent.parent / "run_config.yaml"
        return yaml.safe_load(legacy.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise RobustHubError(f"--resume: cannot read the config {checkpoint} was written with ({error})") from None


def check_resume_config(checkpoint: Path, config: RunConfig) -> None:
    saved = saved_config(checkpoint)
    if not isinstance(saved, dict):
        raise RobustHubError(f"--resume: the config saved with {checkpoint} is malformed")
    defaults = _flatten(RunConfig().to_dict())
    then, now = _flatten(saved), _flatten(json.loads(json.dumps(config.to_dict())))
    differing = sorted(key for key in set(then) | set(now) if key not in RESUMABLE_KEYS | {"train.epochs"}
                       and then.get(key, defaults.get(key)) != now.get(key, defaults.get(key)))
    if differing:
        shown = ", ".join(f"{k} ({then.get(k, defaults.get(k))!r} -> {now.get(k, defaults.get(k))!r})" for k in differing)
        raise RobustHubError(f"--resume: {checkpoint} was written with a different config: {shown}; resume with the "
                             "same settings or start a new run in another train.output_dir")
    switched = [k for k in sorted(then) if k.startswith("speed.") and then[k] != now.get(k, defaults.get(k))]
    if switched:  # allowed, but bf16 and compile change rounding: say so rather than promise a bitwise resume
        log.warning("resuming with other speed switches (%s): the same computation, but not bit for bit the "
                    "numbers an uninterrupted run would give", ", ".join(f"{k} {then[k]!r} -> {now.get(k)!r}"
                                                                   for k in switched))
    if now["train.epochs"] < then.get("train.epochs", now["train.epochs"]):
        raise RobustHubError(f"--resume: train.epochs may grow but not shrink ({then['train.epochs']} -> "
                             f"{now['train.epochs']})")
