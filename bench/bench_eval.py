"""Evaluation throughput (images/s) of PGD-20 and AutoAttack on a CIFAR ResNet-18, CPU and GPU.

    python bench/bench_eval.py [--device cpu|cuda|all] [--n 128] [--aa-n 32] [--batch-size 128]
    python bench/bench_eval.py --device cuda --n 10000 --aa-n 1000 --batch-size 1000 --pgd-variants fp32,tf32,compile

Each number is reported as images per second and as a ratio to a clean forward pass measured in
the same process. The network is randomly initialised with a linear head: AutoAttack's cost
depends on how many points survive each attack, so on an untrained network (easily broken points)
its throughput is an upper bound of what a robust model gets. Labels are the model's own
predictions, so every image is attacked.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

import robust_hub
from robust_hub.evaluation.attacks import PGDConfig, pgd
from robust_hub.evaluation.autoattack_runner import run_autoattack
from robust_hub.evaluation.loading import wrap_module


def resnet18(arch: str = "robust_resnet18") -> nn.Module:
    return robust_hub.create_backbone(arch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def bench(device: torch.device, n: int, aa_n: int, batch_size: int, pgd_variants: tuple[str, ...] = (),
          arch: str = "robust_resnet18") -> dict:
    torch.manual_seed(0)
    backbone = wrap_module(resnet18(arch))
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, 10)).to(device).eval()
    x = torch.rand(n, 3, 32, 32, device=device)
    with torch.no_grad():
        # Labels are the model's own predictions: every image is correct, so AutoAttack attacks all
        # of them (with random labels it would skip the ~90% already misclassified and look fast).
        y = model(x).argmax(dim=1)

    def clean():
        with torch.no_grad():
            for i in range(0, n, batch_size):
                model(x[i:i + batch_size])

    def pgd20(attacked: nn.Module = model):
        cfg = PGDConfig(eps=8 / 255, alpha=2 / 255, steps=20)
        for i in range(0, n, batch_size):
            pgd(attacked, x[i:i + batch_size], y[i:i + batch_size], cfg)

    clean()  # warm-up
    t_clean = _timed(clean, device)
    t_pgd = _timed(pgd20, device)
    aa_result = {}

    def aa():
        aa_result["r"] = run_autoattack(model, x[:aa_n], y[:aa_n], eps=8 / 255, seed=0, batch_size=batch_size,
                                        device=device, progress=False)

    t_aa = _timed(aa, device)
    clean_ips = n / t_clean
    variants = {v: round(n / _timed_variant(v, model, pgd20, device), 2) for v in pgd_variants if v != "fp32"}
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "clean_forward_img_s": round(clean_ips, 1),
        "pgd20_img_s": round(n / t_pgd, 2),
        "pgd20_cost_vs_clean": round(clean_ips / (n / t_pgd), 1),
        "autoattack_img_s": round(aa_n / t_aa, 3),
        "autoattack_cost_vs_clean": round(clean_ips / (aa_n / t_aa), 1),
        "autoattack_clean_acc": aa_result["r"].clean_acc,
        "autoattack_robust_acc": aa_result["r"].robust_acc,
        "n": n, "aa_n": aa_n, "batch_size": batch_size, "arch": arch,
        "pgd20_img_s_by_variant": {"fp32": round(n / t_pgd, 2), **variants},
    }
    return out


def _timed_variant(variant: str, model: nn.Module, pgd20, device: torch.device) -> float:
    """PGD-20 time with TF32 matmuls/convolutions or a compiled model (reported numbers use neither)."""
    if variant == "tf32":
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            pgd20()  # warm-up (cudnn picks its algorithms)
            return _timed(pgd20, device)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    if variant == "compile":
        compiled = torch.compile(model)
        pgd20(compiled)  # compiles
        return _timed(lambda: pgd20(compiled), device)
    raise SystemExit(f"error: unknown PGD variant {variant!r} (fp32, tf32, compile)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="all", help="cpu, cuda, or all (cpu, then cuda when available)")
    p.add_argument("--n", type=int, default=128, help="images for the clean and PGD-20 timings")
    p.add_argument("--aa-n", type=int, default=32, help="images for the AutoAttack timing")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--pgd-variants", default="fp32", help="also time PGD-20 with tf32 and/or compile (comma-separated)")
    args = p.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            print(json.dumps({"device": d, "skipped": "no GPU available"}))
            continue
        print(json.dumps(bench(torch.device(d), args.n, args.aa_n, args.batch_size, tuple(args.pgd_variants.split(",")))))


if __name__ == "__main__":
    main()
