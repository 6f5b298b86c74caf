"""Throughput and MFU of one ACL training step (augment + contrastive PGD + dual-stream loss + LARS),
or of another method's (``--method dynacl``, ``--ir``).

    python bench/bench_acl_step.py                                   # ResNet-18, batch 512, PGD-5
    python bench/bench_acl_step.py --device cpu --batch 32 --variants plain,bf16,channels_last
    python bench/bench_acl_step.py --peak-tflops 2.0 --out bench.json
    python bench/bench_acl_step.py --device cpu --threads 2 --batch 64 --variants reference,plain,fast --rounds 5
    python bench/bench_acl_step.py --device cpu --threads 2 --batch 64 --variants reference,plain,fast --profile-steps 1

Every variant runs in the same process on a fresh copy of the same model: ``plain`` (fp32, no
compile, a loss read back every step), ``reference`` (the plain step with the attack computed as the
reference ACL code computes it: ``loss.backward()`` at each PGD step, so every parameter gradient is
computed too and then zeroed), ``fast`` (``speed.*`` on ``auto`` for the device, as the trainer
resolves it), ``fast-nocompile``, or a ``+``-joined set of parts (``bf16+channels_last``). On CUDA,
``fp32`` or ``tf32`` in a set pins the precision of fp32 convolutions and matmuls (PyTorch's default
is TF32 convolutions and fp32 matmuls).
For each it reports images/s, the ratios to ``plain`` and ``reference`` (medians over ``--rounds``
alternating rounds, with their range), the FLOPs of the real step counted by
PyTorch's FLOP counter, the achieved fraction of the device's peak (MFU), and the time split
between augmentation, attack, training forward/backward and optimiser. The split is measured in
separate steps with a synchronisation between the phases, so the throughput steps stay sync-free.
With ``--profile-steps N`` (CPU) each variant also runs N steps under PyTorch's profiler, which splits their
time into convolution kernels and everything else. ``ceiling_vs_reference`` is then the reference's profiled
step time over the variant's convolution time: the speed-up the variant would reach if everything but its
convolutions cost nothing, so a goal above it cannot be met without faster convolution kernels or less
convolution work (a change to what the step computes).
The JSON is meant to be kept and compared with later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from contextlib import nullcontext
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import robust_hub
from robust_hub.config import AttackConfig, MethodConfig, RunConfig, SpeedConfig, TrainConfig
from robust_hub.data import SimCLRAugment
from robust_hub.losses import nt_xent
from robust_hub.training.fast import DeviceLosses, FastPath
from robust_hub.training.methods import METHODS
from robust_hub.training.optim import build_optimizer

# Dense peak TFLOP/s from the vendors' data sheets, by device-name substring (first match wins).
# "tf32" is what fp32 convolutions run at on CUDA by default (cudnn.allow_tf32 is on).
PEAKS = {
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},  # SXM / HBM3
    "H200": {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "RTX 3090": {"bf16": 71.0, "tf32": 35.6, "fp32": 35.6},  # fp32 accumulation
}
PHASES = ("augment", "attack", "train_fwd_bwd", "optimizer")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def peak_tflops(name: str, precision: str, flag: float | None) -> float | None:
    if flag:
        return flag
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks[precision]
    return None


PRECISIONS = ("fp32", "tf32")


def variant_fast_path(name: str, device: torch.device) -> FastPath:
    if name in ("plain", "reference"):
        return FastPath(device_type=device.type)
    if name in ("fast", "fast-nocompile"):
        speed = SpeedConfig(compile=False) if name == "fast-nocompile" else SpeedConfig()
        return FastPath.resolve(speed, device)
    parts = set(name.split("+")) - set(PRECISIONS)
    unknown = parts - {"bf16", "channels_last", "compile", "foreach", "sync_free", "cuda_graphs"}
    if unknown:
        raise SystemExit(f"error: unknown fast-path part(s) {sorted(unknown)} in variant {name!r}")
    return FastPath(device_type=device.type, bf16="bf16" in parts, channels_last="channels_last" in parts,
                    compile="compile" in parts or "cuda_graphs" in parts, cuda_graphs="cuda_graphs" in parts,
                    foreach=True if "foreach" in parts else None, sync_free="sync_free" in parts)


class Step:
    """The trainer's step (loop._Trainer.train_step) without Accelerate, phase by phase."""

    def __init__(self, args, device: torch.device, fast: FastPath):
        torch.manual_seed(0)
        self.device, self.fast, self.log_every = device, fast, 10
        self.model = fast.prepare_model(robust_hub.create_backbone(args.arch).to(device).train())
        config = RunConfig(attack=AttackConfig(steps=args.pgd_steps), method=MethodConfig(name=args.method, ir=args.ir),
                           train=TrainConfig(lr=0.1))
        self.method = METHODS[args.method](config)
        self.optimizer = fast.prepare_optimizer(build_optimizer(self.model, config.train))
        size = getattr(args, "image_size", 32)
        self.augment = SimCLRAugment(1.0, size=size)
        self.images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, device=device)
        self.losses, self.count = DeviceLosses(), 0
        self.epoch = getattr(args, "epoch", 0)  # DynACL's w is 0 at epoch 0

    def augment_views(self):
        with torch.no_grad():
            views = self.augment.views(self.images)  # view i, view j, the un-augmented images (IR)
        return tuple(self.fast.images(v) for v in views)

    def attack(self, views):
        return self.method.attack(self.model, *views[:2], self.fast.autocast_factory())

    def forward_backward(self, views, adversarial):
        self.model.train()
        with self.fast.autocast():
            terms = self.method.loss(self.model, views[:2], adversarial, epoch=self.epoch, original=views[2])
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        return terms

    def optimizer_step(self, terms):
        self.optimizer.step()
        self.losses.add(terms.total, terms.parts)
        self.count += 1
        if not self.fast.sync_free or self.count % self.log_every == 0:
            self.losses.read(lambda t: t)  # the trainer reads (and checks) losses here

    def __call__(self, timer=None):
        timer = timer or (lambda name: nullcontext())
        with timer("augment"):
            views = self.augment_views()
        with timer("attack"):
            adversarial = self.attack(views)
        with timer("train_fwd_bwd"):
            terms = self.forward_backward(views, adversarial)
        with timer("optimizer"):
            self.optimizer_step(terms)


