"""Evidence in the leaderboard's store: filed with each result by the runner, re-verified on every build.

A record names its evidence files as ``evidence/<sha256>.safetensors`` (relative to its evaluation directory);
the runner files them at that same path in the store, before the result itself, so the path a record names is
its store path and results share identical files (content-addressed). ``leaderboard build`` gives each
result with evidence to :func:`robust_hub.evaluation.evidence.verify_record`, which treats the files as untrusted
(safetensors only, sizes, shapes, dtypes and hashes checked); the store hands them over without following a link.
A verification is cached under the hash of the record, which names every evidence file by its sha256 (and, for a
local directory, of the directory's files now), so a rebuild redoes only new results.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.records import evidence_files
from robust_hub.leaderboard.requests import Request, is_local
from robust_hub.leaderboard.results import VerifiedResult
from robust_hub.leaderboard.store import LocalStore, Store

log = logging.getLogger(__name__)
# Bump when what a verification checks changes: cached verdicts of the old checks are then redone.
CHECK_VERSION = "reverify-v1"
SHOWN_IMAGES = 10


def store_evidence(store: Store, out_dir: Path, record: dict, result_file: str) -> None:
    """File the evidence of ``record`` (written by the evaluation under ``out_dir``) in the store, for ``result_file``.

    Content-addressed: a file already there (another result's, or an earlier try's) is kept when it holds what its
    name says; one that does not was not written by this leaderboard, and the request fails rather than point at it.
    """
    for entry in evidence_files(record):
        data = (out_dir / entry["path"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise RobustHubError(f"{entry['path']} in {out_dir} does not hold what its record names")
        path = entry["path"]
        if not store.create(path, data, message=f"evidence for {result_file}") \
                and hashlib.sha256(store.read(path)).hexdigest() != entry["sha256"]:
            raise RobustHubError(f"{path} is already in the store and does not hold what its name says")


@dataclass(frozen=True)
class EvidenceStatus:
    """What a build found for one row: ``verified``, ``failed``, ``none`` (no evidence) or ``unchecked``."""

    state: str
    date: str = ""  # when the evidence was verified (verified, failed)
    images: tuple[int, ...] = ()  # test images whose example or prediction disagrees (failed)
    problems: tuple[str, ...] = ()

    def text(self) -> str:
        if self.state == "verified":
            return f"re-verified {self.date[:10]}"
        if self.state == "none":
            return "no evidence"
        if self.state == "unchecked":
            return f"not re-verified: {self.problems[0]}"
        if not self.images:
            return f"evidence failed: {self.problems[0]}"
        shown = ", ".join(map(str, self.images[:SHOWN_IMAGES]))
        more = f" and {len(self.images) - SHOWN_IMAGES} more" if len(self.images) > SHOWN_IMAGES else ""
        return f"evidence failed: image{'s' if len(self.images) > 1 else ''} {shown}{more}"


NO_EVIDENCE = EvidenceStatus("none")
Verifier = Callable[..., Any]  # verify_record's signature: (record, fetch, *, model_loader, dataset_loader)


class EvidenceChecker:
    """Re-verify a result's evidence from the store, once per record (cached under ``cache_dir``)."""

    def __init__(self, store: Store, requests: dict[str, Request], *, verifier: Verifier | None = None,
                 cache_dir: str | Path | None = None, dataset_loader: Callable | None = None):
        from robust_hub.cache import cache_home

        self.store, self.requests = store, requests
        self.verifier = verifier
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_home() / "leaderboard-verified"
        self.dataset_loader = dataset_loader or load_test_set

    def __call__(self, result: VerifiedResult) -> EvidenceStatus:
        """The row's status; never raises (one result's trouble must not stop the build)."""
        if not result.record.get("evidence"):
            return NO_EVIDENCE
        cache_file = self.cache_dir / f"{_cache_key(result.record, self._local_content(result))}.json"
        cached = _read_cached(cache_file)
        if cached is not None:
            return cached
        try:
            status = self._verify(result)
        except RobustHubError as error:
            return EvidenceStatus("unchecked", problems=(str(error),))
        except Exception as error:  # a bug or the machine: say so on the row, go on with the build
            log.exception("re-verifying %s failed", result.path)
            return EvidenceStatus("unchecked", problems=(f"{type(error).__name__}: {error}",))
        _write_cached(cache_file, status)
        return status

    def _verify(self, result: VerifiedResult) -> EvidenceStatus:
        from robust_hub.evaluation.evidence import verify_record

        verifier = self.verifier or verify_record
        report = verifier(result.record, self.store.local_path,
                          model_loader=self._model_loader(result), dataset_loader=self.dataset_loader)
        date = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if report.ok:
            return EvidenceStatus("verified", date)
        return EvidenceStatus("failed", date, tuple(report.images), tuple(report.problems))

    def _local_content(self, result: VerifiedResult) -> str:
        """The current sha256 of a local directory's files (a Hub commit cannot change; a directory can)."""
        request = self.requests.get(result.request_id)
        if not is_local(result.record["model"]["revision"]) or request is None or "local_dir" not in request.event:
            return ""
        from robust_hub.evaluation.loading import sha256_directory

        try:
            return sha256_directory(Path(request.event["local_dir"]))
        except (OSError, RobustHubError):  # gone: verifying says so, and nothing cached matches
            return ""

    def _model_loader(self, result: VerifiedResult) -> Callable | None:
        """A local directory is reloaded from where its request says it is (only in a local store, as the runner
        does); a Hub model by its pinned commit, verify_record's default."""
        if not is_local(result.record["model"]["revision"]):
            return None
        request = self.requests.get(result.request_id)
        if not isinstance(self.store, LocalStore) or request is None or "local_dir" not in request.event:
            raise RobustHubError("a local directory's result can be re-verified only from a local store that holds "
                                 "its request")
        from robust_hub.evaluation.loading import load_backbone

        return lambda record: load_backbone("local-dir:" + request.event["local_dir"])


def load_test_set(record: dict):
    """The record's test subset, as ``robust-hub verify`` loads it (imported late: torch is heavy for the CLI)."""
    from robust_hub.evaluation.evidence import load_test_set as load

    return load(record)


def _cache_key(record: dict, model_content: str) -> str:
    text = json.dumps([CHECK_VERSION, record, model_content], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _read_cached(path: Path) -> EvidenceStatus | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        status = EvidenceStatus(data["state"], data["date"], tuple(data["images"]), tuple(data["problems"]))
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: verify again
        return None
    return status if status.state in ("verified", "failed") else None


def _write_cached(path: Path, status: EvidenceStatus) -> None:
    from robust_hub.io import write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, asdict(status))
    except OSError as error:  # only the next build is slower
        log.warning("could not cache the verification in %s: %s", path, error)
