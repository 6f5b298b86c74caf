"""``robust-hub submit`` and ``robust-hub leaderboard run|build``."""

from __future__ import annotations

import argparse
import os

from robust_hub.errors import RobustHubError

STORE_ENV = "ROBUST_HUB_LEADERBOARD_STORE"


def _store_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=os.environ.get(STORE_ENV),
                        help=f"leaderboard store: a directory or hf://datasets/ORG/NAME (default ${STORE_ENV}, "
                        "no default when unset)")


def _open(args: argparse.Namespace):
    from robust_hub.leaderboard.store import open_store

    if not args.store:
        raise RobustHubError(f"no leaderboard store: give --store DIR|hf://datasets/ORG/NAME or set {STORE_ENV}")
    return open_store(args.store)


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hub model id ORG/NAME, or a model directory (an existing directory wins); "
                        "safetensors weights, no remote code")
    parser.add_argument("--revision", default=None, help="Hub model: branch, tag or commit (pinned to its commit; "
                        "default main)")
    parser.add_argument("--name", default=None, help="model directory: the ORG/NAME the leaderboard shows it as "
                        "(required; it is pinned to the sha256 of its files, not to a commit)")
    _store_argument(parser)


def run_submit_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robust_hub.leaderboard.runner import submit, submit_local

    store = _open(args)
    if not Path(args.model).is_dir():
        if args.name is not None:
            raise RobustHubError(f"--name is for a model directory; {args.model!r} is not one "
                                 "(a Hub model keeps its id)")
        request = submit(store, args.model, args.revision)
        print(f"submitted {request.model_id} at commit {request.commit}: request {request.id} is PENDING")
        return 0
    if args.revision is not None:
        raise RobustHubError(f"--revision is for a Hub model; {args.model} is a directory (pinned to its content)")
    if args.name is None:
        raise RobustHubError(f"{args.model} is a directory: give the name to show it as with --name ORG/NAME")
    request = submit_local(store, args.model, args.name)
    print(f"submitted {args.model} as {request.model_id}, pinned to the content of its files "
          f"({request.commit[:25]}; change a file and it must be submitted again): request {request.id} is PENDING")
    return 0


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="evaluate pending requests, then rebuild the page",
                         description="Evaluate every pending request in the store, then rebuild the page. The defaults "
                         "are the papers' full protocols (hours per model on a CPU); --protocols, --n-train, --n-test, "
                         "--n-autoattack and --epochs make a quick run.")
    build = sub.add_parser("build", help="rebuild the page from the store", description="Rebuild the page from the "
                           "store's verified results.")
    for p in (run, build):
        _store_argument(p)
        p.add_argument("--site", required=True, help="directory to write index.html and leaderboard.md to (new, empty "
                       "or an earlier page)")
        p.add_argument("--overwrite", action="store_true", help="write the page into a directory robust-hub did not "
                       "make (only index.html and leaderboard.md are replaced; default: off)")
        p.add_argument("--space", default=None, metavar="ORG/NAME", help="also publish the page as a static Hugging "
                       "Face Space (created if needed; refused if it holds files robust-hub did not write; "
                       "default: none)")
        p.add_argument("--key-file", default=None, help="the leaderboard's signing key (default $ROBUST_HUB_LEADERBOARD_KEY, "
                       "else ~/.config/robust-hub/leaderboard.key, made by the first run)")
    run.add_argument("--work-dir", default="leaderboard_work", help="scratch space for evaluations in progress "
                     "(default ./%(default)s)")
    run.add_argument("--protocols", default="slf,alf,aff", help="comma-separated: slf, alf, aff (default %(default)s)")
    run.add_argument("--dataset", default="cifar10", help="evaluation dataset (default %(default)s)")
    run.add_argument("--metrics", default="clean,pgd20,autoattack", help="comma-separated: clean, pgd20, autoattack, "
                     "c10c (default %(default)s)")
    run.add_argument("--eps", default="8/255", help="L-inf attack radius (default %(default)s)")
    run.add_argument("--eps-curve", default="", help="comma-separated eps values for an accuracy-vs-eps curve "
                     "(default: none)")
    run.add_argument("--epochs", type=int, default=None, help="override every protocol's finetuning epochs "
                     "(default: each protocol's own, 25)")
    run.add_argument("--n-train", type=int, default=None, help="finetune on the first N training images "
                     "(default: all)")
    run.add_argument("--n-test", type=int, default=None, help="evaluate on the first N test images (default: all)")
    run.add_argument("--n-autoattack", type=int, default=None, help="run AutoAttack on the first N test images "
                     "(default: all of --n-test)")
    run.add_argument("--c10c-generate", action="store_true", help="measure CIFAR-10-C on a generated set "
                     "(default: off)")
    run.add_argument("--c10c-n-per-severity", type=int, default=None, help="CIFAR-10-C images per severity "
                     "(default: all)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default %(default)s)")
    run.add_argument("--num-processes", type=int, default=1, help="evaluate each submission over N processes with "
                     "accelerate launch, e.g. one per GPU (same records as one process; default %(default)s)")
    run.add_argument("--reclaim", action="store_true", help="also take RUNNING requests whose runner ran on this host "
                     "and has exited, without waiting for its lease to run out (default: off)")
    run.add_argument("--lease", type=float, default=None, help="seconds a runner holds a request without renewing "
                     "(renewed every third of it while evaluating; default 1800)")


