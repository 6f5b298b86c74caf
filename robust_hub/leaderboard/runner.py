"""``submit`` a Hub model and ``run`` the queue: PENDING -> RUNNING -> FINISHED, or FAILED with the reason.

A submission is untrusted input. Its id is validated, its revision resolved to a commit sha (everything after
that reads that commit only), and its files are checked before anything is downloaded: safetensors weights,
no remote code. The evaluation itself loads safetensors only and never runs remote code (evaluation.loading).
A model the suite refuses ends FAILED with the suite's one-line reason; anything else going wrong (a bug, the
machine) puts the request back to PENDING so the next run retries it, up to ``MAX_TRIES`` tries in all, after which
it ends FAILED. A runner keeps its lease while it evaluates; one killed outright stops renewing it, and the request
is taken again when the lease runs out (at once with ``--reclaim`` on the same host).
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_hub.errors import RobustHubError
from robust_hub.leaderboard.requests import (DEFAULT_LEASE_S, MAX_TRIES, Request, RequestQueue, is_local, request_id,
                                             validate_model_id)
from robust_hub.leaderboard.results import check_result, result_path, sign
from robust_hub.leaderboard.reverify import store_evidence
from robust_hub.leaderboard.store import LocalStore, Store

log = logging.getLogger(__name__)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")


def _hub_call(model_id: str, revision: str | None, call):
    from huggingface_hub.errors import (HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    from huggingface_hub.utils import httpx

    try:
        return call()
    except RevisionNotFoundError:
        raise RobustHubError(f"model {model_id!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise RobustHubError(f"model {model_id!r} does not exist on the Hub (or is private)") from None
    except OfflineModeIsEnabled:
        raise RobustHubError("cannot reach the Hub while HF_HUB_OFFLINE is set") from None
    except HfHubHTTPError as error:
        raise RobustHubError(f"the Hub refused {model_id!r}: {str(error).strip().splitlines()[0]}") from None
    except httpx.HTTPError as error:
        raise RobustHubError(f"the Hub cannot be reached ({type(error).__name__})") from None


def _check_files(label: str, files: set[str], read_config) -> dict[str, Any]:
    """What a submission would make the runner load, checked from its file list before any weights are read."""
    if "config.json" not in files:
        raise RobustHubError(f"{label} has no config.json; it is not a model robust-hub can load")
    if not any(f.endswith(".safetensors") for f in files):
        pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise RobustHubError(f"{label} has weights only as a pickle ({pickles[0]}); "
                                 "the leaderboard reads safetensors only")
        raise RobustHubError(f"{label} has no safetensors weights")
    try:
        config = json.loads(read_config())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RobustHubError(f"{label}: config.json is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise RobustHubError(f"{label}: config.json does not hold a JSON object")
    if any(k in config for k in REMOTE_CODE_KEYS) or any(f.endswith(".py") for f in files):
        raise RobustHubError(f"{label} needs remote code (auto_map or .py files); "
                             "the leaderboard never runs remote code")
    return config


def inspect_model(model_id: str, revision: str | None) -> tuple[str, dict[str, Any]]:
    """Pin ``model_id`` at ``revision`` to a commit and check what it would make the runner load."""
    from huggingface_hub import HfApi, hf_hub_download

    validate_model_id(model_id)
    info = _hub_call(model_id, revision, lambda: HfApi().model_info(model_id, revision=revision))
    commit, files = info.sha, {s.rfilename for s in info.siblings or []}
    read = lambda: Path(_hub_call(model_id, commit, lambda: hf_hub_download(model_id, "config.json",  # noqa: E731
                                                                              revision=commit))).read_bytes()
    return commit, _check_files(f"{model_id}@{commit[:12]}", files, read)


def inspect_local(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Pin a model directory to the content hash of its files (``local-sha256:HEX``) and check it like a Hub model.

    Links are refused: the hash and the evaluation must read the same files, all inside the directory.
    """
    from robust_hub.evaluation.loading import sha256_directory

    root = Path(path)
    if not root.is_dir() or root.is_symlink():
        raise RobustHubError(f"model directory {root} does not exist (or is a link)")
    entries = list(root.rglob("*"))
    links = [p for p in entries if p.is_symlink()]
    if links:
        raise RobustHubError(f"{root} holds a link ({links[0].relative_to(root)}); submit a directory of plain files")
    files = {str(p.relative_to(root)) for p in entries if p.is_file()}
    config = _check_files(str(root), files, (root / "config.json").read_bytes)
    return f"local-sha256:{sha256_directory(root)}", config


def submit(store: Store, model_id: str, revision: str | None = None) -> Request:
    """File a PENDING request for ``model_id`` pinned to the commit ``revision`` resolves to."""
    commit, _ = inspect_model(model_id, revision)
    return RequestQueue(store).submit(model_id, commit, revision or "main")


