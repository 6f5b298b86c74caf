"""Sharded evaluation with real processes (``accelerate launch``, gloo on the CPU): the same per-image results
and record as one process, every unit of work done exactly once, and a killed AutoAttack resumed under another
process count without attacking its finished chunks again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

TESTS = Path(__file__).parent
CHILD = TESTS / "sharded_eval_child.py"
IMAGES = 10  # the child's test subset; AutoAttack on its first 6 in chunks of 2, PGD in batches of 3
VOLATILE = ("created_at", "hardware", "wall_time_s")


def launch(processes: int, out: Path, *overrides: str, env: dict | None = None, check: bool = True):
    """The child under ``accelerate launch`` over ``processes`` processes, or as a plain process for one."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"] if processes > 1 else [sys.executable]
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


def test_two_processes_give_the_per_image_results_and_record_of_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(1, one)
    launch(2, two, env={"COUNT_FILE": str(tmp_path / "count")})
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
    assert {k: v for k, v in rec_one.items() if k not in VOLATILE} == {k: v for k, v in rec_two.items() if k not in VOLATILE}
    assert "seed" in rec_two["protocol"]["settings"]["eval"]["units"]["seeding"]

    # the 2-process record is reused as it is by a 1-process run on the same --out (same key, same settings)
    launch(1, two, env={"COUNT_FILE": str(tmp_path / "count-again")})
    assert record_of(two) == rec_two and not (tmp_path / "count-again").exists()


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
    assert {k: v for k, v in record_of(out).items() if k not in VOLATILE} == \
        {k: v for k, v in record_of(reference).items() if k not in VOLATILE}
