"""The trainer with a coreset: fewer steps after the warm-up, logs and plots, exact resume after a selection."""

import json
import math
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from test_pretrain import ACCELERATE, ENV, QUICK, SCRIPT, run

# Full set in epoch 1, one selection for epochs 2-3.
# 8x8 images: a selection attacks every training image, so keep each one cheap.
RCS = ["data.image_size=8", "coreset.mode=rcs", "coreset.fraction=0.1", "coreset.warmup_epochs=1", "coreset.interval=2"]
# QUICK caps an epoch at 4 minibatches; a selection then chooses floor(0.1 * 4) of them, at least one (RCS's budget
# is a fraction of what an epoch trains on), so epochs 2 and 3 each take that many steps after epoch 1's four.
CORESET_STEPS = max(1, math.floor(0.1 * 4))
LAST_STEP = 4 + 2 * CORESET_STEPS


def training_record(out):
    return json.loads((out / "model" / "config.json").read_text())["robust_hub"]["training"]


def steps_logged(stderr):
    return [int(line.split("step ")[1].split(" ")[0]) for line in stderr.splitlines() if " INFO robust_hub.pretrain: step " in line]


@pytest.mark.parametrize("mode", ["rcs", "random"])
def test_coreset_epochs_train_on_the_budget_and_are_logged(tmp_path, mode):
    out = tmp_path / mode
    uncapped = [a for a in QUICK if not a.startswith("train.max_steps_per_epoch")]
    result = run([*uncapped, "data.image_size=8", "train.epochs=2", "train.warmup_epochs=0", f"coreset.mode={mode}", "coreset.fraction=0.1",
                  "coreset.warmup_epochs=0", "coreset.interval=1", f"train.output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    environment = json.loads((out / "environment.json").read_text())
    n_train = environment["data"]["train_images"]
    coreset_steps = math.floor(0.1 * n_train / 32)
    assert coreset_steps < n_train // 32 and max(steps_logged(result.stderr)) == 2 * coreset_steps
    history = training_record(out)["coreset_selections"]
    assert [h["epoch"] for h in history] == [0, 1] and history[0]["mode"] == mode
    assert history[0]["size"] == coreset_steps * 32 == sum(history[0]["class_counts"])
    assert len(history[0]["class_counts"]) == 10  # digits: labels exist, so the class balance is recorded
    assert len(history[0]["gains"]) == (coreset_steps if mode == "rcs" else 0)
    assert (out / "coreset_selections.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "model" / "coreset_selections.png").read_bytes().startswith(b"\x89PNG")
    card = (out / "model" / "README.md").read_text()
    assert "![Coreset selections" in card and ("RCS (robustness-aware" in card if mode == "rcs" else "random subset" in card)


def logged_lrs(stderr):
    return {int(line.split("step ")[1].split(" ")[0]): float(line.rsplit("lr ", 1)[1])
            for line in stderr.splitlines() if " INFO robust_hub.pretrain: step " in line}


def test_dynacl_with_ir_on_rcs_coresets_follows_the_cosine_by_epoch_progress(tmp_path):
    """DynACL+IR from the config trains on RCS coresets; the learning rate of every step is method.md's
    warm-up + cosine at the step's epoch progress (coreset epochs have fewer steps, not a shorter schedule)."""
    out = tmp_path / "dynacl_ir"
    uncapped = [a for a in QUICK if not a.startswith("train.max_steps_per_epoch")]
    lr0, lr_min, epochs, warmup = 0.5, 0.01, 3, 1
    result = run([*uncapped, "data.image_size=8", "train.batch_size=128", f"train.epochs={epochs}",
                  f"train.warmup_epochs={warmup}", f"train.lr={lr0}", f"train.lr_min={lr_min}",
                  "method.name=dynacl", "method.schedule_period=1", "method.ir=true", "coreset.mode=rcs",
                  "coreset.fraction=0.25", "coreset.warmup_epochs=1", "coreset.interval=1", f"train.output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    n_train = json.loads((out / "environment.json").read_text())["data"]["train_images"]
    full, coreset = n_train // 128, math.floor(0.25 * n_train / 128)
    history = training_record(out)["coreset_selections"]
    assert [(h["epoch"], h["size"], len(h["gains"])) for h in history] == [(1, coreset * 128, coreset), (2, coreset * 128, coreset)]
    assert " sir " in result.stderr and " air " in result.stderr  # IR's terms are in the trained loss

    def expected_lr(progress):
        if progress < warmup:
            return lr0 * progress / warmup
        return lr_min + (lr0 - lr_min) * (1 + math.cos(math.pi * (progress - warmup) / (epochs - warmup))) / 2

    steps = [full, coreset, coreset]
    progress = [e + s / steps[e] for e in range(epochs) for s in range(steps[e])]  # before each step
    lrs = logged_lrs(result.stderr)
    assert sorted(lrs) == list(range(1, len(progress) + 1))
    assert [lrs[g + 1] for g in range(len(progress))] == pytest.approx([expected_lr(e) for e in progress], rel=1e-3)


@pytest.mark.slow
def test_killed_right_after_a_selection_and_resumed_equals_uninterrupted(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    result = run([*QUICK, *RCS, f"train.output_dir={straight}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("coreset (rcs) for epoch") == 1

    process = subprocess.Popen([sys.executable, SCRIPT, *QUICK, *RCS, f"train.output_dir={interrupted}"],
                               env=ENV, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "checkpoint after the coreset selection" in line:  # the first selection (epoch 2) is on disk
            process.send_signal(signal.SIGKILL)  # no chance to save anything else
            break
    process.stderr.read()
    assert process.wait(timeout=120) == -signal.SIGKILL
    (checkpoint,) = sorted((interrupted / "checkpoints").iterdir())
    progress = json.loads((checkpoint / "progress.json").read_text())
    assert (progress["epoch"], progress["step_in_epoch"]) == (1, 0)
    saved = load_file(checkpoint / "coreset.safetensors")["indices"]
    assert saved.dtype == torch.int64 and saved.numel() == json.loads((checkpoint / "coreset.json").read_text())["history"][0]["size"]

    resumed = run([*QUICK, *RCS, f"train.output_dir={interrupted}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "coreset (rcs) for epoch 2" not in resumed.stderr  # the saved coreset is used, not recomputed
    assert "resumed from" in resumed.stderr and f"step {LAST_STEP} (epoch 3)" in resumed.stderr
    a, b = (load_file(d / "model" / "model.safetensors") for d in (straight, interrupted))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"
    histories = [training_record(d)["coreset_selections"] for d in (straight, interrupted)]
    assert [(h["epoch"], h["size"], h["gains"], h["class_counts"]) for h in histories[0]] == \
        [(h["epoch"], h["size"], h["gains"], h["class_counts"]) for h in histories[1]]


@pytest.mark.slow
def test_two_processes_select_once_and_train_on_the_same_coreset(tmp_path):
    out = tmp_path / "ddp"
    command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               SCRIPT, *QUICK, *RCS, f"train.output_dir={out}"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split("robust_hub.pretrain: ")[1] for line in result.stderr.splitlines() if "coreset (rcs) for epoch" in line]
    assert len(lines) == 1  # one selection, logged once for the process group
    history = training_record(out)["coreset_selections"]
    assert len(history) == 1 and history[0]["size"] == CORESET_STEPS * 32
    assert f"step {LAST_STEP} (epoch 3)" in result.stderr