def reference_attack(model: torch.nn.Module, x_i: torch.Tensor, x_j: torch.Tensor, steps: int,
                     eps: float = 8 / 255, alpha: float = 2 / 255, temperature: float = 0.5):
    """Contrastive PGD as the reference ACL code runs it: ``loss.backward()`` on a perturbation
    parameter, which computes (and the next step zeroes) every parameter gradient as well. It finds
    what ``contrastive_pgd`` finds; only the work differs."""
    model.eval()
    clean = torch.cat([x_i, x_j])
    delta = torch.nn.Parameter(torch.empty_like(clean).uniform_(-eps, eps))
    delta.data = (clean + delta.data).clamp(0, 1) - clean
    for _ in range(steps):
        model.zero_grad()
        z = model(clean + delta, route="pgd", project=True)
        nt_xent(*z.chunk(2), temperature=temperature).backward()
        delta.data = (delta.data + alpha * delta.grad.sign()).clamp(-eps, eps)
        delta.data = (clean + delta.data).clamp(0, 1) - clean
        delta.grad = None
    model.zero_grad()
    return tuple((clean + delta).detach().chunk(2))


class ReferenceStep(Step):
    """The plain step with the reference code's attack (the baseline the speed-ups are against)."""

    def attack(self, views):
        return reference_attack(self.model, *views[:2], self.method.config.attack.steps)