def _count(n: int | None, what: str) -> str:
    return f"all {what}" if n is None else f"the first {n} {what}"


def describe_run(args: argparse.Namespace, store_location: str) -> str:
    """What ``leaderboard run`` is about to do, and where: printed once before it starts."""
    from pathlib import Path

    from robust_hub.leaderboard.results import KEY_ENV, default_key_file

    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    epochs = "each protocol's own epochs (25)" if args.epochs is None else f"{args.epochs} epoch(s)"
    if os.environ.get(KEY_ENV):
        key = f"signing key from ${KEY_ENV}"
    else:
        path = Path(args.key_file) if args.key_file else default_key_file()
        key = f"signing key {path}" + ("" if path.is_file() else " (created now, readable only by you)")
    return "\n".join([
        f"leaderboard run: every pending request in {store_location}, one at a time",
        f"  protocols {', '.join(protocols)} ({epochs}); metrics {args.metrics} at eps {args.eps} on {args.dataset}",
        f"  finetuning on {_count(args.n_train, 'training images')}; testing on {_count(args.n_test, 'test images')}; "
        f"AutoAttack on {_count(args.n_autoattack, 'test images' if args.n_test is None else 'of those')}",
        f"  work directory {Path(args.work_dir).resolve()}; {key}",
        *([f"  each evaluation over {args.num_processes} processes (accelerate launch)"]
          if args.num_processes > 1 else []),
        f"  then the page: {Path(args.site).resolve()}/index.html",
    ])


def _settings(args: argparse.Namespace):
    from robust_hub.config import parse_fraction
    from robust_hub.leaderboard.runner import EvalSettings

    try:
        eps = parse_fraction(args.eps)
        curve = [parse_fraction(e) for e in args.eps_curve.split(",") if e.strip()]
    except (ValueError, ZeroDivisionError):
        raise RobustHubError(f"--eps/--eps-curve must be numbers or fractions like 8/255 (got {args.eps!r}, "
                             f"{args.eps_curve!r})") from None
    options = {k: getattr(args, k) for k in ("n_train", "n_test", "n_autoattack", "c10c_n_per_severity")
               if getattr(args, k) is not None}
    options.update(eps_curve=curve, c10c_generate=args.c10c_generate, device=args.device)
    if args.epochs is not None:
        options["protocol_overrides"] = {"epochs": args.epochs}
    if args.num_processes < 1:
        raise RobustHubError(f"--num-processes must be at least 1 (got {args.num_processes})")
    return EvalSettings(args.protocols, args.dataset, args.metrics, eps, options, args.num_processes)


def _positive(value: float, flag: str) -> float:
    if not value > 0 or value == float("inf"):
        raise RobustHubError(f"{flag} must be a positive number of seconds (got {value})")
    return value


def run_leaderboard_command(args: argparse.Namespace) -> int:
    from robust_hub.leaderboard.render import build_site, check_site
    from robust_hub.leaderboard.results import load_key
    from robust_hub.leaderboard.runner import run_queue

    check_site(args.site, args.overwrite)  # before any evaluation runs
    if args.space:
        from robust_hub.leaderboard.space import check_space

        check_space(args.space)
    store = _open(args)
    status = 0
    if args.action == "run":
        settings = _settings(args)
        print(describe_run(args, store.location), flush=True)
        lease = {} if args.lease is None else {"lease_s": _positive(args.lease, "--lease")}
        summary = run_queue(store, load_key(args.key_file, create=True), settings, args.work_dir, reclaim=args.reclaim,
                            **lease)
        for rid in summary.finished:
            print(f"FINISHED {rid}")
        for rid, reason in summary.failed.items():
            print(f"FAILED {rid}: {reason}")
        for rid, reason in summary.retry.items():
            print(f"PENDING again (crashed, will be retried) {rid}: {reason}")
        for rid in summary.lost:
            print(f"taken over by another runner while evaluating {rid}: its outcome here was dropped")
        status = 1 if summary.retry else 0
    board = build_site(store, load_key(args.key_file), args.site, overwrite=args.overwrite)
    for path, reason in board.rejected.items():
        print(f"warning: rejected {path}: {reason}")
    rows = [row for table in board.tables for row in table.rows]
    for row in rows:
        if row.evidence.state in ("failed", "unchecked"):
            print(f"warning: {row.model_id} ({row.short_commit}): {row.evidence.text()}")
    reverified = sum(row.evidence.state == "verified" for row in rows)
    print(f"leaderboard written to {args.site}/index.html ({len(board.tables)} table(s), {len(rows)} verified row(s), "
          f"{reverified} with evidence re-verified)")
    if args.space:
        from robust_hub.leaderboard.space import publish_space

        print(f"published to the Space {publish_space(args.site, args.space)}")
    return status
