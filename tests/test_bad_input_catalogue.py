"""Bad input, command by command: one ``error:`` line, a non-zero exit, and nothing written.

Each case runs in a world of its own (a saved model, a reference checkpoint, a file, a directory of
user files); the world is the same, file for file, after the command failed.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robust_hub
from robust_hub.cli import main

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


@pytest.fixture
def world(tmp_path, monkeypatch):
    from test_convert import reference_model

    robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(tmp_path / "model", model_card="# m\n\n## Evaluation\n")
    torch.save({"state_dict": reference_model(blocks=(1, 1, 1, 1)).state_dict()}, tmp_path / "ref.pt")
    (tmp_path / "afile").write_text("a user's file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "leaderboard.key").write_text("k" * 64)
    (tmp_path / "latin1.yaml").write_bytes("train:\n  output_dir: caf\xe9\n".encode("latin-1"))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text('{"architecture": "no_such_timm_net_xyz"}')
    (tmp_path / "bare" / "model.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


EVAL = ["eval", "model", "--protocols", "slf", "--dataset", "embedded:digits", "--no-progress"]
CASES = {
    # eval: every numeric argument and path, before any work
    "eval n-test 0": ([*EVAL, "--out", "o", "--n-test", "0"], "--n-test"),
    "eval n-test negative": ([*EVAL, "--out", "o", "--n-test", "-5"], "--n-test"),
    "eval n-train 0": ([*EVAL, "--out", "o", "--n-train", "0"], "--n-train"),
    "eval n-autoattack negative": ([*EVAL, "--out", "o", "--n-autoattack", "-1"], "--n-autoattack"),
    "eval batch-size 0": ([*EVAL, "--out", "o", "--batch-size", "0"], "--batch-size"),
    "eval chunk size 0": ([*EVAL, "--out", "o", "--autoattack-chunk-size", "0"], "--autoattack-chunk-size"),
    "eval c10c-n 0": ([*EVAL, "--out", "o", "--c10c-generate", "--c10c-n-per-severity", "0"], "--c10c-n-per-severity"),
    "eval device cuda:7": ([*EVAL, "--out", "o", "--device", "cuda:7"], "CUDA device"),
    "eval device nonsense": ([*EVAL, "--out", "o", "--device", "warp-drive"], "not a device"),
    "eval missing c10c dir": ([*EVAL, "--out", "o", "--c10c-dir", "nowhere"], "--c10c-dir"),
    "eval out is a file": ([*EVAL, "--out", "afile"], "is a file"),
    "eval out under a file": ([*EVAL, "--out", "afile/sub"], "lies under the file"),
    "eval out of user files": ([*EVAL, "--out", "mine"], "not written by robust-hub"),
    "eval eps 8/0": ([*EVAL, "--out", "o", "--eps", "8/0"], "not a number or fraction"),
    "eval eps above 1": ([*EVAL, "--out", "o", "--eps", "9"], "L-inf eps"),
    "eval unknown protocol": ([*EVAL[:2], "--protocols", "knn", "--out", "o"], "unknown protocols"),
    "eval unknown metric": ([*EVAL, "--out", "o", "--metrics", "fid"], "unknown metrics"),
    "eval unknown norm": ([*EVAL, "--out", "o", "--norm", "l3"], "invalid choice"),
    "eval missing model": (["eval", "nowhere/at/all", "--out", "o"], "nowhere/at/all"),
    "eval bad hub id": (["eval", "org/bad name", "--out", "o", "--no-progress"], ""),
    "eval pickle without opt-in": (["eval", "ref.pt", "--out", "o", "--no-progress"], "pickle"),
    "eval missing --out": (["eval", "model"], "--out"),
    # convert
    "convert missing checkpoint": (["convert", "missing.pt", "out"], "does not exist"),
    "convert not a checkpoint": (["convert", "notes.txt", "out"], "not a PyTorch checkpoint"),
    "convert onto a file": (["convert", "ref.pt", "afile"], "is a file"),
    "convert onto a file with --overwrite": (["convert", "ref.pt", "afile", "--overwrite"], "is a file"),
    "convert under a file": (["convert", "ref.pt", "afile/out"], "lies under the file"),
    "convert into user files": (["convert", "ref.pt", "mine"], "not written by robust-hub"),
    "convert into the working directory": (["convert", "ref.pt", "."], "not written by robust-hub"),
    # inspect
    "inspect missing dir": (["inspect", "./nowhere"], "does not exist"),
    "inspect invalid hub id": (["inspect", "org/bad name"], "not a valid Hub id"),
    "inspect a file": (["inspect", "afile"], "is a file"),
    "inspect unknown timm architecture": (["inspect", "bare"], "not a robust-hub backbone"),
    "inspect no config": (["inspect", "mine"], "no config.json"),
    # push (validated before anything is sent)
    "push invalid hub id": (["push", "model", "org/bad name"], "not a valid Hub id"),
    "push bad id form": (["push", "model", "just-a-name"], "org/name"),
    "push missing dir": (["push", "nowhere", "org/name"], "does not exist"),
    "push dir without model": (["push", "mine", "org/name"], "no config.json"),
    # card
    "card missing results": (["card", "model", "--results", "no-results"], "does not exist"),
    "card results is a file": (["card", "model", "--results", "afile"], "does not exist"),
    "card not a model": (["card", "mine", "--results", "mine"], "needs config.json"),
    # postprocess (DynACL++): checked before the model is loaded
    "postprocess out is a file": (["postprocess", "model", "--out", "afile"], "is a file"),
    "postprocess out under a file": (["postprocess", "model", "--out", "afile/pp", "--dataset", "embedded:digits"],
                                     "lies under the file"),
    "postprocess out of user files": (["postprocess", "model", "--out", "mine"], "already exists"),
    "postprocess device nonsense": (["postprocess", "model", "--out", "pp", "--device", "warp-drive"], "not a device"),
    "postprocess missing model": (["postprocess", "nowhere", "--out", "pp"], "does not exist"),
    "postprocess clusters 0": (["postprocess", "model", "--out", "pp", "--dataset", "embedded:digits", "--clusters", "0"],
                               "--clusters"),
    "postprocess n-train 0": (["postprocess", "model", "--out", "pp", "--dataset", "embedded:digits", "--n-train", "0"],
                              "--n-train"),
    # leaderboard
    "submit invalid hub id": (["submit", "org/bad name", "--store", "store"], "invalid model id"),
    "submit store is a file": (["submit", "org/name", "--store", "afile"], "is a file"),
    "leaderboard build site of user files": (["leaderboard", "build", "--store", "store", "--site", "mine",
                                              "--key-file", "leaderboard.key"], "not written by robust-hub"),
    "leaderboard run site of user files": (["leaderboard", "run", "--store", "store", "--site", "mine",
                                            "--key-file", "leaderboard.key"], "not written by robust-hub"),
    "leaderboard build site is a file": (["leaderboard", "build", "--store", "store", "--site", "afile",
                                          "--key-file", "leaderboard.key"], "is a file"),
    "leaderboard build short key": (["leaderboard", "build", "--store", "store", "--site", "site", "--key-file", "afile"],
                                    "too short"),
    # pretrain (single process, in-process entry)
    "pretrain lr inf": (["pretrain", "--config", str(REPO / "configs/offline.yaml"), "train.lr=inf"], "finite"),
    "pretrain eps 8/0": (["pretrain", "--config", str(REPO / "configs/offline.yaml"), "attack.eps=8/0"], "zero"),
    "pretrain non-UTF-8 config": (["pretrain", "--config", "latin1.yaml"], "not UTF-8"),
    "pretrain config is a directory": (["pretrain", "--config", "mine"], "is a directory"),
    "pretrain output is a file": (["pretrain", "--config", str(REPO / "configs/offline.yaml"),
                                   "train.output_dir=afile"], "is a file"),
    "pretrain output under a file": (["pretrain", "--config", str(REPO / "configs/offline.yaml"),
                                      "train.output_dir=afile/run"], "lies under the file"),
    "pretrain output of user files": (["pretrain", "--config", str(REPO / "configs/offline.yaml"),
                                       "train.output_dir=mine"], "not written by robust-hub"),
    "pretrain resume a non-checkpoint": (["pretrain", "--config", str(REPO / "configs/offline.yaml"),
                                          "train.output_dir=o", "--resume", "mine"], "not a robust-hub checkpoint"),
    "pretrain unknown flag": (["pretrain", "--frobnicate"], "unrecognized arguments"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(name, world, capsys):
    argv, message = CASES[name]
    before = snapshot(world)
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    err = capsys.readouterr().err
    assert status not in (0, None)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert snapshot(world) == before


LAUNCH = [ACCELERATE, "launch", "-q", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision",
          "no", "--dynamo_backend", "no"]
PRETRAIN = [str(REPO / "trainers" / "pretrain.py"), "--config", str(REPO / "configs" / "offline.yaml")]
SAT = [str(REPO / "trainers" / "sat.py"), "--config", str(REPO / "configs" / "sat_cifar10.yaml")]


@pytest.mark.parametrize("script,args,message", [
    (PRETRAIN, ["train.lr=inf"], "finite"),
    (PRETRAIN, ["train.output_dir=afile/run"], "lies under the file"),
    (PRETRAIN, ["train.output_dir=mine"], "not written by robust-hub"),
    (SAT, ["train.lr=nan"], "finite"),
    (SAT, ["train.output_dir=mine"], "not written by robust-hub"),
    (SAT, ["sat.loss=trades"], "unknown config section"),
])
def test_the_readme_launcher_shows_one_error_line(script, args, message, world):
    """The README's own commands (`accelerate launch -q ... trainers/{pretrain,sat}.py`), run for real."""
    before = snapshot(world)
    result = subprocess.run([*LAUNCH, *script, *args], cwd=world, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "CalledProcessError" not in result.stderr
    assert snapshot(world) == before
