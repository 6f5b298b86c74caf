"""One command that measures robust-hub on one NVIDIA GPU in at most 9 minutes, installs and compiles included.

    python bench/gpu_proof.py --out DIR [--data DIR] [--budget-s 520]
    python bench/gpu_proof.py --out DIR --tiny       # the same code on a CPU in seconds (tests/test_gpu_proof.py)

Sections, in this order, each with its own time limit; each catches its own failure, reports it and
the next one runs:
1. environment: GPU, driver, CUDA, torch, and peaks measured on the spot (bf16, tf32 and fp32
   matmuls, a device-to-device copy). MFU is against these, not data sheets.
2. correctness: the fast path against the plain path for ACL and DynACL+IR (loss, parts, one LARS
   step, the attack), within bf16 tolerances; then the suite's CUDA-only tests and its fp32-island
   and attack-mode tests.
3. acl_step: ResNet-18, batch 512, PGD-5 (``bench/bench_acl_step.py``): the reference code's way,
   fp32, tf32, bf16, + channels-last, + compile, + CUDA graphs; DynACL+IR for a subset.
4. eval_speed: PGD-20 and AutoAttack standard images/s (``bench/bench_eval.py``), fp32 as reported
   and with TF32 matmuls.
5. rcs_selection: one RCS selection on the full CIFAR-10 training set, in seconds and in epochs.
6. real_run: ACL with the fast path on CIFAR-10 for the epochs that fit the time left (about 4
   minutes), then SLF clean and PGD-20 on the full test set, against the same backbone at random
   initialisation.
7. recipe: the 1000-epoch recipe's time with and without RCS from the measured images/s
   (``bench/estimate_recipe.py``).
The JSON report (``report.json``) and the Markdown table (``report.md``) go to ``--out``; the
Markdown prints last. Training runs and evaluation records go to ``--work`` (a temporary directory).

On the device machine (nothing there reaches a network; its image has torch, timm, transformers,
accelerate, safetensors, huggingface_hub, pyarrow, pytest). Prepare once, here, in the repository root:

    bash bench/gpu_proof_carry.sh     # CIFAR-10 parquet + wheels of datasets, kornia, pyautoattack into .device/

(``.device/`` is git-ignored; about 25 MB travels). Then the device tool's ``run`` with
``carry: [".device"]`` and ``timeout_s: 570``:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && python3 bench/gpu_proof.py --out $OUT/proof --data .device/cifar10 --budget-s 520

The install takes about 10-20 s (no compilation: wheels only); the command itself, imports
included, is capped at ``--budget-s`` seconds (520), so the whole run stays within 9 minutes.
The plan (``SECTIONS``): sections 1-5 may take 260 s, compilation included (the correctness
section compiles at the bench's shapes, so the step variants find inductor's cache warm); the real
run gets whatever is left, 90 s of it reserved for its two evaluations, so at least 150 s of
training and about 4 minutes when the earlier sections finish early. ``$OUT/proof`` comes back
with the two report files. Each section's limit is a soft budget the section sizes its work to, backed by an
alarm at 1.5x that interrupts it.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts the imports below too

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import bench_acl_step  # noqa: E402
import bench_eval  # noqa: E402
import estimate_recipe  # noqa: E402

REPORT_FILES = ("report.json", "report.md")
CIFAR10_TRAIN_IMAGES = 49152  # 96 steps of 512 after the 1% validation split


class SectionTimeout(Exception):
    pass


@dataclass
class Proof:
    """What every section shares: the arguments, the device, the deadline and earlier results."""

    args: argparse.Namespace
    device: torch.device
    deadline: float
    results: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def tiny(self) -> bool:
        return self.args.tiny

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def result(self, section: str) -> dict[str, Any] | None:
        entry = self.results.get(section)
        return entry.get("result") if entry and entry["status"] == "ok" else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


# -- 1. environment ------------------------------------------------------------------------------
def environment(proof: Proof, budget: float) -> dict[str, Any]:
    device, cuda = proof.device, proof.device.type == "cuda"
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": bench_acl_step.device_name(device),
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
           "driver": _driver_version() if cuda else None, "commit": _git_commit()}
    n = 256 if proof.tiny else 8192
    peaks = {}
    for precision, dtype in (("bf16", torch.bfloat16), ("tf32", torch.float32), ("fp32", torch.float32)):
        if precision == "bf16" and not cuda and not proof.tiny:
            continue
        with bench_acl_step.precision_backends(precision, device):
            a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
            seconds = _timed(lambda: a @ b, device, repeats=3 if proof.tiny else 10)
        peaks[precision] = round(2 * n**3 / seconds / 1e12, 3)
    size = (1 << 22) if proof.tiny else (1 << 31)  # bytes
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = _timed(lambda: target.copy_(source), device, repeats=3 if proof.tiny else 10)
    env["peaks_tflops"] = peaks
    env["copy_tb_per_s"] = round(2 * size / seconds / 1e12, 4)  # bytes read + written
    env["peaks_note"] = f"{n}x{n}x{n} matmul, mean of timed repeats after a warm-up"
    proof.cache["peaks"] = peaks
    return env


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# -- 2. correctness ------------------------------------------------------------------------------
def _step_args(proof: Proof, **overrides: Any) -> SimpleNamespace:
    base = dict(arch="robust_resnet_tiny" if proof.tiny else "robust_resnet18", batch=8 if proof.tiny else 512,
                pgd_steps=1 if proof.tiny else 5, method="acl", ir=False, steps=1 if proof.tiny else 5,
                warmup=0 if proof.tiny else 1, split_steps=1, rounds=1, keep_going=True, epoch=0,
                image_size=16 if proof.tiny else 32)
    return SimpleNamespace(**{**base, **overrides})


def fast_variant(proof: Proof) -> str:
    """The trainer's fast path for this device, as a bench variant."""
    return "bf16+channels_last" if proof.tiny else "fast"


