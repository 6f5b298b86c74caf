"""Sharded evaluation with real processes (``accelerate launch``, gloo on the CPU): the same per-image results
and record as one process, every unit of work done exactly once, and a killed AutoAttack resumed under another
process count without attacking its finished chunks again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sharded_eval_child import DATA, OPTIONS
from test_eval_helpers import TinyBackbone

import robust_hub
import robust_hub.evaluation.autoattack_runner as aar
import robust_hub.evaluation.runner as runner
from robust_hub.errors import RobustHubError
from robust_hub.evaluation.launch import accelerate_command
from robust_hub.evaluation.runner import evaluate
from robust_hub.leaderboard.runner import EvalSettings, run_queue, submit_local
from robust_hub.leaderboard.store import LocalStore
from leaderboard_helpers import KEY, history

TESTS = Path(__file__).parent
CHILD = TESTS / "sharded_eval_child.py"
IMAGES = 10  # the child's test subset; AutoAttack on its first 6 in chunks of 2, PGD in batches of 3
VOLATILE = ("created_at", "hardware", "wall_time_s")


def launch(processes: int, out: Path, *overrides: str, env: dict | None = None, check: bool = True):
    """The child under ``accelerate launch`` over ``processes`` processes, or as a plain process for one."""
    launcher = accelerate_command(processes) if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent), **(env or {})}
    done = subprocess.run([*launcher, str(CHILD), str(out), str(out) + ".measured.safetensors", *overrides],
                          env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def counts(path: Path) -> dict[str, Counter]:
    """Images attacked per kind of attack and per rank, from the child's COUNT_FILE."""
    per: dict[str, Counter] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, n, rank = line.split()
        per.setdefault(kind, Counter())[int(rank)] += int(n)
    return per


