"""``robust-hub eval``: argument definitions and the command, shared with ``eval_suite/evaluate.py``."""

from __future__ import annotations

import argparse

from robust_hub.cli import OneLineParser, run_with_errors
from robust_hub.config import parse_fraction
from robust_hub.errors import RobustHubError
from robust_hub.evaluation.records import DEFAULT_MAX_BYTES
from robust_hub.evaluation.presets import PRESETS


def _eps(text: str) -> float:
    """Parse ``8/255``, ``0.031`` or ``0.5``."""
    try:
        return parse_fraction(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from exc


def _eps_list(text: str) -> list[float]:
    return [_eps(t) for t in text.split(",") if t.strip()]


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``parser``."""
    p = parser
    p.add_argument("model", help="hub id (org/name[@rev], hf-hub:...), timm name, local model dir, or reference .pt")
    p.add_argument("--protocols", default="slf,alf,aff", help="comma-separated subset of slf,alf,aff (default: all); own: a classifier's own head, "
                   "no finetuning (trainers/sat.py models)")
    p.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, stl10, a hub dataset id or a local path")
    p.add_argument("--out", required=True, help="directory for the JSON records and resumable state")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit); pinned to a commit sha")
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle weights, read with weights_only=True")
    p.add_argument("--metrics", default=None, help="comma-separated subset of clean,pgd20,autoattack,c10c "
                   "(default: clean,pgd20,autoattack, plus c10c when a CIFAR-10-C source is given). c10c alone, on "
                   "cifar10 or cifar100, uses the official CIFAR-10-C / CIFAR-100-C, downloaded from Zenodo (2.9 GB) "
                   "and checked against its published MD5 on first use, then cached")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"], help="threat model norm (default linf)")
    p.add_argument("--eps", type=_eps, default=8 / 255, help="attack radius in [0,1] pixel units, e.g. 8/255 (default)")
    p.add_argument("--eps-curve", type=_eps_list, default=[], help="comma-separated eps values for an accuracy-vs-eps curve")
    p.add_argument("--eps-curve-attack", default="pgd20", choices=["pgd20", "autoattack"])
    p.add_argument("--seed", type=int, default=0, help="seed for finetuning and attacks (default 0)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--n-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--n-test", type=int, default=None, help="use only the first N test images")
    p.add_argument("--n-autoattack", type=int, default=None, help="run AutoAttack on the first N test images only")
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of every protocol")
    p.add_argument("--preset", default="uniform", choices=PRESETS, help="finetuning settings: uniform (the "
                   "default, equal conditions for every model) or the RobustSSL benchmark's per-method settings, to "
                   "reproduce a published row; named in every record")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[PROTOCOL.]KEY=VALUE",
                   help="override a protocol setting, e.g. --set slf.lr=0.05 --set train_attack.steps=5 (repeatable)")
    p.add_argument("--c10c-dir", default=None, help="directory with CIFAR-10-C-layout .npy files (instead of the cached official download)")
    p.add_argument("--c10c-generate", action="store_true", help="measure corruption accuracy on a generated set "
                   "(labelled generated in every result)")
    p.add_argument("--c10c-n-per-severity", type=int, default=None, help="use the first N images of each severity")
    p.add_argument("--autoattack-version", default="standard", choices=["standard", "plus", "rand"])
    p.add_argument("--autoattack-chunk-size", type=int, default=1000, help="images per resumable AutoAttack chunk")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--evidence-max-bytes", type=int, default=DEFAULT_MAX_BYTES, metavar="BYTES",
                   help="keep at most this many bytes of adversarial examples per record as evidence (default "
                        f"{DEFAULT_MAX_BYTES}, enough for a full CIFAR-10 evaluation); metrics beyond it are "
                        "named in the record as omitted")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--overwrite", action="store_true", help="write records into an --out that robust-hub did not "
                   "create (nothing in it is deleted)")


def _overrides(args: argparse.Namespace) -> dict:
    out = {}
    if args.epochs is not None:
        out["epochs"] = args.epochs
    for item in args.overrides:
        if "=" not in item:
            raise RobustHubError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def run_eval_command(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args`` (bad input raises RobustHubError)."""
    from robust_hub.evaluation.runner import evaluate

    evaluate(
        args.model, protocols=args.protocols, dataset=args.dataset, out_dir=args.out, revision=args.revision,
        allow_pickle=args.allow_pickle, metrics=args.metrics, norm=args.norm, eps=args.eps,
        eps_curve=args.eps_curve, eps_curve_attack=args.eps_curve_attack, seed=args.seed,
        train_split=args.train_split, test_split=args.test_split, n_train=args.n_train, n_test=args.n_test,
        n_autoattack=args.n_autoattack, protocol_overrides=_overrides(args), c10c_dir=args.c10c_dir,
        c10c_generate=args.c10c_generate, c10c_n_per_severity=args.c10c_n_per_severity,
        autoattack_version=args.autoattack_version, autoattack_chunk_size=args.autoattack_chunk_size,
        batch_size=args.batch_size, device=args.device, progress=not args.no_progress, overwrite=args.overwrite,
        preset=args.preset, evidence_max_bytes=args.evidence_max_bytes,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="robust-hub eval", description="Evaluate a backbone with SLF, ALF and AFF.")
    add_eval_arguments(parser)
    return run_with_errors(run_eval_command, parser.parse_args(argv))