def compare_paths(proof: Proof, method: str, ir: bool, epoch: int) -> dict[str, Any]:
    """The fast path's loss, parts, LARS step and attack against the plain path's on the same views."""
    # Batch 512 as in section 3, so compiling here fills the cache that section's compiled variants use.
    args = _step_args(proof, method=method, ir=ir, epoch=epoch, batch=8 if proof.tiny else 512)
    plain = bench_acl_step.Step(args, proof.device, bench_acl_step.variant_fast_path("fp32", proof.device))
    fast_path = bench_acl_step.variant_fast_path(fast_variant(proof), proof.device)
    if proof.tiny and fast_path.compile:
        fast_path = bench_acl_step.FastPath(**{**fast_path.describe(), "compile_backend": "eager"})
    fast = bench_acl_step.Step(args, proof.device, fast_path)
    torch.manual_seed(1)
    views = plain.augment_views()
    generator = torch.Generator(device=proof.device).manual_seed(2)
    eps = plain.method.config.attack.eps
    perturbed = tuple((v + eps * (2 * torch.rand(v.shape, generator=generator, device=proof.device) - 1)).clamp(0, 1)
                      for v in views[:2])  # fixed "adversarial" views: the loss compared without PGD's sign flips
    outcome = {}
    with bench_acl_step.precision_backends("fp32", proof.device):
        for name, step in (("plain", plain), ("fast", fast)):
            before = [p.detach().float().clone() for p in step.model.parameters()]
            step.optimizer.zero_grad(set_to_none=True)
            own_views = tuple(step.fast.images(v) for v in views)
            terms = step.forward_backward(own_views, tuple(step.fast.images(v) for v in perturbed))
            step.optimizer.step()
            delta = [p.detach().float() - b for p, b in zip(step.model.parameters(), before)]
            torch.manual_seed(3)
            adversarial = torch.stack(step.attack(own_views)).float()
            outcome[name] = (terms.total.item(), {k: v.item() for k, v in terms.parts.items()}, delta, adversarial)
    (plain_loss, plain_parts, plain_delta, plain_adv), (loss, parts, delta, adv) = outcome["plain"], outcome["fast"]
    clean = torch.stack(views[:2]).float()
    tolerance = 2e-2  # bf16 keeps about three significant digits
    report = {
        "plain_loss": plain_loss, "fast_loss": loss, "loss_rel_diff": abs(loss - plain_loss) / abs(plain_loss),
        "parts_rel_diff": {k: abs(parts[k] - v) / max(abs(v), 1e-8) for k, v in plain_parts.items()},
        # bf16 gradients point about the same way, not to bf16's three digits: the LARS update (a step of
        # fixed length per tensor, lr x trust ratio) is compared by direction, per tensor and overall.
        "lars_step_cosine_median": statistics.median(_cosine(d, p) for d, p in zip(delta, plain_delta)),
        "lars_step_cosine": _cosine(torch.cat([d.flatten() for d in delta]), torch.cat([p.flatten() for p in plain_delta])),
        "attack_same_pixels": (adv - plain_adv).abs().le(1e-6).float().mean().item(),
        "attack_in_eps_ball": bool((adv - clean).abs().max() <= eps + 1e-5),
        "fast_path": fast.fast.describe(),
    }
    report["ok"] = (report["loss_rel_diff"] < tolerance and all(v < 5 * tolerance for v in report["parts_rel_diff"].values())
                    and report["lars_step_cosine"] > 0.95 and report["attack_in_eps_ball"])
    return report


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def correctness(proof: Proof, budget: float) -> dict[str, Any]:
    started = time.monotonic()
    result = {"acl": compare_paths(proof, "acl", False, 0),
              "dynacl_ir": compare_paths(proof, "dynacl", True, 500)}  # epoch 500 of 1000: s = 1/2, w = 1/3
    result["suite_tests"] = _suite_tests(proof, max(budget - (time.monotonic() - started), 20))
    result["ok"] = result["acl"]["ok"] and result["dynacl_ir"]["ok"] and result["suite_tests"].get("returncode") in (0, None)
    return result


