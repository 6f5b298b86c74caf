"""The training entry point, run for real: several processes, signals, resume, bad input."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import robust_hub

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "trainers" / "pretrain.py")
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# A few seconds of real training: tiny dual-BN ResNet, 16x16 digits, PGD-1.
QUICK = ["--config", str(REPO / "configs" / "offline.yaml"), "data.image_size=16", "train.batch_size=32",
         "attack.steps=1", "train.max_steps_per_epoch=4", "train.epochs=3", "train.warmup_epochs=1",
         "train.checkpoint_every=0", "train.log_every=1", "train.lr=0.5", "train.probe=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run(args, **kwargs):
    return subprocess.run([sys.executable, SCRIPT, *args], env=ENV, capture_output=True, text=True, timeout=300, **kwargs)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


@pytest.mark.slow
def test_two_process_cpu_launch(tmp_path):
    out = tmp_path / "ddp"
    command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               SCRIPT, *QUICK, f"train.output_dir={out}"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model written to") == 1  # printed once, by the main process
    assert json.loads((out / "environment.json").read_text())["num_processes"] == 2
    model = robust_hub.from_pretrained(str(out / "model"))
    assert model.hub_config["robust_hub"]["training"]["num_processes"] == 2
    assert "step 12 (epoch 3)" in result.stderr  # 3 epochs x 4 global steps, not twice as many
    # every line once: the second process logs nothing and its warnings stay quiet
    for line in ("pre-training robust_resnet_tiny with acl", "step 12 (epoch 3)", "epoch 3/3: mean loss"):
        assert result.stderr.count(line) == 1, line
    assert "Warning" not in result.stderr  # e.g. torch's FutureWarning that its autograd all_gather is deprecated


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert run([*QUICK, f"train.output_dir={straight}"]).returncode == 0

    process = subprocess.Popen([sys.executable, SCRIPT, *QUICK, f"train.output_dir={interrupted}"],
                               env=ENV, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # tqdm's carriage returns also end lines in text mode
        if "step 5 (epoch 2)" in line:  # first step of epoch 2 is done: stop inside the epoch
            process.send_signal(signal.SIGTERM)
            break
    process.stderr.read()
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    checkpoints = sorted((interrupted / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0].name.startswith("step_") and not (interrupted / "model").exists()
    assert (checkpoints[0] / "progress.json").is_file()
    assert not list(checkpoints[0].glob("custom_checkpoint_*"))  # nothing that would be unpickled unsafely
    stopped_at = int(checkpoints[0].name.split("_")[1])
    assert stopped_at % 4 != 0, "the signal should land mid-epoch"

    resumed = run([*QUICK, f"train.output_dir={interrupted}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoints[0]}" in resumed.stderr
    a, b = weights(straight), weights(interrupted)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    losses = [json.loads((d / "model" / "config.json").read_text())["robust_hub"]["training"]["epoch_losses"]
              for d in (straight, interrupted)]
    assert losses[0] == losses[1]  # the interrupted epoch's mean covers all of its steps


def test_run_writes_model_card_config_and_provenance(tmp_path):
    out = tmp_path / "run"
    result = run([*QUICK, "train.epochs=2", "train.max_steps_per_epoch=2", f"train.output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == f"model written to {out / 'model'}"
    config = json.loads((out / "model" / "config.json").read_text())
    training = config["robust_hub"]["training"]
    assert training["config"]["train"]["epochs"] == 2 and training["seeds"]["seed"] == 1
    assert training["versions"]["torch"] == importlib.metadata.version("torch")
    assert training["versions"]["robust_hub"] == robust_hub.__version__
    assert len(training["epoch_losses"]) == 2
    card = (out / "model" / "README.md").read_text()
    assert "ACL" in card and "embedded:digits" in card and "robust_resnet_tiny" in card
    assert "library_name: timm" in card and "![Mean training loss per epoch](training_loss.png)" in card
    assert (out / "model" / "training_loss.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "run_config.yaml").is_file() and (out / "environment.json").is_file()
    assert any((out / "logs").rglob("events.out.tfevents.*"))  # TensorBoard through Accelerate


@pytest.mark.parametrize("override,message", [
    ("model.arch=resnet_9000", "unknown architecture"),
    ("data.source=/no/such/dataset", "does not exist"),
    ("attack.eps=3", "attack.eps"),
    ("train.batch_size=4096", "fewer than train.batch_size"),
])
def test_bad_input_gives_one_error_line_and_writes_nothing(tmp_path, override, message):
    out = tmp_path / "run"
    result = run([*QUICK, override, f"train.output_dir={out}"])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_config_and_resume_without_checkpoint(tmp_path):
    result = run(["--config", str(tmp_path / "missing.yaml")])
    assert result.returncode == 2 and "does not exist" in result.stderr
    result = run([*QUICK, f"train.output_dir={tmp_path / 'fresh'}", "--resume"])
    assert result.returncode == 2 and "no checkpoint" in result.stderr


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    out = tmp_path / "bf16"
    result = run([*QUICK, "train.epochs=2", "train.max_steps_per_epoch=2", "train.mixed_precision=bf16",
                  f"train.output_dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["robust_hub"]["training"]["mixed_precision"] == "bf16"
    weights = load_file(out / "model" / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())  # master weights stay fp32


def test_resume_from_a_directory_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "model.safetensors").write_bytes(b"")
    result = run([*QUICK, f"train.output_dir={tmp_path / 'out'}", "--resume", str(bogus)])
    assert result.returncode == 2 and "not a robust-hub checkpoint" in result.stderr
