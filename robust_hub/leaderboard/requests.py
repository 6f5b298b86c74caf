"""Evaluation requests: an append-only event log per request, pinned to one model commit.

A request's id is ``ORG--NAME--COMMIT``, so two submissions of the same commit are the same request: the
second finds the first's ``PENDING`` event already there and is told it is a duplicate. Every state change is a
new event file ``requests/ID/NNNN-STATE.json`` written with the store's exclusive ``create``; two runners
claiming the same request race for the same ``NNNN`` and exactly one gets it. A ``RUNNING`` event holds a lease:
when the runner dies, the lease runs out and the request can be claimed again.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from robust_hub.errors import RobustHubError
from robust_hub.leaderboard.store import Store

STATES = ("PENDING", "RUNNING", "FINISHED", "FAILED")
# The Hub's own rules for a namespace and a repository name, applied strictly: no path-like ids.
NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
EVENT = re.compile(r"^requests/([^/]+)/(\d{4})-(PENDING|RUNNING|FINISHED|FAILED)\.json$")
DEFAULT_LEASE_S = 6 * 3600


def validate_model_id(model_id: Any) -> str:
    """An ``ORG/NAME`` Hub model id, or a RobustHubError saying what is wrong with it."""
    if not isinstance(model_id, str) or model_id.count("/") != 1:
        raise RobustHubError(f"invalid model id {model_id!r}: a submission names a Hub model as ORG/NAME")
    for part in model_id.split("/"):
        if not NAME.fullmatch(part) or ".." in part or "--" in part:
            raise RobustHubError(f"invalid model id {model_id!r}: ORG and NAME are letters, digits, '-', '_' and '.' "
                                 "(no path-like ids, no '..' or '--')")
    return model_id


def request_id(model_id: str, commit: str) -> str:
    return f"{model_id.replace('/', '--')}--{commit}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Request:
    """A request as its latest event says it is."""

    id: str
    model_id: str
    commit: str
    requested_revision: str
    state: str
    seq: int
    event: dict

    @property
    def lease_expired(self) -> bool:
        until = self.event.get("lease_until")
        return self.state == "RUNNING" and until is not None and datetime.fromisoformat(until) < _now()


def _check_event(rid: str, event: Any, state: str) -> dict:
    """A malformed event is a RobustHubError naming what is wrong."""
    if not isinstance(event, dict):
        raise RobustHubError("the request is not a JSON object")
    model_id = validate_model_id(event.get("model_id"))
    commit = event.get("commit")
    if not isinstance(commit, str) or not COMMIT.fullmatch(commit):
        raise RobustHubError(f"the request's commit {commit!r} is not a 40-hex commit sha")
    if request_id(model_id, commit) != rid:
        raise RobustHubError(f"the request names {model_id}@{commit[:12]} but is filed as {rid}")
    if event.get("state") != state:
        raise RobustHubError(f"the event file says {state} but holds state {event.get('state')!r}")
    return event


class RequestQueue:
    def __init__(self, store: Store):
        self.store = store

    def _write(self, rid: str, seq: int, state: str, event: dict) -> bool:
        # the writer's nonce makes two writers' bytes differ, so a store never mistakes one for the other
        payload = {**event, "state": state, "at": _now().isoformat(timespec="seconds"), "writer": secrets.token_hex(8)}
        data = json.dumps(payload, indent=2, sort_keys=True).encode()
        return self.store.create(f"requests/{rid}/{seq:04d}-{state}.json", data, message=f"{rid}: {state}")

    def events(self) -> dict[str, list[tuple[int, str, str]]]:
        """Request id -> its event files as (seq, state, path), oldest first."""
        out: dict[str, list[tuple[int, str, str]]] = {}
        for path in self.store.list("requests"):
            match = EVENT.fullmatch(path)
            if match:
                out.setdefault(match.group(1), []).append((int(match.group(2)), match.group(3), path))
        return {rid: sorted(evs) for rid, evs in out.items()}

    def load(self, rid: str, events: list[tuple[int, str, str]]) -> Request:
        """The request's latest state; RobustHubError when its first or latest event is malformed."""
        first_seq, first_state, first_path = events[0]
        if first_seq != 0 or first_state != "PENDING":
            raise RobustHubError("the request has no PENDING event to start from")
        first = _check_event(rid, _read_json(self.store, first_path), "PENDING")
        seq, state, path = events[-1]
        latest = first if seq == 0 else _check_event(rid, _read_json(self.store, path), state)
        return Request(rid, first["model_id"], first["commit"], first.get("requested_revision") or "main", state, seq,
                       latest)

    def all(self) -> tuple[list[Request], dict[str, str]]:
        """Every well-formed request, and the malformed ones' ids with the reason."""
        good, bad = [], {}
        for rid, events in self.events().items():
            try:
                good.append(self.load(rid, events))
            except RobustHubError as error:
                bad[rid] = str(error)
        return good, bad

    def submit(self, model_id: str, commit: str, requested_revision: str, **details: Any) -> Request:
        rid = request_id(validate_model_id(model_id), commit)
        event = {"model_id": model_id, "commit": commit, "requested_revision": requested_revision, **details}
        if not self._write(rid, 0, "PENDING", event):
            existing = self.load(rid, self.events()[rid])
            raise RobustHubError(f"duplicate submission: {model_id} at commit {commit[:12]} was already submitted "
                                 f"(request {rid}, now {existing.state})")
        return Request(rid, model_id, commit, requested_revision, "PENDING", 0, {**event, "state": "PENDING"})

    def transition(self, request: Request, state: str, **details: Any) -> Request | None:
        """Append ``state`` after ``request``'s latest event; None when another writer got there first."""
        assert state in STATES
        event = {"model_id": request.model_id, "commit": request.commit,
                 "requested_revision": request.requested_revision, **details}
        if not self._write(request.id, request.seq + 1, state, event):
            return None
        return Request(request.id, request.model_id, request.commit, request.requested_revision, state,
                       request.seq + 1, {**event, "state": state})

    def claim(self, request: Request, lease_s: int = DEFAULT_LEASE_S) -> Request | None:
        runner = f"{socket.gethostname()}:{os.getpid()}"
        until = (_now() + timedelta(seconds=lease_s)).isoformat(timespec="seconds")
        return self.transition(request, "RUNNING", runner=runner, lease_until=until)

    def fail_malformed(self, rid: str, reason: str) -> bool:
        """Close a malformed request with FAILED (it can never run); False when it is already closed."""
        events = self.events().get(rid, [])
        if events and events[-1][1] in ("FINISHED", "FAILED"):
            return False
        seq = events[-1][0] + 1 if events else 0
        data = json.dumps({"request_id": rid, "state": "FAILED", "reason": f"malformed request: {reason}",
                           "at": _now().isoformat(timespec="seconds")}, indent=2).encode()
        return self.store.create(f"requests/{rid}/{seq:04d}-FAILED.json", data, message=f"{rid}: FAILED")


def _read_json(store: Store, path: str) -> Any:
    try:
        return json.loads(store.read(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RobustHubError(f"{path} is not valid JSON ({error})") from None