SUITE_TESTS = ("tests/test_fast.py::test_every_fp32_island_of_the_training_loss_computes_in_fp32_under_bf16_autocast",
               "tests/test_fast.py::test_the_attack_scores_its_bf16_embeddings_with_fp32_similarities",
               "tests/test_attack.py::test_the_attack_uses_running_statistics_and_leaves_every_buffer_untouched")


def _suite_tests(proof: Proof, budget: float) -> dict[str, Any]:
    """The suite's tests that need CUDA (skipped elsewhere), and those pinning what the fast path must keep."""
    if proof.tiny:
        return {"skipped": "--tiny runs inside the test suite already"}
    cuda_files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                        if "needs a CUDA device" in p.read_text(encoding="utf-8"))
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rs", *cuda_files, *SUITE_TESTS]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=max(budget, 30))
    except subprocess.TimeoutExpired:
        return {"returncode": "timeout", "files": cuda_files}
    return {"returncode": done.returncode, "files": cuda_files, "summary": done.stdout.strip().splitlines()[-1:]}


# -- 3. the training step ------------------------------------------------------------------------
ACL_VARIANTS = ("reference,fp32,tf32,bf16,bf16+channels_last,bf16+channels_last+compile,"
                "bf16+channels_last+compile+cuda_graphs")
IR_VARIANTS = "reference,fp32,bf16+channels_last+compile"
TINY_VARIANTS = "reference,fp32,channels_last"  # bf16 is slow on a CPU; the correctness section runs it


def acl_step(proof: Proof, budget: float) -> dict[str, Any]:
    peaks = proof.cache.get("peaks", {})
    result = {}
    started = time.monotonic()
    # ACL gets 70% of the budget; no variant starts after its share (a skipped one is reported as such).
    for key, method, ir, variants, share in (("acl", "acl", False, ACL_VARIANTS, 0.7),
                                             ("dynacl_ir", "dynacl", True, IR_VARIANTS, 1.0)):
        args = _step_args(proof, method=method, ir=ir, epoch=0 if method == "acl" else 500,
                          variants=TINY_VARIANTS if proof.tiny else variants,
                          deadline=None if proof.tiny else started + share * budget)
        report = bench_acl_step.run(args, proof.device, peaks.get)
        result[key] = report
    fast = _best(result["acl"])
    if fast:
        proof.cache["images_per_s"] = fast["images_per_s"]
        proof.cache["batch"] = result["acl"]["batch"]
    return result


def _best(report: dict[str, Any], prefer: str = "bf16+channels_last+compile") -> dict[str, Any] | None:
    """The trainer's default fast path's row (compile without CUDA graphs), else the fastest that ran."""
    rows = [r for r in report["results"] if "error" not in r]
    return next((r for r in rows if r["variant"] == prefer), max(rows, key=lambda r: r["images_per_s"], default=None))


