"""Throughput of one ACL training step (augment + contrastive PGD + dual-stream loss + LARS step).

    python bench/bench_acl_step.py                       # ResNet-18, batch 128, PGD-5, CPU
    python bench/bench_acl_step.py --device cuda --mixed-precision bf16

Prints images/s, and the ratio to a clean (non-adversarial) contrastive step measured in the
same process, which is the cost of robustness independent of how busy the machine is.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

import robust_hub
from robust_hub.config import AttackConfig, RunConfig, TrainConfig
from robust_hub.data import SimCLRAugment
from robust_hub.losses import nt_xent
from robust_hub.training.methods import ACL
from robust_hub.training.optim import build_optimizer


def make_autocast(device: str, precision: str):
    if precision == "no":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device, dtype=dtype)


def acl_step(model, optimizer, method, augment, images, autocast) -> None:
    view_i, view_j, _ = augment.views(images)
    adversarial = method.attack(model, view_i, view_j, autocast)
    with autocast():
        loss = method.loss(model, (view_i, view_j), adversarial, epoch=0).total
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def clean_step(model, optimizer, method, augment, images, autocast) -> None:
    view_i, view_j, _ = augment.views(images)
    with autocast():
        z = model(torch.cat([view_i, view_j]), route="normal", project=True)
        loss = nt_xent(*z.chunk(2))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def images_per_second(step, args, model, optimizer, method, augment, images, autocast) -> float:
    for _ in range(args.warmup):
        step(model, optimizer, method, augment, images, autocast)
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(model, optimizer, method, augment, images, autocast)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return args.batch * args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="robust_resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--pgd-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = robust_hub.create_backbone(args.arch).to(args.device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    config = RunConfig(attack=AttackConfig(steps=args.pgd_steps), train=TrainConfig(lr=0.1))
    method, optimizer = ACL(config), build_optimizer(model, config.train)
    augment = SimCLRAugment(1.0, size=32)
    images = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, device=args.device)
    autocast = make_autocast(args.device, args.mixed_precision)
    clean = images_per_second(clean_step, args, model, optimizer, method, augment, images, autocast)
    acl = images_per_second(acl_step, args, model, optimizer, method, augment, images, autocast)
    result = {
        "arch": args.arch, "batch": args.batch, "pgd_steps": args.pgd_steps, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads",
        "mixed_precision": args.mixed_precision, "acl_images_per_s": round(acl, 2),
        "clean_contrastive_images_per_s": round(clean, 2), "acl_cost_vs_clean_step": round(clean / acl, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