def submit_local(store: Store, path: str | Path, name: str) -> Request:
    """File a PENDING request for the model directory ``path``, shown as ``name`` (ORG/NAME), pinned to its content.

    Only a local store takes one: its runner shares this file system, and reads the directory again at run time
    (refusing it if its files changed since).
    """
    if not isinstance(store, LocalStore):
        raise RobustHubError(f"a model directory can only be submitted to a local store (not {store.location}): "
                             "its runner reads it from this file system")
    validate_model_id(name)
    commit, _ = inspect_local(path)
    return RequestQueue(store).submit(name, commit, "local directory", local_dir=str(Path(path).resolve()))


@dataclass
class EvalSettings:
    """What every leaderboard evaluation runs: passed to ``robust_hub.evaluation.runner.evaluate``."""

    protocols: str = "slf,alf,aff"
    dataset: Any = "cifar10"
    metrics: str = "clean,pgd20,autoattack"
    eps: float = 8 / 255
    options: dict = field(default_factory=dict)  # any other evaluate() keyword (n_test, eps_curve, ...)
    num_processes: int = 1  # more: each evaluation runs under `accelerate launch` over that many processes


@dataclass
class RunSummary:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retry: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # another runner took over while this one evaluated


def _self_reported(model_id: str, commit: str) -> list[dict]:
    """What the model's own card claims (model-index), kept apart and shown as self-reported."""
    from huggingface_hub import ModelCard, hf_hub_download

    try:
        path = _hub_call(model_id, commit, lambda: hf_hub_download(model_id, "README.md", revision=commit))
        card = ModelCard.load(path, ignore_metadata_errors=True)
        results = card.data.eval_results or []
    except Exception as error:  # no card, or an untrusted card that is anything at all: nothing claimed
        log.info("no self-reported results for %s: %s", model_id, error)
        return []
    out = []
    for r in results:
        if isinstance(r.metric_value, (int, float)) and not isinstance(r.metric_value, bool) \
                and math.isfinite(r.metric_value):
            out.append({"task": str(r.task_name or r.task_type), "dataset": str(r.dataset_name or r.dataset_type),
                        "metric": str(r.metric_name or r.metric_type), "value": float(r.metric_value),
                        "commit": _claimed_commit(model_id, r.source_url) or commit})
    return out


def _claimed_commit(model_id: str, source_url: object) -> str | None:
    """The commit a claim says it was measured on (its source is a commit of this repo), so the table shows that
    commit rather than the later one the card was read from (a push puts the card on top of the weights' commit)."""
    match = re.search(rf"/{re.escape(model_id)}/commit/([0-9a-f]{{40}})$", source_url) \
        if isinstance(source_url, str) else None
    return match.group(1) if match else None


class Lease:
    """A claimed request, kept: a background thread renews the lease every third of it while the evaluation runs.

    Renewing appends a RUNNING event; when that slot is taken by another runner's verified event, the lease is
    lost and this runner writes nothing more for the request.
    """

    def __init__(self, queue: RequestQueue, request: Request, lease_s: float):
        self.queue, self.request, self.lease_s, self.lost = queue, request, lease_s, False
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"lease {request.id}", daemon=True)

    def __enter__(self) -> "Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_renewing()

    def _stop_renewing(self) -> None:
        self._stop.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._stop.wait(self.lease_s / 3) and self.renew():
            pass

    def renew(self) -> bool:
        """Extend the lease now; False when it is lost. A store that cannot be reached is tried again later."""
        with self._lock:
            if not self.lost:
                try:
                    renewed = self.queue.renew(self.request, self.lease_s)
                except Exception as error:  # the store is down for now: the lease still has time left
                    log.warning("could not renew the lease of %s: %s", self.request.id, error)
                    return True
                self.lost = renewed is None
                self.request = renewed or self.request
            return not self.lost

    def end(self, state: str, **details) -> bool:
        """Write the request's outcome; False when the lease was lost (then another runner owns it)."""
        self._stop_renewing()
        with self._lock:
            if not self.lost:
                self.lost = self.queue.append(self.request, state, **details) is None
            return not self.lost


def run_queue(store: Store, key: bytes, settings: EvalSettings, work_dir: str | Path, *,
              lease_s: float = DEFAULT_LEASE_S, reclaim: bool = False) -> RunSummary:
    """Evaluate every claimable request (PENDING, or RUNNING by a runner that is gone; see Request.claimable).

    One request going wrong never stops the queue: its error ends it (FAILED, or PENDING for another of its
    ``MAX_TRIES`` tries) and the runner goes on with the next; an error of the store itself is reported in ``retry``.
    """
    queue, summary = RequestQueue(store, key), RunSummary()
    requests, _ = queue.all()
    for request in requests:
        try:
            _take(queue, request, settings, Path(work_dir), lease_s, reclaim, summary)
        except Exception as error:  # the store itself failing, or a bug here: report, go on
            summary.retry[request.id] = f"{type(error).__name__}: {error}"
            log.exception("request %s could not be handled", request.id)
    return summary