# -- 4. evaluation speed -------------------------------------------------------------------------
def eval_speed(proof: Proof, budget: float) -> dict[str, Any]:
    if proof.tiny:
        return bench_eval.bench(proof.device, 4, 2, 4, ("fp32",), arch="robust_resnet_tiny")
    return bench_eval.bench(proof.device, 2048, 256, 512, ("fp32", "tf32"))


# -- 5. one RCS selection --------------------------------------------------------------------------
def _datasets(proof: Proof):
    from robust_hub.data import load_image_dataset

    if "data" not in proof.cache:
        size = 16 if proof.tiny else 32
        train = load_image_dataset(proof.args.data, "train", image_size=size, cache_dir=proof.args.cache_dir)
        test = load_image_dataset(proof.args.data, "test", image_size=size, cache_dir=proof.args.cache_dir)
        proof.cache["data"] = (train, test)
    return proof.cache["data"]


def _run_config(proof: Proof, overrides: list[str]):
    from robust_hub.config import load_config

    tiny = ["model.arch=robust_resnet_tiny", "data.image_size=16", "train.batch_size=32", "attack.steps=1",
            "train.max_steps_per_epoch=2", "data.val_fraction=0.1"]
    return load_config(REPO / "configs" / "acl_cifar10.yaml",
                       [f"data.source={proof.args.data}", *(tiny if proof.tiny else []),
                        *([f"data.cache_dir={proof.args.cache_dir}"] if proof.args.cache_dir else []), *overrides])


def rcs_selection(proof: Proof, budget: float) -> dict[str, Any]:
    import robust_hub
    from robust_hub.coreset import select_coreset
    from robust_hub.training.fast import FastPath
    from robust_hub.training.methods import METHODS

    config = _run_config(proof, ["coreset.mode=rcs", "coreset.fraction=0.2"])
    dataset, _ = _datasets(proof)
    train, val = dataset.split_validation(config.data.val_fraction, seed=config.train.seed)
    if proof.tiny:
        train = train.subset(range(min(len(train), 128))) if hasattr(train, "subset") else train
    fast = FastPath.resolve(config.speed, proof.device)
    model = robust_hub.create_backbone(config.model.arch).to(proof.device)
    fast.prepare_model(model)
    images = train.images.to(proof.device)
    synchronize(proof.device)
    started = time.perf_counter()
    selection = select_coreset(model, METHODS["acl"](config), config, config.coreset.warmup_epochs, images,
                               val.images.to(proof.device), autocast=fast.autocast_factory())
    synchronize(proof.device)
    seconds = time.perf_counter() - started
    result = {"seconds": round(seconds, 2), "train_images": len(train), "val_images": len(val),
              "coreset_images": int(len(selection.indices)), "fraction": config.coreset.fraction,
              "fast_path": fast.describe()}
    rate = proof.cache.get("images_per_s")
    if rate:
        result["epochs_of_training"] = round(seconds / (len(train) / rate), 3)
        proof.cache["selection_cost"] = result["epochs_of_training"]
    return result


# -- 6. a real run and its evaluation --------------------------------------------------------------
EVAL_RESERVE_S = 90  # two SLF (10 epochs) + PGD-20 evaluations on the full test set, with a margin


