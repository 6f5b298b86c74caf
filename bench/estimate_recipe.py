"""Estimated wall time of the 1000-epoch ACL recipe, with and without RCS, from FLOPs and an MFU.

    python bench/estimate_recipe.py --gflop-per-image 35.5 --peak-tflops 989 --mfu 0.4
    python bench/estimate_recipe.py --from-bench bench.json --variant fast   # FLOPs and MFU measured

An estimate, not a measurement: it assumes the whole run keeps the given MFU. RCS (method.md): the
full set for ``warmup`` epochs, then a coreset of fraction k re-selected every ``interval`` epochs.
A selection attacks every training image once (contrastive PGD for the batch gradients, as in
training) and runs the frozen backbone forward on both adversarial views, so it is counted as
``selection_cost`` of a training epoch (the attack's share plus two forwards, about 0.75).
"""

from __future__ import annotations

import argparse
import json


def epoch_equivalents(epochs: int, k: float | None, warmup: int, interval: int, selection_cost: float) -> float:
    """The recipe's work in epochs of full-set training: all of them without RCS; with it, the warm-up,
    then coreset epochs of fraction k and a selection (``selection_cost`` epochs) every ``interval``."""
    if k is None:
        return float(epochs)
    selections = len(range(warmup, epochs, interval))
    return warmup + (epochs - warmup) * k + selections * selection_cost


def recipe_hours(images_per_epoch: int, gflop_per_image: float, tflops: float, epochs: int, k: float | None,
                 warmup: int, interval: int, selection_cost: float) -> tuple[float, float]:
    """(hours, epoch-equivalents of full-set training)."""
    equivalents = epoch_equivalents(epochs, k, warmup, interval, selection_cost)
    seconds = equivalents * images_per_epoch * gflop_per_image * 1e9 / (tflops * 1e12)
    return seconds / 3600, equivalents


def recipe_from_rate(images_per_s: float, *, selection_cost: float, selection_cost_measured: bool,
                     images_per_epoch: int = 49152, epochs: int = 1000, k: float = 0.2, warmup: int = 100,
                     interval: int = 20) -> dict:
    """The recipe's wall time from a measured training throughput (no assumed MFU)."""
    hours = {}
    for name, fraction in (("full", None), ("rcs", k)):
        equivalents = epoch_equivalents(epochs, fraction, warmup, interval, selection_cost)
        hours[name] = (equivalents * images_per_epoch / images_per_s / 3600, equivalents)
    return {"estimate": False, "from": "measured images/s of the training step", "images_per_s": images_per_s,
            "full_recipe_hours": round(hours["full"][0], 3), "rcs_recipe_hours": round(hours["rcs"][0], 3),
            "rcs_epoch_equivalents": round(hours["rcs"][1], 1),
            "rcs": {"k": k, "warmup": warmup, "interval": interval, "selection_cost": selection_cost,
                    "selection_cost_measured": selection_cost_measured}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gflop-per-image", type=float, default=35.5)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--from-bench", help="a bench_acl_step.py JSON: take its FLOPs and a variant's MFU")
    p.add_argument("--variant", default="fast")
    p.add_argument("--images-per-epoch", type=int, default=49152, help="96 steps of 512 (CIFAR-10 less 1%% held out)")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--k", type=float, default=0.2)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--interval", type=int, default=20)
    p.add_argument("--selection-cost", type=float, default=0.75)
    args = p.parse_args()
    gflop, mfu, peak = args.gflop_per_image, args.mfu, args.peak_tflops
    if args.from_bench:
        with open(args.from_bench, encoding="utf-8") as f:
            bench = json.load(f)
        result = next(r for r in bench["results"] if r["variant"] == args.variant)
        gflop, peak = bench["gflop_per_image"], result["peak_tflops"] or peak
        mfu = result["mfu"] if isinstance(result["mfu"], float) else mfu
    tflops = peak * mfu
    common = (args.images_per_epoch, gflop, tflops, args.epochs)
    full, _ = recipe_hours(*common, None, args.warmup, args.interval, args.selection_cost)
    rcs, eq = recipe_hours(*common, args.k, args.warmup, args.interval, args.selection_cost)
    print(json.dumps({
        "estimate": True, "gflop_per_image": gflop, "peak_tflops": peak, "mfu": mfu, "achieved_tflops": tflops,
        "full_recipe_hours": round(full, 3), "rcs_recipe_hours": round(rcs, 3),
        "rcs_epoch_equivalents": round(eq, 1), "rcs": {"k": args.k, "warmup": args.warmup, "interval": args.interval,
                                                         "selection_cost": args.selection_cost},
    }, indent=2))


if __name__ == "__main__":
    main()