def _take(queue: RequestQueue, request: Request, settings: EvalSettings, work_dir: Path, lease_s: float,
          reclaim: bool, summary: RunSummary) -> None:
    if request.state == "MALFORMED":
        if queue.append(request, "FAILED", reason=request.problem):
            summary.failed[request.id] = request.problem
        return
    if not request.claimable(reclaim):
        return
    if request.tries >= MAX_TRIES:  # each earlier runner died on it (killed, out of memory): stop trying
        reason = f"tried {request.tries} times and never finished (last error: {request.reason or 'runner gone'})"
        if queue.append(request, "FAILED", reason=reason):
            summary.failed[request.id] = reason
        return
    claimed = queue.claim(request, lease_s)
    if claimed is None:
        return  # another runner took it
    log.info("evaluating %s at %s (try %d)", claimed.model_id, claimed.commit, claimed.tries)
    with Lease(queue, claimed, lease_s) as lease:
        state, details = _evaluate(queue.store, queue.key, claimed, settings, work_dir / claimed.id, lease)
        if state is None or not lease.end(state, **details):
            summary.lost.append(claimed.id)
            log.warning("request %s was taken over by another runner; its outcome here is dropped", claimed.id)
        elif state == "FINISHED":
            summary.finished.append(claimed.id)
        elif state == "FAILED":
            summary.failed[claimed.id] = details["reason"]
        else:
            summary.retry[claimed.id] = details["last_error"]


def _evaluate(store: Store, key: bytes, request: Request, settings: EvalSettings, out: Path,
              lease: Lease) -> tuple[str | None, dict]:
    """Run the evaluation and file its results: the outcome event to write (None: the lease was lost)."""
    from robust_hub.evaluation.launch import evaluate_launched
    from robust_hub.evaluation.runner import evaluate

    try:
        model, revision = _pinned_source(store, request)
        kwargs = dict(revision=revision, name=request.model_id, out_dir=out, protocols=settings.protocols,
                      dataset=settings.dataset, metrics=settings.metrics, eps=settings.eps, progress=False,
                      print_table=False, **settings.options)
        # several processes: the same evaluation as a child under accelerate launch; the lease is renewed meanwhile
        records = (evaluate(model, **kwargs) if settings.num_processes == 1
                   else evaluate_launched(model, settings.num_processes, **kwargs))
        for record in records:
            if request_id(record["model"]["id"], record["model"]["revision"]) != request.id:
                raise RobustHubError(f"the evaluation loaded {record['model']['id']}@{record['model']['revision']}, "
                                     "not the requested commit")
        if not lease.renew():  # only the runner holding the request files its results
            return None, {}
        for record in records:
            path = result_path(record, request.id)
            store_evidence(store, out, record, path)  # first, so no result points at evidence not yet there
            if not store.create(path, sign(record, request.id, key), message=f"{request.id}: result"):
                _check_existing(store, path, key)  # an earlier try of this request wrote it, or someone else did
        claims = [] if is_local(request.commit) else _self_reported(request.model_id, request.commit)
        shutil.rmtree(out, ignore_errors=True)
        return "FINISHED", {"records": len(records), "self_reported": claims}
    except RobustHubError as error:
        log.warning("request %s FAILED: %s", request.id, error)
        return "FAILED", {"reason": str(error)}
    except Exception as error:  # maybe not the model's fault: try again, a bounded number of times
        reason = f"{type(error).__name__}: {error}"
        log.exception("request %s crashed on try %d", request.id, request.tries)
        if request.tries >= MAX_TRIES:
            return "FAILED", {"reason": f"crashed on each of {request.tries} tries; last: {reason}"}
        return "PENDING", {"last_error": reason}


def _pinned_source(store: Store, request: Request) -> tuple[str, str | None]:
    """What to load for ``request``, checked again now: the Hub commit, or the local directory if still unchanged."""
    if not is_local(request.commit):
        commit, _ = inspect_model(request.model_id, request.commit)
        return request.model_id, commit
    if not isinstance(store, LocalStore):  # anyone can file a request in a shared store: never read their paths
        raise RobustHubError("a request for a local directory in a store that is not local; refused")
    local_dir = request.event["local_dir"]
    commit, _ = inspect_local(local_dir)
    if commit != request.commit:
        raise RobustHubError(f"{local_dir} changed since it was submitted (content {commit[13:25]}, submitted "
                             f"{request.commit[13:25]}); submit it again")
    return "local-dir:" + local_dir, None


def _check_existing(store: Store, path: str, key: bytes) -> None:
    try:
        check_result(store.read(path), path, key)
    except RobustHubError as error:
        raise RobustHubError(f"{path} is already in the store and was not written by this leaderboard ({error})") from None