def real_run(proof: Proof, budget: float) -> dict[str, Any]:
    import robust_hub
    from robust_hub.evaluation.runner import evaluate
    from robust_hub.training.loop import pretrain

    work = Path(proof.args.work)
    train_budget = max(0.0, min(budget, proof.left()) - (5 if proof.tiny else EVAL_RESERVE_S))
    rate = proof.cache.get("images_per_s")
    epochs = 1 if proof.tiny or not rate else max(1, math.floor(0.8 * train_budget * rate / CIFAR10_TRAIN_IMAGES))
    config = _run_config(proof, [f"train.epochs={epochs}", f"train.warmup_epochs={epochs // 10}",
                                 "train.checkpoint_every=0", f"train.output_dir={work / 'run'}", "train.log_every=20"])
    started = time.perf_counter()
    trained = pretrain(config, overwrite=True)
    train_seconds = time.perf_counter() - started
    train_set, test_set = _datasets(proof)
    slf = {"slf.epochs": 1, "slf.milestones": (1,)} if proof.tiny else {"slf.epochs": 10, "slf.milestones": (6, 8)}
    common = dict(protocols="slf", dataset=(train_set, test_set), metrics="clean,pgd20", progress=False,
                  print_table=False, protocol_overrides=slf, batch_size=64 if proof.tiny else 1024, overwrite=True,
                  n_train=256 if proof.tiny else None, n_test=64 if proof.tiny else None)
    scores = {}
    for name, model in (("pretrained", str(trained.model_dir)),
                        ("random_init", _random_backbone(robust_hub, config.model.arch, config.train.seed))):
        started = time.perf_counter()
        record = evaluate(model, out_dir=work / f"eval_{name}", **common)[0]
        metrics = record["metrics"]
        scores[name] = {"clean_acc": metrics.get("clean_acc"), "pgd20_acc": metrics.get("pgd20_acc"),
                        "flags": record.get("flags", []), "seconds": round(time.perf_counter() - started, 1)}
    return {"method": "ACL", "epochs": epochs, "train_seconds": round(train_seconds, 1),
            "images_per_s": round(epochs * len(train_set) * (1 - config.data.val_fraction) / train_seconds, 1),
            "fast_path": "speed.* auto", "slf": slf, "test_images": len(test_set) if not proof.tiny else 64,
            "scores": scores}


def _random_backbone(robust_hub: Any, arch: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return robust_hub.create_backbone(arch)


# -- 7. the recipe ---------------------------------------------------------------------------------
def recipe(proof: Proof, budget: float) -> dict[str, Any]:
    rate = proof.cache.get("images_per_s")
    if not rate:
        raise RuntimeError("no measured images/s (section acl_step failed)")
    cost = proof.cache.get("selection_cost")
    return estimate_recipe.recipe_from_rate(rate, selection_cost=cost if cost is not None else 0.75,
                                            selection_cost_measured=cost is not None)


# Seconds each section may take (the plan of a 9-minute lease: about 20 s of installs, then
# --budget-s 520 for this command, imports included). The real run takes what the others leave, down
# to its evaluation reserve: at least 150 s of training when every other section uses its whole budget.
SECTIONS: tuple[tuple[str, Callable[[Proof, float], dict], float], ...] = (
    ("environment", environment, 15),
    ("correctness", correctness, 60),   # two fast-vs-plain comparisons (one compile) and the CUDA-only tests
    ("acl_step", acl_step, 120),        # 7 ACL variants (2 compiles, cache warm) + 3 DynACL+IR
    ("eval_speed", eval_speed, 25),
    ("rcs_selection", rcs_selection, 40),
    ("real_run", real_run, 420),        # capped by the time left
    ("recipe", recipe, 5),
)


def run_section(proof: Proof, name: str, fn: Callable[[Proof, float], dict], budget: float) -> None:
    if proof.left() < min(budget, 10) and not proof.tiny:
        proof.results[name] = {"status": "skipped", "error": "out of time", "budget_s": budget}
        return
    budget = min(budget, max(proof.left(), 1.0))

    def interrupt(signum, frame):
        raise SectionTimeout(f"over 1.5x its {budget:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(max(1, math.ceil(1.5 * budget)) if not proof.tiny else 0)
    started = time.perf_counter()
    try:
        entry = {"status": "ok", "result": fn(proof, budget)}
    except Exception as error:  # noqa: BLE001 - a section's failure is reported and the next one runs
        entry = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                 "traceback": traceback.format_exc().splitlines()[-8:]}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    entry.update(seconds=round(time.perf_counter() - started, 1), budget_s=round(budget))
    proof.results[name] = entry
    print(f"[gpu_proof] {name}: {entry['status']} in {entry['seconds']} s", file=sys.stderr, flush=True)


# -- the report ------------------------------------------------------------------------------------
def markdown(proof: Proof) -> str:
    r = proof.results
    env = proof.result("environment") or {}
    lines = [f"# robust-hub GPU proof ({time.strftime('%Y-%m-%d', time.gmtime())}{', --tiny on CPU' if proof.tiny else ''})",
             "", f"{env.get('device', proof.device)}; driver {env.get('driver')}, CUDA {env.get('cuda')}, "
             f"torch {env.get('torch', torch.__version__)}; measured peaks {env.get('peaks_tflops')} TFLOP/s, "
             f"copy {env.get('copy_tb_per_s')} TB/s", "", "| section | status | s | result |", "|---|---|---|---|"]
    for name, _, _ in SECTIONS:
        entry = r.get(name, {"status": "not run"})
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | "
                     f"{_summary(name, entry.get('result')) if entry['status'] == 'ok' else entry.get('error', '')} |")
    step = proof.result("acl_step")
    if step:
        lines += ["", "| step | variant | images/s | MFU | vs fp32 | vs reference |", "|---|---|---|---|---|---|"]
        for key, report in step.items():
            for row in report["results"]:
                if "error" in row:
                    lines.append(f"| {key} | {row['variant']} | failed: {row['error']} | | | |")
                    continue
                lines.append(f"| {key} | {row['variant']} | {row['images_per_s']} | {row['mfu']} | "
                             f"{row.get('speedup_vs_fp32', '')} | {row.get('speedup_vs_reference', '')} |")
    return "\n".join(lines) + "\n"


