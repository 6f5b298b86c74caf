"""What RCS costs and saves, measured side by side in one process with the real trainer.

    python bench/bench_rcs.py                                   # tiny ResNet on the offline digits, CPU
    python bench/bench_rcs.py --arch robust_resnet18 --source ../shared/data/cifar10 --batch 512 --epochs 10

1. One RCS selection (last-layer approximation, PGD-3 RD attack, each minibatch attacked with the
   method's own PGD) as a fraction of one full-set ACL epoch.
2. End to end: ACL+RCS (k = 0.2, warm-up and interval from the command line) against ACL on the full
   set, the same number of epochs, both through ``robust_hub.training.loop.pretrain``.
Ratios are what to compare across machines; absolute seconds depend on how busy the machine is.
Each figure is given in wall-clock seconds and in this process's CPU seconds: on a shared machine
the wall clock of the same work varies with the other jobs, its CPU time much less (run with
OMP_NUM_THREADS=1 so that CPU time is single-thread work).

The accounting behind the end-to-end ratio: with E epochs, W on the full set, a coreset with a fraction
c of the full epoch's steps and n selections each costing s full epochs, an RCS run costs
(W + (E - W) c + n s) / E of the full run. In steady state a selection every I epochs pays off when
s < I (1 - c): ``break_even_interval`` is s / (1 - c).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

import robust_hub
from robust_hub.config import load_config
from robust_hub.coreset import select_coreset
from robust_hub.models import create_backbone
from robust_hub.training.loop import _load_data, pretrain
from robust_hub.training.methods import METHODS


def config_for(args: argparse.Namespace, out: Path, *extra: str):
    return load_config(None, [
        f"data.source={args.source}", f"data.image_size={args.image_size}", f"data.val_fraction={args.val_fraction}",
        f"model.arch={args.arch}", f"attack.steps={args.steps}", f"train.batch_size={args.batch}",
        f"train.epochs={args.epochs}", "train.warmup_epochs=0", "train.lr=1.0", "train.checkpoint_every=0",
        "train.log_every=1000000", f"train.output_dir={out}", *extra])


def timed(work) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``work()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="robust_resnet_tiny")
    parser.add_argument("--source", default="embedded:digits")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="PGD steps of ACL")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--warmup", type=int, default=1, help="full-set epochs before the first selection")
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rcs = [f"coreset.mode=rcs", f"coreset.fraction={args.fraction}", f"coreset.warmup_epochs={args.warmup}",
           f"coreset.interval={args.interval}"]
    with tempfile.TemporaryDirectory() as tmp:
        full = timed(lambda: pretrain(config_for(args, Path(tmp) / "full")))
        rcs_run = timed(lambda: pretrain(config_for(args, Path(tmp) / "rcs", *rcs)))
        # One selection on a fresh model, after the two runs so that it sees the same warm caches.
        config = config_for(args, Path(tmp) / "select", *rcs)
        train_set, val_set = _load_data(config)
        model = create_backbone(args.arch, dual_bn=True, proj_layers=3)
        selections = []
        one = timed(lambda: selections.append(
            select_coreset(model, METHODS["acl"](config), config, 0, train_set.images, val_set.images)))
    selection, count = selections[0], len(range(args.warmup, args.epochs, args.interval))
    coreset_steps = (len(selection.indices) // args.batch) / (len(train_set) // args.batch)
    figures = {
        "robust_hub": robust_hub.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "setting": vars(args), "train_images": len(train_set), "coreset_images": int(selection.indices.numel()),
        "coreset_steps_over_full_epoch": round(coreset_steps, 3), "selections_in_rcs_run": count,
    }
    for clock, k in (("wall", 0), ("cpu", 1)):
        epoch = full[k] / args.epochs
        cost = one[k] / epoch
        figures[clock] = {
            "full_acl_seconds": round(full[k], 1), "acl_rcs_seconds": round(rcs_run[k], 1),
            "one_full_epoch_seconds": round(epoch, 2), "one_selection_seconds": round(one[k], 2),
            "selection_over_full_epoch": round(cost, 3),
            "rcs_run_over_full_run": round(rcs_run[k] / full[k], 3),
            "predicted_rcs_run_over_full_run": round(
                (args.warmup + (args.epochs - args.warmup) * coreset_steps + count * cost) / args.epochs, 3),
            "break_even_interval": round(cost / (1 - coreset_steps), 2),
        }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