def record_of(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def comparable(record: dict) -> dict:
    """``record`` without what may differ between equal evaluations: time and machine. The evidence section stays:
    equal examples are equal files, so equal content addresses."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


def test_two_processes_give_the_per_image_results_and_record_of_one(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    with ThreadPoolExecutor(2) as pool:  # side by side: each waits on its own child
        runs = [pool.submit(launch, 1, one), pool.submit(launch, 2, two, env={"COUNT_FILE": str(tmp_path / "count")})]
        for run in runs:
            run.result()
    a, b = load_file(f"{one}.measured.safetensors"), load_file(f"{two}.measured.safetensors")
    assert sorted(a) == sorted(b)
    assert {k.split(".")[0] for k in a} == {"clean", "pgd20", "autoattack", "eps_curve", "c10c"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the comparison has teeth: PGD broke some correctly classified images, left others standing, and the
    # adversarial examples lie in different units (so in both processes' shares)
    broken = a["pgd20.indices"].tolist()
    assert broken and a["pgd20.correct"].any() and len({i // 3 for i in broken}) > 1
    assert a["autoattack.indices"].numel() and a["autoattack.robust"].any()
    assert a["c10c.gaussian_noise.1"].numel() == 5

    # every unit exactly once, and both processes had a share
    seen = counts(tmp_path / "count")
    assert sum(seen["autoattack"].values()) == 6 and set(seen["autoattack"]) == {0, 1}
    for eps in ("0.0235294", "0.0117647"):  # 6/255, and the curve's 3/255
        assert sum(seen[f"pgd{eps}"].values()) == IMAGES and set(seen[f"pgd{eps}"]) == {0, 1}

    rec_one, rec_two = record_of(one), record_of(two)
    assert (rec_one["hardware"]["processes"], rec_two["hardware"]["processes"]) == (1, 2)
    assert comparable(rec_one) == comparable(rec_two)
    assert rec_two["evidence"]["metrics"]["autoattack"]["sha256"]  # the same examples, written by the main process
    assert len(list((two / "evidence").iterdir())) == len(list((one / "evidence").iterdir()))
    assert "seed" in rec_two["protocol"]["settings"]["eval"]["units"]["seeding"]

    # the 2-process record is reused as it is by a 1-process run on the same --out (same key, same settings)
    for module, name in ((runner, "pgd"), (aar, "_attack_chunk"), (runner, "finetune")):
        monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("computed again"))
    (again,) = runner.evaluate(TinyBackbone(), dataset=DATA, out_dir=two, **OPTIONS)
    assert again == rec_two


def test_a_killed_sharded_autoattack_resumes_under_another_process_count(tmp_path):
    out, count = tmp_path / "aa", tmp_path / "count"
    quick = ("metrics='autoattack'", "n_autoattack=None", "autoattack_chunk_size=3", "eps=0.1")  # 4 chunks
    killed = launch(2, out, *quick, env={"COUNT_FILE": str(count), "KILL_AFTER_CHUNKS": "1"}, check=False)
    assert killed.returncode != 0
    (chunk_dir,) = (out / "state").glob("*.autoattack")
    finished = sorted(int(p.name[6:15]) for p in chunk_dir.glob("chunk-*.safetensors"))
    assert 0 < len(finished) < 4 and 0 in finished
    done_images = sum(min(3, IMAGES - s) for s in finished)

    launch(1, out, *quick, env={"COUNT_FILE": str(count.with_suffix(".resumed"))})
    resumed = counts(count.with_suffix(".resumed"))["autoattack"]
    assert sum(resumed.values()) == IMAGES - done_images  # the finished chunks were not attacked again
    reference = tmp_path / "reference"
    launch(1, reference, *quick)
    a, b = load_file(f"{out}.measured.safetensors"), load_file(f"{reference}.measured.safetensors")
    assert a["autoattack.indices"].numel() > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert comparable(record_of(out)) == comparable(record_of(reference))


def test_the_leaderboard_runner_evaluates_over_two_processes_and_keeps_its_lease(tmp_path, one_torch_thread):
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(model_dir)
    store = LocalStore(tmp_path / "store")
    request = submit_local(store, model_dir, "lab/tiny")
    options = {"n_train": 48, "n_test": 12, "protocol_overrides": {"epochs": 1}, "device": "cpu", "batch_size": 4}
    settings = EvalSettings("slf", "embedded:digits", "clean,pgd20", 8 / 255, options, num_processes=2)
    summary = run_queue(store, KEY, settings, tmp_path / "work", lease_s=6)
    assert summary.finished == [request.id], summary
    (path,) = store.list("results")
    sharded = json.loads(store.read(path))["record"]
    assert sharded["hardware"]["processes"] == 2 and sharded["model"]["id"] == "lab/tiny"
    assert history(store, request.id).count("RUNNING") >= 3  # claimed, then renewed while the child evaluated

    (alone,) = evaluate(f"local-dir:{model_dir}", name="lab/tiny", protocols="slf", dataset="embedded:digits",
                        metrics="clean,pgd20", out_dir=tmp_path / "alone", progress=False, print_table=False, **options)
    for section in ("metrics", "dataset", "protocol", "threat", "seeds"):
        assert sharded[section] == alone[section], section


def test_a_process_count_below_one_is_one_error_line(tmp_path, capsys):
    from robust_hub.cli import main

    LocalStore(tmp_path / "store")
    args = ["leaderboard", "run", "--store", str(tmp_path / "store"), "--site", str(tmp_path / "site")]
    assert main([*args, "--num-processes", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --num-processes must be at least 1 (got 0)"
    assert not (tmp_path / "site").exists()


def test_the_eval_script_under_two_processes_prints_once_and_writes_one_record(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "out"
    torch.manual_seed(0)
    robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(model_dir)
    command = [*accelerate_command(2), str(TESTS.parent / "eval_suite" / "evaluate.py"), str(model_dir), "--protocols",
               "slf", "--dataset", "embedded:digits", "--n-train", "48", "--n-test", "8", "--epochs", "1", "--metrics",
               "clean,pgd20", "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("1 record(s) in") == 1 and done.stdout.count("PGD-20") == 1  # the table, once
    # one bar each, the main process's: finetuning (it alone finetunes) and its one of the two PGD batches
    assert done.stderr.count("slf finetune:   0%") == 1
    assert done.stderr.count("PGD-20 eps=0.03137:   0%|          | 0/1") == 1
    assert len(list(out.glob("*.json"))) == 1 and record_of(out)["hardware"]["processes"] == 2


def test_bad_input_found_while_the_other_process_waits_ends_both_with_one_error_line(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "out"
    torch.manual_seed(0)
    robust_hub.create_backbone("robust_resnet_tiny").save_pretrained(model_dir)
    command = [*accelerate_command(2), str(TESTS.parent / "eval_suite" / "evaluate.py"), str(model_dir), "--protocols",
               "slf", "--dataset", str(tmp_path / "absent"), "--n-test", "8", "--metrics", "clean", "--device", "cpu",
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "absent") in errors[0], done.stderr[-3000:]
    # The waiting process leaves on the shared failure, not in a broken collective: no traceback through our
    # code (the launcher's own ChildFailedError report, with its traceback, follows any failing process).
    frames = [line for line in done.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "robust_hub" in f or "evaluate.py" in f], done.stderr[-3000:]
    assert "Connection closed" not in done.stderr and "exitcode  : 2" in done.stderr
    assert not out.exists()


def test_a_launched_evaluation_hands_back_its_error_as_what_it_is(tmp_path):
    from robust_hub.evaluation.launch import evaluate_launched

    with pytest.raises(RobustHubError, match="absent does not exist"):
        evaluate_launched(f"local-dir:{tmp_path / 'absent'}", 2, out_dir=tmp_path / "out", protocols="slf",
                          dataset="embedded:digits", n_test=8, device="cpu", progress=False)


def test_an_older_single_file_autoattack_state_is_refused_naming_it(tmp_path):
    options = {**OPTIONS, "metrics": "autoattack", "n_autoattack": 2}
    runner.evaluate(TinyBackbone(), dataset=DATA, out_dir=tmp_path, **options)  # the names this run uses
    (record,) = tmp_path.glob("*.json")
    record.unlink()
    old = tmp_path / "state" / f"{record.stem}_0123456789abcdef.autoattack.json"  # an older settings hash
    old.write_text(json.dumps({"schema": "robust-hub-autoattack-state/1", "chunks": {}}))
    with pytest.raises(RobustHubError, match=f"{old.name} is an AutoAttack state of an older robust-hub.*delete it"):
        runner.evaluate(TinyBackbone(), dataset=DATA, out_dir=tmp_path, **options)
    assert not list(tmp_path.glob("*.json"))  # no record written