def precision_backends(name: str, device: torch.device):
    """TF32 on or off for CUDA convolutions and matmuls when the variant names ``fp32`` or ``tf32``."""
    parts = set(name.split("+"))
    if device.type != "cuda" or not parts & set(PRECISIONS):
        return nullcontext()
    tf32 = "tf32" in parts

    class _Backends:
        def __enter__(self):
            self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32

        def __exit__(self, *exc):
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved

    return _Backends()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    def __init__(self, device: torch.device):
        self.device, self.seconds = device, dict.fromkeys(PHASES, 0.0)

    def __call__(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                synchronize(timer.device)
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                synchronize(timer.device)
                timer.seconds[name] += time.perf_counter() - self.start

        return _Phase()


def is_convolution(op_name: str) -> bool:
    """A convolution's aten op, forward or backward, any backend: the kernel and the aten dispatch ops above it
    (``aten::conv2d``, ``aten::convolution``, whose self time is only their dispatch), not autograd's nodes."""
    return op_name.startswith("aten::") and "conv" in op_name


def profile_steps(step: Step, steps: int) -> dict[str, float]:
    """Seconds per step under the profiler, split into convolution kernels (their self time) and the rest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    convolution = sum(e.self_cpu_time_total for e in prof.key_averages() if is_convolution(e.key)) / 1e6 / steps
    return {"step_s": wall, "convolution_s": convolution, "other_s": wall - convolution,
            "convolution_share": round(convolution / wall, 4)}


def count_flops(step: Step) -> dict[str, float]:
    """FLOPs of one step, per phase, counted by PyTorch (the model runs eagerly while counting)."""
    counted = {}
    views = step.augment_views()
    with FlopCounterMode(display=False) as counter:
        adversarial = step.attack(views)
    counted["attack"] = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        terms = step.forward_backward(views, adversarial)
    counted["train_fwd_bwd"] = counter.get_total_flops()
    step.optimizer.zero_grad(set_to_none=True)
    del terms
    counted["total"] = counted["attack"] + counted["train_fwd_bwd"]
    return counted


def measure(args, device: torch.device, name: str) -> dict:
    with precision_backends(name, device):
        return _measure(args, device, name)


def _measure(args, device: torch.device, name: str) -> dict:
    fast = variant_fast_path(name, device)
    step = (ReferenceStep if name == "reference" else Step)(args, device, fast)
    start = time.perf_counter()
    step()  # the first step compiles, when compiling
    synchronize(device)
    first_step_s = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    timer = PhaseTimer(device)
    for _ in range(args.split_steps):
        step(timer)
    split_total = sum(timer.seconds.values())
    profiled = {"profile": profile_steps(step, args.profile_steps)} if getattr(args, "profile_steps", 0) else {}
    return {**profiled,
        "variant": name, "fast_path": fast.describe(), "images_per_s": args.batch * args.steps / elapsed,
        "step_s": elapsed / args.steps, "first_step_s": first_step_s,
        "split": {k: round(v / split_total, 4) for k, v in timer.seconds.items()} if split_total else {},  # --split-steps 0
        "split_step_s": split_total / max(args.split_steps, 1),
    }


def _measured_or_error(args, device: torch.device, variant: str) -> dict:
    if not args.keep_going:
        return measure(args, device, variant)
    deadline = getattr(args, "deadline", None)  # time.monotonic() after which no variant starts
    if deadline is not None and time.monotonic() > deadline:
        return {"variant": variant, "error": "skipped: the time budget was spent"}
    try:
        return measure(args, device, variant)
    except Exception as error:  # noqa: BLE001 - one variant's failure must not cost the others
        return {"variant": variant, "error": f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"}


def variant_precision(variant: str, fast_path: dict, device: torch.device) -> str:
    """What fp32 work runs at: bf16 under autocast; on CUDA TF32 unless the variant pins fp32."""
    if fast_path["bf16"]:
        return "bf16"
    return "tf32" if device.type == "cuda" and "fp32" not in variant.split("+") else "fp32"


def run(args, device: torch.device, peak_for: Callable[[str], float | None]) -> dict:
    """Every variant of ``args.variants`` measured in this process; ``peak_for(precision)`` gives the MFU's peak."""
    flops = count_flops(Step(args, device, FastPath(device_type=device.type)))
    variants = args.variants.split(",")
    # Rounds alternate the variants, so load that comes and goes on a shared machine hits them all;
    # each ratio is taken within a round and the median over rounds is reported with its range.
    rounds = [[_measured_or_error(args, device, variant) for variant in variants] for _ in range(args.rounds)]
    results = []
    for i, variant in enumerate(variants):
        runs = [round_[i] for round_ in rounds]
        if any("error" in run_ for run_ in runs):  # a broken variant is reported, the others still are
            results.append(next(run_ for run_ in runs if "error" in run_))
            continue
        r = dict(runs[len(runs) // 2] if len(runs) % 2 else runs[0])
        r["images_per_s"] = statistics.median(run_["images_per_s"] for run_ in runs)
        r["images_per_s_rounds"] = [round(run_["images_per_s"], 3) for run_ in runs]
        precision = variant_precision(variant, r["fast_path"], device)
        peak = peak_for(precision)
        achieved = flops["total"] * r["images_per_s"] / args.batch / 1e12
        r.update({"precision": precision, "achieved_tflops": round(achieved, 4), "peak_tflops": peak,
                  "mfu": round(achieved / peak, 4) if peak else "unknown (give --peak-tflops)",
                  "images_per_s": round(r["images_per_s"], 3)})
        for baseline in ("plain", "fp32", "reference"):
            j = variants.index(baseline) if baseline in variants else None
            if j is not None and all("error" not in round_[j] for round_ in rounds):
                ratios = [round_[i]["images_per_s"] / round_[j]["images_per_s"] for round_ in rounds]
                r[f"speedup_vs_{baseline}"] = round(statistics.median(ratios), 3)
                r[f"speedup_vs_{baseline}_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
        j = variants.index("reference") if "reference" in variants else None
        if "profile" in r and j is not None and all("error" not in round_[j] for round_ in rounds):
            r["ceiling_vs_reference"] = round(statistics.median(
                round_[j]["profile"]["step_s"] / round_[i]["profile"]["convolution_s"] for round_ in rounds), 3)
        results.append(r)
    return {
        "bench": "acl_step", "method": args.method + ("+ir" if args.ir else ""), "arch": args.arch, "batch": args.batch, "pgd_steps": args.pgd_steps,
        "device": device_name(device), "torch": torch.__version__, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "flops_per_image": {k: v / args.batch for k, v in flops.items()},
        "gflop_per_image": round(flops["total"] / args.batch / 1e9, 3),
        "rounds": args.rounds, "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "results": results,
    }


def replaceable_report(path: str) -> bool:
    """``--out`` may be written: nothing is there, or an earlier report of this bench (never a file of someone else's)."""
    if not os.path.lexists(path):
        return True
    try:
        with open(path, encoding="utf-8") as f:
            return not os.path.islink(path) and json.load(f).get("bench") == "acl_step"
    except (OSError, ValueError, AttributeError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="robust_resnet18")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--pgd-steps", type=int, default=5)
    parser.add_argument("--method", choices=sorted(METHODS), default="acl", help="the step at epoch 0 (DynACL: w = 0)")
    parser.add_argument("--ir", action="store_true", help="add invariant regularisation (one more forward/backward)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (compiling) one")
    parser.add_argument("--split-steps", type=int, default=2, help="steps timed phase by phase")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds over the variants (medians reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on a CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default="plain,fast", help="comma-separated; see the description")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak for the fast path's precision (required for an MFU on a CPU)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="CPU: profile this many more steps per variant (convolution time and the ceiling)")
    parser.add_argument("--keep-going", action="store_true", help="report a failing variant and measure the rest")
    args = parser.parse_args()
    for flag, least in (("steps", 1), ("rounds", 1), ("batch", 1), ("warmup", 0), ("split_steps", 0),
                        ("profile_steps", 0), ("pgd_steps", 0)):
        if getattr(args, flag) < least:
            parser.exit(2, f"error: --{flag.replace('_', '-')} must be at least {least}, got {getattr(args, flag)}\n")

    if args.out and not replaceable_report(args.out):
        parser.exit(2, f"error: --out {args.out} exists and is not a report of this bench; it is left as it is\n")
    device = torch.device(args.device)
    if args.profile_steps and device.type != "cpu":
        parser.exit(2, "error: --profile-steps splits CPU time; on a GPU use --split-steps and PyTorch's profiler\n")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    name = device_name(device)
    report = run(args, device, lambda precision: peak_tflops(name, precision, args.peak_tflops))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
