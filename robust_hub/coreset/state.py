"""The coreset schedule's state, kept in checkpoints (JSON + safetensors, never pickle) and drawn as a plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robust_hub.errors import RobustHubError

STATE_JSON, STATE_TENSORS = "coreset.json", "coreset.safetensors"


@dataclass
class CoresetState:
    """The current coreset (positions in the training set), the epoch it was chosen for, and every selection's record."""

    indices: torch.Tensor | None = None
    selected_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)

    def save(self, directory: Path) -> None:
        (directory / STATE_JSON).write_text(json.dumps({"selected_epoch": self.selected_epoch, "history": self.history}),
                                            encoding="utf-8")
        if self.indices is not None:
            save_file({"indices": self.indices.cpu().contiguous()}, str(directory / STATE_TENSORS))

    @classmethod
    def load(cls, directory: Path) -> "CoresetState":
        """The state saved in a checkpoint; an empty state for checkpoints written without one."""
        if not (directory / STATE_JSON).is_file():
            return cls()
        try:
            meta = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
            indices = load_file(str(directory / STATE_TENSORS))["indices"] if (directory / STATE_TENSORS).is_file() else None
            state = cls(indices, int(meta["selected_epoch"]), list(meta["history"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RobustHubError(f"--resume: the coreset state in {directory} is corrupt ({error})") from None
        if indices is not None and (indices.dtype != torch.int64 or indices.dim() != 1):
            raise RobustHubError(f"--resume: the coreset indices in {directory} are not an int64 vector")
        return state


def selections_png(history: list[dict[str, Any]], title: str) -> bytes:
    """Per selection: wall time, the picked batches' gains, and the coreset's class balance where labels exist."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with_classes = any("class_counts" in h for h in history)
    figure, axes = plt.subplots(1, 3 if with_classes else 2, figsize=(12 if with_classes else 8, 3), dpi=100)
    epochs = [h["epoch"] + 1 for h in history]
    axes[0].bar(range(len(epochs)), [h["seconds"] for h in history])
    axes[0].set_xticks(range(len(epochs)), [str(e) for e in epochs])
    axes[0].set(xlabel="selection at epoch", ylabel="seconds", title="selection time")
    for h in history:
        if h["gains"]:
            axes[1].plot(range(1, len(h["gains"]) + 1), h["gains"], marker=".", label=f"epoch {h['epoch'] + 1}")
    axes[1].set(xlabel="pick", ylabel="gain eta q_U . q_m", title="greedy gains")
    if any(h["gains"] for h in history):
        axes[1].legend(fontsize=6)
    if with_classes:
        last = [h for h in history if "class_counts" in h][-1]
        axes[2].bar(range(len(last["class_counts"])), last["class_counts"])
        axes[2].set(xlabel="class", ylabel="images", title=f"class balance (epoch {last['epoch'] + 1})")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
