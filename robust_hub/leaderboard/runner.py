"""``submit`` a Hub model and ``run`` the queue: PENDING -> RUNNING -> FINISHED, or FAILED with the reason.

A submission is untrusted input. Its id is validated, its revision resolved to a commit sha (everything after
that reads that commit only), and its files are checked before anything is downloaded: safetensors weights,
no remote code. The evaluation itself loads safetensors only and never runs remote code (evaluation.loading).
A model the suite refuses ends FAILED with the suite's one-line reason; anything else going wrong (a bug, the
machine) puts the request back to PENDING so the next run retries it, and a runner killed outright leaves a
RUNNING lease that expires.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robust_hub.errors import RobustHubError
from robust_hub.leaderboard.requests import DEFAULT_LEASE_S, Request, RequestQueue, request_id, validate_model_id
from robust_hub.leaderboard.results import check_result, sign
from robust_hub.leaderboard.store import Store

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


def inspect_model(model_id: str, revision: str | None) -> tuple[str, dict[str, Any]]:
    """Pin ``model_id`` at ``revision`` to a commit and check what it would make the runner load."""
    from huggingface_hub import HfApi, hf_hub_download

    validate_model_id(model_id)
    info = _hub_call(model_id, revision, lambda: HfApi().model_info(model_id, revision=revision))
    commit, files = info.sha, {s.rfilename for s in info.siblings or []}
    if "config.json" not in files:
        raise RobustHubError(f"{model_id}@{commit[:12]} has no config.json; it is not a model robust-hub can load")
    if not any(f.endswith(".safetensors") for f in files):
        pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise RobustHubError(f"{model_id}@{commit[:12]} has weights only as a pickle ({pickles[0]}); "
                                 "the leaderboard reads safetensors only")
        raise RobustHubError(f"{model_id}@{commit[:12]} has no safetensors weights")
    path = _hub_call(model_id, commit, lambda: hf_hub_download(model_id, "config.json", revision=commit))
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RobustHubError(f"{model_id}@{commit[:12]}: config.json is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise RobustHubError(f"{model_id}@{commit[:12]}: config.json does not hold a JSON object")
    if any(k in config for k in REMOTE_CODE_KEYS) or any(f.endswith(".py") for f in files):
        raise RobustHubError(f"{model_id}@{commit[:12]} needs remote code (auto_map or .py files); "
                             "the leaderboard never runs remote code")
    return commit, config


def submit(store: Store, model_id: str, revision: str | None = None) -> Request:
    """File a PENDING request for ``model_id`` pinned to the commit ``revision`` resolves to."""
    commit, _ = inspect_model(model_id, revision)
    return RequestQueue(store).submit(model_id, commit, revision or "main")


@dataclass
class EvalSettings:
    """What every leaderboard evaluation runs: passed to ``robust_hub.evaluation.runner.evaluate``."""

    protocols: str = "slf,alf,aff"
    dataset: Any = "cifar10"
    metrics: str = "clean,pgd20,autoattack"
    eps: float = 8 / 255
    options: dict = field(default_factory=dict)  # any other evaluate() keyword (n_test, eps_curve, ...)


@dataclass
class RunSummary:
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retry: dict[str, str] = field(default_factory=dict)


def _self_reported(model_id: str, commit: str) -> list[dict]:
    """What the model's own card claims (model-index), kept apart and shown as self-reported."""
    from huggingface_hub import ModelCard, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = _hub_call(model_id, commit, lambda: hf_hub_download(model_id, "README.md", revision=commit))
    except (EntryNotFoundError, RobustHubError) as error:  # no card, or none readable: nothing claimed
        log.info("no self-reported results for %s: %s", model_id, error)
        return []
    try:
        card = ModelCard.load(path, ignore_metadata_errors=True)
    except (ValueError, UnicodeDecodeError) as error:  # an untrusted card's front matter may be anything
        log.info("unreadable card for %s: %s", model_id, error)
        return []
    out = []
    for r in card.data.eval_results or []:
        if isinstance(r.metric_value, (int, float)) and not isinstance(r.metric_value, bool):
            out.append({"task": r.task_name or r.task_type, "dataset": r.dataset_name or r.dataset_type,
                        "metric": r.metric_name or r.metric_type, "value": float(r.metric_value)})
    return out


def run_queue(store: Store, key: bytes, settings: EvalSettings, work_dir: str | Path, *,
              lease_s: int = DEFAULT_LEASE_S, reclaim: bool = False) -> RunSummary:
    """Evaluate every claimable request (PENDING, or RUNNING with an expired lease; all RUNNING with ``reclaim``)."""
    from robust_hub.evaluation.records import record_filename
    from robust_hub.evaluation.runner import evaluate

    queue, summary = RequestQueue(store), RunSummary()
    requests, malformed = queue.all()
    for rid, reason in malformed.items():
        if queue.fail_malformed(rid, reason):
            log.warning("request %s is malformed: %s", rid, reason)
            summary.failed[rid] = f"malformed request: {reason}"
    for request in requests:
        if not (request.state == "PENDING" or (request.state == "RUNNING" and (reclaim or request.lease_expired))):
            continue
        claimed = queue.claim(request, lease_s)
        if claimed is None:
            continue  # another runner took it
        log.info("evaluating %s at %s", request.model_id, request.commit)
        out = Path(work_dir) / request.id
        try:
            commit, _ = inspect_model(request.model_id, request.commit)
            records = evaluate(request.model_id, revision=commit, out_dir=out, protocols=settings.protocols,
                               dataset=settings.dataset, metrics=settings.metrics, eps=settings.eps,
                               progress=False, print_table=False, **settings.options)
            for record in records:
                if request_id(record["model"]["id"], record["model"]["revision"]) != request.id:
                    raise RobustHubError(f"the evaluation loaded {record['model']['id']}@{record['model']['revision']}, "
                                         "not the requested commit")
            for record in records:
                path = f"results/{request.id}/{record_filename(tuple(_key(record)))}"
                if not store.create(path, sign(record, request.id, key), message=f"{request.id}: result"):
                    _check_existing(store, path, key)  # an earlier try of this request wrote it, or someone else did
            claimed_reported = _self_reported(request.model_id, commit)
            queue.transition(claimed, "FINISHED", records=len(records), self_reported=claimed_reported)
            summary.finished.append(request.id)
            shutil.rmtree(out, ignore_errors=True)
        except RobustHubError as error:
            queue.transition(claimed, "FAILED", reason=str(error))
            summary.failed[request.id] = str(error)
            log.warning("request %s FAILED: %s", request.id, error)
        except Exception as error:  # not the model's fault: leave it for the next run
            reason = f"{type(error).__name__}: {error}"
            queue.transition(claimed, "PENDING", last_error=reason)
            summary.retry[request.id] = reason
            log.exception("request %s crashed; it is PENDING again", request.id)
    return summary


def _check_existing(store: Store, path: str, key: bytes) -> None:
    try:
        check_result(store.read(path), path, key)
    except RobustHubError as error:
        raise RobustHubError(f"{path} is already in the store and was not written by this leaderboard ({error})") from None


def _key(record: dict) -> tuple:
    from robust_hub.evaluation.records import record_key

    return record_key(record["model"]["id"], record["model"]["revision"], record["protocol"]["name"],
                      record["dataset"]["source"], record["metric_set"], record["threat"]["norm"],
                      record["threat"]["eps"])