def _summary(name: str, result: dict[str, Any] | None) -> str:
    if not result:
        return ""
    if name == "correctness":
        return (f"ok={result['ok']}; ACL loss diff {result['acl']['loss_rel_diff']:.2e}, DynACL+IR "
                f"{result['dynacl_ir']['loss_rel_diff']:.2e}; tests {result['suite_tests'].get('summary', result['suite_tests'])}")
    if name == "eval_speed":
        return (f"PGD-20 {result['pgd20_img_s_by_variant']} img/s, AutoAttack {result['autoattack_img_s']} img/s "
                f"({result['n']} / {result['aa_n']} images, random-init ResNet)")
    if name == "rcs_selection":
        return f"{result['seconds']} s = {result.get('epochs_of_training', '?')} epochs ({result['train_images']} images)"
    if name == "real_run":
        s = result["scores"]
        return (f"{result['epochs']} epochs in {result['train_seconds']} s; SLF clean / PGD-20 on {result['test_images']} "
                f"test images: pre-trained {s['pretrained']['clean_acc']} / {s['pretrained']['pgd20_acc']}, "
                f"random init {s['random_init']['clean_acc']} / {s['random_init']['pgd20_acc']}")
    if name == "recipe":
        return f"{result['full_recipe_hours']} h without RCS, {result['rcs_recipe_hours']} h with RCS (from {result['images_per_s']} img/s)"
    if name == "environment":
        return f"peaks {result['peaks_tflops']} TFLOP/s"
    return ""


def prepare_out(out: Path) -> None:
    """``--out`` is new, empty, or an earlier report of this command: nothing else is overwritten."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SystemExit(f"error: --out {out} is not a directory")
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES)
        if foreign:
            raise SystemExit(f"error: --out {out} holds files this command did not write ({', '.join(foreign[:3])})")
    out.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where report.json and report.md are written")
    parser.add_argument("--tiny", action="store_true", help="tiny model, few steps and images, on the CPU")
    parser.add_argument("--data", default=None, help="CIFAR-10 parquet directory (default ../shared/data/cifar10; "
                                                     "--tiny: embedded:digits)")
    parser.add_argument("--work", default=None, help="training runs and evaluation records (default: a temporary directory)")
    parser.add_argument("--cache-dir", default=None, help="decoded-image cache of the data layer")
    parser.add_argument("--budget-s", type=float, default=520.0, help="the whole command's time limit, imports included")
    parser.add_argument("--sections", default=",".join(name for name, _, _ in SECTIONS), help="comma-separated subset")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network: the data and every dependency travel along
    out = Path(args.out)
    prepare_out(out)
    wanted = args.sections.split(",")
    unknown = sorted(set(wanted) - {name for name, _, _ in SECTIONS})
    if unknown:
        raise SystemExit(f"error: unknown section(s) {', '.join(unknown)}")
    args.data = args.data or ("embedded:digits" if args.tiny else str(REPO.parent / "shared" / "data" / "cifar10"))
    args.work = args.work or tempfile.mkdtemp(prefix="gpu_proof_")
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    proof = Proof(args, device, STARTED + args.budget_s)
    for name, fn, budget in SECTIONS:
        if name in wanted:
            run_section(proof, name, fn, budget)
    report = {"command": "bench/gpu_proof.py", "tiny": args.tiny, "device": str(device), "budget_s": args.budget_s,
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": proof.results}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    text = markdown(proof)
    (out / "report.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
