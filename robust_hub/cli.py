"""The ``robust-hub`` command: pretrain, eval, convert, inspect, push."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Callable, Sequence

from robust_hub.errors import RobustHubError
from robust_hub.hub_push import add_push_arguments, run_push_command

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are bad input too: one ``error:`` line and exit status 2 (``--help`` shows the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


PRETRAIN_EXAMPLES = """examples (from a clone of the repository; README "Short runs" lists the keys that shorten a run):
  robust-hub pretrain --config configs/offline.yaml
  robust-hub pretrain --config configs/offline.yaml train.epochs=2 train.max_steps_per_epoch=3 train.output_dir=outputs/smoke
  robust-hub pretrain --config configs/acl_cifar10.yaml data.source=../shared/data/cifar10 data.subset=2000 train.epochs=20 train.warmup_epochs=2 train.output_dir=outputs/acl_cifar10_first2000
"""


def add_pretrain_arguments(parser: argparse.ArgumentParser, examples: str | None = PRETRAIN_EXAMPLES) -> None:
    parser.epilog, parser.formatter_class = examples, argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", help="YAML run config (configs/*.yaml); defaults are the paper's ACL setting")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from a checkpoint dir, or the latest one in train.output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a train.output_dir that holds another run or other files")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, e.g. data.subset=2000 train.epochs=20 train.warmup_epochs=2")


def run_pretrain_command(args: argparse.Namespace, train: Callable | None = None) -> int:
    from robust_hub.config import load_config
    from robust_hub.training.loop import pretrain

    config = load_config(args.config, args.overrides)
    result = (train or pretrain)(config, resume=args.resume, overwrite=args.overwrite)
    if result.stopped_by_signal:
        print(f"interrupted: checkpoint written to {result.checkpoint}; continue with --resume", file=sys.stderr)
        return 128 + result.stopped_by_signal
    if is_main_process():
        from robust_hub.training.summary import print_summary

        print_summary(config, result.model_dir, pretrained=train is None)
    return 0


def run_sat_command(args: argparse.Namespace) -> int:
    """Supervised adversarial training (trainers/sat.py): the same command line as pre-training."""
    from robust_hub.training.sat import train_sat

    return run_pretrain_command(args, train=train_sat)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="reference-code .pt checkpoint (read with weights_only=True)")
    parser.add_argument("output", help="directory to write the Hugging Face model to")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing directory robust-hub did not write (only its own files are replaced)")


def run_convert_command(args: argparse.Namespace) -> int:
    from robust_hub.models.convert import convert_reference_checkpoint

    from robust_hub.io import claim_directory

    claim_directory(args.output, "model", overwrite=args.overwrite)  # before the work, not after it
    model = convert_reference_checkpoint(args.checkpoint)
    model.save_pretrained(args.output, metadata={"converted_from": str(args.checkpoint)}, overwrite=args.overwrite)
    print(f"model written to {args.output}")
    return 0


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model directory or Hub id")
    parser.add_argument("--revision", default=None)


def run_inspect_command(args: argparse.Namespace) -> int:
    import json

    from robust_hub.models.hub import from_pretrained

    model = from_pretrained(args.model, revision=args.revision)
    info = {"architecture": model.pretrained_cfg.get("architecture"), "num_features": model.num_features,
            "parameters": sum(p.numel() for p in model.parameters()), "dual_bn": model.dual_bn,
            "default_route": model.default_route, "model_args": model.model_args}
    print(json.dumps(info, indent=2))
    return 0


def add_card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a saved robust-hub model directory; its README.md, if any, must be a card "
                        "robust-hub wrote")
    parser.add_argument("--results", required=True, help="the --out directory of `robust-hub eval`")


def run_card_command(args: argparse.Namespace) -> int:
    from robust_hub.evaluation.card import update_card_with_results

    count = update_card_with_results(args.model, args.results)
    print(f"model card {args.model}/README.md now shows {count} evaluation result(s)")
    return 0


def add_postprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a pre-trained robust-hub backbone (directory or Hub id)")
    parser.add_argument("--out", required=True, help="directory to write the post-processed model to (must not exist)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dataset", default=None, help="training images (default: the model's pre-training data)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--clusters", type=int, default=None, help="k of k-means (default: the number of classes)")
    parser.add_argument("--linear-epochs", type=int, default=10)
    parser.add_argument("--trades-epochs", type=int, default=25)
    parser.add_argument("--n-train", type=int, default=None, help="use only the first N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")


def run_postprocess_command(args: argparse.Namespace) -> int:
    from robust_hub.training.postprocess import run_postprocess

    print(f"model written to {run_postprocess(args)}")
    return 0


def _commands() -> dict[str, tuple[str, Callable, Callable]]:
    from robust_hub.evaluation.cli import add_eval_arguments, run_eval_command
    from robust_hub.evaluation.verify import add_verify_arguments, run_verify_command
    from robust_hub.leaderboard.cli import (add_leaderboard_arguments, add_submit_arguments, run_leaderboard_command,
                                            run_submit_command)

    return {
        "pretrain": ("pre-train a backbone (single process; use `accelerate launch trainers/pretrain.py` for more)",
                     add_pretrain_arguments, run_pretrain_command),
        "convert": ("convert a reference-code .pt checkpoint to the Hugging Face format",
                    add_convert_arguments, run_convert_command),
        "postprocess": ("DynACL++: k-means pseudo-labels, a linear head and TRADES finetuning of a pre-trained backbone",
                        add_postprocess_arguments, run_postprocess_command),
        "inspect": ("print what a saved backbone is", add_inspect_arguments, run_inspect_command),
        "push": ("upload a saved backbone to the Hugging Face Hub", add_push_arguments, run_push_command),
        "eval": ("evaluate any backbone: SLF/ALF/AFF, clean, PGD-20, AutoAttack, CIFAR-10-C",
                 add_eval_arguments, run_eval_command),
        "verify": ("re-check evaluation records against their evidence (a record, an eval --out directory or a "
                   "Hub repo org/name)", add_verify_arguments, run_verify_command),
        "card": ("put the evaluation results of a model's weights into its model card",
                 add_card_arguments, run_card_command),
        "submit": ("submit a Hub model or a model directory to the leaderboard (a PENDING request pinned to a "
                   "commit, or to the sha256 of its files)",
                   add_submit_arguments, run_submit_command),
        "leaderboard": ("run the leaderboard's queue, or rebuild its page", add_leaderboard_arguments,
                        run_leaderboard_command),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="robust-hub", description="Adversarially robust self-supervised pre-training")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in _commands().items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


# Libraries that log every HTTP request (push, submit and the leaderboard make hundreds) at INFO, and
# Accelerate's checkpointing, whose INFO lines name the temporary folder a checkpoint is staged in.
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3",
                 "accelerate.accelerator", "accelerate.checkpointing")


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch (torchrun, accelerate), or a single process."""
    return os.environ.get("RANK", "0") == "0"


def configure_logging() -> None:
    """Every line once: the main process logs at INFO; under a multi-process launcher the others, which
    run the same code, only report errors and drop Python warnings. Per-request and staging lines stay out."""
    main = is_main_process()
    logging.basicConfig(level=logging.INFO if main else logging.ERROR, format=LOG_FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not main:
        warnings.simplefilter("ignore")


def run_with_errors(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; a RobustHubError becomes one ``error:`` line and exit status 2."""
    configure_logging()
    try:
        return run(args)
    except RobustHubError as error:
        if is_main_process():  # under a multi-process launcher every rank fails alike
            print(f"error: {error}", file=sys.stderr, flush=True)
        if error.after_report:
            error.after_report()
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_errors(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
