"""``robust-hub verify RECORD|DIR|org/name``: re-check records against their evidence (see evidence.py).

A record JSON file has its evidence beside it; an eval ``--out`` directory is every record in it; a Hub model
repo is every record ``push --results`` published there (``eval_records/*.json``), checked against the model at
the commit it was published for, with the evidence files uploaded beside them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable, Iterator

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.records import EVIDENCE_DIR, read_json

Check = tuple[str, dict, Callable[[str], Path], Callable | None]  # (name, record, fetch, model_loader)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a record JSON file, a `robust-hub eval --out` directory, or a Hub model "
                        "repo org/name whose results were pushed with `push --results`")
    parser.add_argument("--revision", default=None, help="Hub revision to read the records from (default main)")
    parser.add_argument("--dataset", default=None, metavar="SOURCE", help="load the test set from here instead of "
                        "the source the record names (a local copy, say); its fingerprint must still be the record's")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def run_verify_command(args: argparse.Namespace) -> int:
    from robust_hub.evaluation.evidence import VerifyReport, load_test_set, verify_record
    from robust_hub.evaluation.validate import resolve_device

    device = resolve_device(args.device)
    failed: list[tuple[str, VerifyReport]] = []
    checks = list(_checks(args.source, args.revision))
    if not checks:
        raise RobustHubError(f"{args.source} holds no evaluation records")
    for name, record, fetch, loader in checks:
        print(f"{name}: {record['protocol']['name']} on {record['dataset']['source']}, "
              f"{record['model']['id']}@{record['model']['revision'][:19]}")
        try:
            report = verify_record(record, fetch, device=device, model_loader=loader,
                                   dataset_loader=lambda r: load_test_set(r, args.dataset))
        except RobustHubError as exc:
            report = VerifyReport(False, [str(exc)], [])
        print(format_report(report))
        if not report.ok:
            failed.append((name, report))
    if failed:
        name, report = failed[0]
        images = sorted({i for _, r in failed for i in r.images})
        named = ", ".join(map(str, images)) or "none named"
        raise RobustHubError(f"{len(failed)} of {len(checks)} record(s) disagree with their evidence ({name}: "
                             f"{report.problems[0]}); disagreeing images: {named}")
    print(f"verified: {len(checks)} record(s) agree with their evidence")
    return 0


def format_report(report) -> str:
    lines = []
    for metric, c in report.checked.items():
        kind = "recomputed" if metric == "clean" else "bound"
        agree = abs(c["record"] - c["bound"]) <= 0.5 / c["n"]
        lines.append(f"  {metric:<26} record {c['record']:.4f}  {kind} {c['bound']:.4f}  "
                     f"({c['examples']} examples, {c['n']} images)  {'ok' if agree else 'DISAGREES'}")
    lines += [f"  problem: {p}" for p in report.problems]
    return "\n".join(lines)


def _checks(source: str, revision: str | None) -> Iterator[Check]:
    path = Path(source)
    if path.is_file():
        yield path.name, _record_json(path), local_fetch(path.parent), None
    elif path.is_dir():
        for record_path in sorted(path.glob("*.json")):
            yield record_path.name, _record_json(record_path), local_fetch(path), None
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith("."):
        yield from _hub_checks(source, revision)
    else:
        raise RobustHubError(f"{source} is neither a record file, a results directory nor a Hub repo id org/name")


def _record_json(path: Path) -> dict:
    record = read_json(path)
    if not isinstance(record, dict):
        raise RobustHubError(f"{path} is not an evaluation record")
    return record


def local_fetch(base: Path) -> Callable[[str], Path]:
    """Files under ``base/evidence``, never through a link (the file itself is opened without following one)."""
    def fetch(relative: str) -> Path:
        if (base / EVIDENCE_DIR).is_symlink():
            raise RobustHubError(f"{base / EVIDENCE_DIR} is a symbolic link; evidence is read only from inside {base}")
        return base / relative
    return fetch


def _hub_checks(repo_id: str, revision: str | None) -> Iterator[Check]:
    from huggingface_hub import HfApi, hf_hub_download

    from robust_hub.evaluation.loading import load_backbone
    from robust_hub.publishing import RECORDS_DIR

    try:
        api = HfApi()
        sha = api.model_info(repo_id, revision=revision).sha
        names = sorted(f for f in api.list_repo_files(repo_id, revision=sha)
                       if re.fullmatch(rf"{RECORDS_DIR}/[^/]+\.json", f))
        entries = [(name, read_json(hf_hub_download(repo_id, name, revision=sha))) for name in names]
    except RobustHubError:
        raise
    except Exception as exc:  # huggingface_hub raises many types: no repo, no revision, unreachable
        raise RobustHubError(f"cannot read the results of {repo_id!r} at {revision or 'main'} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None

    def fetch(relative: str) -> Path:
        """The blob itself: the Hub cache links each snapshot file to its blob, which only the cache wrote."""
        from huggingface_hub import constants

        blob = Path(hf_hub_download(repo_id, relative, revision=sha)).resolve()
        if not blob.is_relative_to(Path(constants.HF_HUB_CACHE).resolve()):
            raise RobustHubError(f"{relative}: the Hub cache points outside itself ({blob})")
        return blob

    for name, entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("record"), dict)
                and isinstance(entry.get("model_commit"), str)):
            raise RobustHubError(f"{repo_id}: {name} is not a published evaluation record")
        commit = entry["model_commit"]
        yield (f"{repo_id}/{name}", entry["record"], fetch,
               lambda record, commit=commit: load_backbone(repo_id, revision=commit))


def main(argv: list[str] | None = None) -> int:
    from robust_hub.cli import OneLineParser, run_with_errors

    parser = OneLineParser(prog="robust-hub verify", description="Re-check records against their evidence.")
    add_verify_arguments(parser)
    return run_with_errors(run_verify_command, parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
