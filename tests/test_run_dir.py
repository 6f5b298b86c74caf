"""One run per output directory: foreign directories, other runs' checkpoints, resume config, pruning."""

import json

import pytest

from test_pretrain import QUICK, run, weights

from robust_hub.training.run_dir import checkpoints_in, prune_checkpoints


def one_error_line(result, message):
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_directory_of_user_files_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    one_error_line(run([*QUICK, f"train.output_dir={out}"]), "not written by robust-hub")
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_a_run_refuses_another_runs_checkpoints_and_resume_refuses_another_config(tmp_path):
    out = tmp_path / "run"
    first = run([*QUICK, "train.checkpoint_every=1", f"train.output_dir={out}"])
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name for p in checkpoints_in(out)}
    one_error_line(run([*QUICK, "train.seed=7", f"train.output_dir={out}"]), "holds another run's checkpoints")
    one_error_line(run([*QUICK, "train.seed=7", "model.proj_layers=2", f"train.output_dir={out}", "--resume"]),
                   "model.proj_layers (3 -> 2), train.seed (1 -> 7)")
    one_error_line(run([*QUICK, "train.epochs=2", f"train.output_dir={out}", "--resume"]), "may grow but not shrink")
    assert {p.name for p in checkpoints_in(out)} == before
    # told to overwrite, it starts afresh; the earlier checkpoints go only once it has its own
    second = run([*QUICK, "train.seed=7", "train.epochs=1", "train.warmup_epochs=0", f"train.output_dir={out}",
                  "--overwrite"])
    assert second.returncode == 0, second.stderr[-2000:]
    assert [p.name for p in checkpoints_in(out)] == ["step_00000004"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000004"]
    saved = json.loads((out / "checkpoints" / "step_00000004" / "run_config.json").read_text())
    assert saved["train"]["seed"] == 7


def test_resume_may_grow_epochs_and_refuses_an_unloadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert run([*QUICK, "train.epochs=2", f"train.output_dir={out}"]).returncode == 0
    # the speed switches may change on resume: they pick how the same step runs, not what it computes
    grown = run([*QUICK, "train.epochs=3", "speed.sync_free=false", "speed.channels_last=false", "speed.foreach=true",
                 f"train.output_dir={out}", "--resume"])
    assert grown.returncode == 0, grown.stderr[-2000:]
    assert "resumed from" in grown.stderr
    assert "other speed switches (speed.channels_last" in grown.stderr and "speed.sync_free True -> False" in grown.stderr
    latest = checkpoints_in(out)[-1]
    (latest / "model.safetensors").write_bytes(b"not safetensors")
    one_error_line(run([*QUICK, "train.epochs=4", f"train.output_dir={out}", "--resume"]), "cannot load")


def test_pruning_keeps_the_newest_checkpoints_and_cleans_half_written_ones(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / ".step_00000099.tmp").mkdir(parents=True)  # left by a kill
    (out / "run_config.yaml").write_text("")
    (out / "environment.json").write_text("{}")  # an older robust-hub run directory, without checkpoints
    result = run([*QUICK, "train.epochs=3", "train.checkpoint_every=1", "train.keep_checkpoints=2",
                  f"train.output_dir={out}"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000008", "step_00000012"]
    assert weights(out)  # the finished model


def test_prune_orders_by_step_number_not_by_name(tmp_path):
    for step in (9, 10, 100000000, 99999999):
        (tmp_path / "checkpoints" / f"step_{step:08d}").mkdir(parents=True)
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in checkpoints_in(tmp_path)] == ["step_99999999", "step_100000000"]
