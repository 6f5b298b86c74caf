"""The extra cost of invariant regularisation (IR = SIR + AIR) per training step, against plain ACL.

    python bench/bench_ir_step.py                       # ResNet-18, batch 128, PGD-5, CPU
    python bench/bench_ir_step.py --device cuda --arch robust_resnet18 --batch 512

Both steps are the trainer's own (augment, contrastive PGD, method loss, LARS step); the IR step
adds the third forward pass (the un-augmented images, normal route) and the SIR/AIR terms. The
two are measured alternately in one process and the median of the per-round ratios is reported,
so a busy spell of a shared machine moves both sides of a ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext

import torch

import robust_hub
from robust_hub.config import load_config
from robust_hub.data import SimCLRAugment
from robust_hub.training.methods import METHODS
from robust_hub.training.optim import build_optimizer


def make_step(model, method, optimizer, augment, images):
    def step() -> None:
        view_i, view_j, original = augment.views(images)
        adversarial = method.attack(model, view_i, view_j, nullcontext)
        model.train()
        terms = method.loss(model, (view_i, view_j), adversarial, epoch=0, original=original)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
    return step


def seconds_per_step(step, steps: int, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="robust_resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pgd-steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of timed steps")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per method per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, device=args.device)
    augment = SimCLRAugment(1.0, size=32)
    steps = {}
    for label, ir in (("acl", "false"), ("acl_ir", "true")):
        config = load_config(None, [f"attack.steps={args.pgd_steps}", f"method.ir={ir}", "train.lr=0.1"])
        model = robust_hub.create_backbone(args.arch).to(args.device).train()
        steps[label] = make_step(model, METHODS["acl"](config), build_optimizer(model, config.train), augment, images)
        steps[label]()  # warm-up
    times = {label: [] for label in steps}
    for _ in range(args.rounds):  # alternate, so a busy spell of the machine hits both
        for label, step in steps.items():
            times[label].append(seconds_per_step(step, args.steps, args.device))
    ratios = sorted(ir / acl for acl, ir in zip(times["acl"], times["acl_ir"]))
    print(json.dumps({
        "arch": args.arch, "batch": args.batch, "pgd_steps": args.pgd_steps, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads",
        "acl_s_per_step_median": round(statistics.median(times["acl"]), 3),
        "acl_ir_s_per_step_median": round(statistics.median(times["acl_ir"]), 3),
        "ir_cost_vs_acl_step_median": round(statistics.median(ratios), 3),
        "ir_cost_vs_acl_step_per_round": [round(r, 3) for r in ratios],
    }, indent=2))


if __name__ == "__main__":
    main()
