"""Sharded evaluation: PGD-20 and AutoAttack (standard) images/s on one process against N processes, as ratios.

    python bench/bench_eval_sharded.py [--processes 2] [--n 48] [--aa-n 16] [--batch-size 8] [--arch robust_resnet_tiny]

One run measures both: the script launches itself as a plain process and under ``accelerate launch`` over N
processes (gloo on a CPU, one GPU each otherwise), each timing the runner's own sharded functions
(``pgd_results``, ``run_autoattack``) between barriers, and prints images/s and the N-process / 1-process ratio.
The per-image results of the two runs are compared too. The network is randomly initialised with a linear head
and the labels are its own predictions, so every image is attacked; CIFAR-sized random images. Threads per
process: 1 (``OMP_NUM_THREADS``), so N processes use N cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def worker(args: argparse.Namespace) -> None:
    """One measurement (run on every process of a launch); the main process writes it to ``args.result``."""
    import robust_hub
    from robust_hub.evaluation import sharding
    from robust_hub.evaluation.attacks import PGDConfig
    from robust_hub.evaluation.autoattack_runner import run_autoattack
    from robust_hub.evaluation.loading import wrap_module
    from robust_hub.evaluation.runner import SplitData, pgd_results

    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = wrap_module(robust_hub.create_backbone(args.arch))
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, 10)).eval()
    images = torch.randint(0, 256, (args.n, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)  # every image is classified correctly, so every one is attacked
    data = SplitData(images, labels, 10, "random", "test", "random")

    def timed(fn):
        sharding.barrier()
        t0 = time.perf_counter()
        out = fn()
        sharding.barrier()
        return out, time.perf_counter() - t0

    attack = PGDConfig(eps=8 / 255, alpha=2 / 255, steps=20, norm="linf", random_start=True)
    (pgd_correct, _), pgd_s = timed(lambda: pgd_results(model, data, attack, seed=0, batch_size=args.batch_size,
                                                        progress=False))
    aa, aa_s = timed(lambda: run_autoattack(model, images[:args.aa_n].float() / 255, labels[:args.aa_n], eps=8 / 255,
                                            batch_size=args.batch_size, chunk_size=args.batch_size, progress=False))
    if sharding.is_main_process():
        Path(args.result).write_text(json.dumps({
            "processes": sharding.world_size(), "pgd20_images_per_s": args.n / pgd_s,
            "autoattack_images_per_s": args.aa_n / aa_s, "pgd20_correct": pgd_correct, "autoattack_robust": aa.robust}))


def measure(args: argparse.Namespace, processes: int) -> dict:
    from robust_hub.evaluation.launch import accelerate_command

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        launcher = accelerate_command(processes) if processes > 1 else [sys.executable]
        forwarded = ["--n", str(args.n), "--aa-n", str(args.aa_n), "--batch-size", str(args.batch_size),
                     "--arch", args.arch]
        subprocess.run([*launcher, __file__, "--worker", str(result), *forwarded], check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--n", type=int, default=48, help="images attacked with PGD-20")
    p.add_argument("--aa-n", type=int, default=16, help="images attacked with AutoAttack (standard)")
    p.add_argument("--batch-size", type=int, default=8, help="images per unit (PGD batch and AutoAttack chunk)")
    p.add_argument("--arch", default="robust_resnet_tiny")
    p.add_argument("--worker", dest="result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.result:
        return worker(args)
    one, many = measure(args, 1), measure(args, args.processes)
    same = one["pgd20_correct"] == many["pgd20_correct"] and one["autoattack_robust"] == many["autoattack_robust"]
    print(f"{args.arch}, {args.n} images (PGD-20), {args.aa_n} (AutoAttack standard), units of {args.batch_size}, "
          f"{os.cpu_count()} CPU(s)")
    for metric in ("pgd20", "autoattack"):
        a, b = one[f"{metric}_images_per_s"], many[f"{metric}_images_per_s"]
        print(f"  {metric:<10} 1 process {a:8.2f} img/s   {args.processes} processes {b:8.2f} img/s   "
              f"ratio {b / a:.2f}x")
    print(f"  per-image results identical: {same}")


if __name__ == "__main__":
    main()
