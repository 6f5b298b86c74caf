"""Evaluation requests: one append-only history per request, pinned to one model commit.

A request's id is ``ORG--NAME--COMMIT``, so two submissions of the same commit are the same request. Its history
is ``requests/ID/NNNN.json``: slot 0 is the submitter's PENDING event, every later slot an event a runner wrote.
The file name is the slot number alone, whatever state the event records, so the store's exclusive ``create``
gives each slot to exactly one writer: two runners, or a runner and a reclaim, can never fork a history. The one
that loses a slot learns it and stops.

Anyone can write to a shared store, so a runner's events (RUNNING, FINISHED, FAILED, PENDING again after a crash)
are signed with the leaderboard's key and bound to their request and slot. A request's state is its latest
verified event; an unsigned or forged file takes a slot but counts for nothing (it is listed as rejected), and the
next event goes after it.

A RUNNING event holds a lease that its runner renews while it evaluates (runner.Lease), so a lease runs out only
when its runner is gone or hangs. Reclaiming takes over before that only from a runner that ran on this host and
whose process no longer exists. Every claim counts a try; a request that was tried ``MAX_TRIES`` times without
finishing (a crash, or a runner killed each time) is closed FAILED instead of being tried again.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from robust_hub.errors import RobustHubError
from robust_hub.leaderboard import signing
from robust_hub.leaderboard.store import SAFE_PATH, Store

STATES = ("PENDING", "RUNNING", "FINISHED", "FAILED")
# The Hub's own rules for a namespace and a repository name, applied strictly: no path-like ids.
NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A model from a local directory has no commit: it is pinned to the content hash of its files (the evaluation
# records it as its revision), and lives on the runner's own file system.
LOCAL_COMMIT = re.compile(r"^local-sha256:[0-9a-f]{64}$")
EVENT_FILE = re.compile(r"^requests/([^/]+)/(\d{4})\.json$")
DEFAULT_LEASE_S = 30 * 60
MAX_TRIES = 3
MAX_APPENDS = 20  # slots an append skips over when unverified files keep taking them


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
    return f"{model_id.replace('/', '--')}--{commit.replace(':', '-')}"


def is_local(commit: str) -> bool:
    return bool(LOCAL_COMMIT.fullmatch(commit))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _timestamp(value: Any) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise RobustHubError(f"{value!r} is not a timestamp") from None
    if when.tzinfo is None:
        raise RobustHubError(f"{value!r} is not a timestamp with a time zone")
    return when


def this_runner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def runner_gone(runner: dict) -> bool:
    """Whether the process that holds a lease is known to be gone: it ran on this host and no longer exists."""
    pid = runner.get("pid")
    if runner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False  # another machine: only its lease running out says it is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


@dataclass(frozen=True)
class Request:
    """A request as its latest verified event says it is.

    ``state`` is MALFORMED for a request that can never run (its folder name or its PENDING event is wrong) and
    has not been closed yet. ``seq`` is the slot of the latest verified event, ``last_seq`` the last slot taken by
    anyone: the next event goes after it.
    """

    id: str
    state: str
    seq: int
    last_seq: int
    event: dict
    problem: str = ""

    @property
    def model_id(self) -> str:
        return self.event.get("model_id", "")

    @property
    def commit(self) -> str:
        return self.event.get("commit", "")

    @property
    def requested_revision(self) -> str:
        return self.event.get("requested_revision") or "main"

    @property
    def tries(self) -> int:
        return self.event.get("tries", 0)

    @property
    def reason(self) -> str:
        return self.problem or self.event.get("reason") or self.event.get("last_error") or ""

    @property
    def lease_expired(self) -> bool:
        return self.state == "RUNNING" and _timestamp(self.event["lease_until"]) < _now()

    def claimable(self, reclaim: bool = False) -> bool:
        """PENDING, or RUNNING by a runner that is gone (lease run out; with ``reclaim``, its process gone)."""
        if self.state == "PENDING":
            return True
        return self.state == "RUNNING" and (self.lease_expired or (reclaim and runner_gone(self.event["runner"])))


def _check_pending(rid: str, event: Any) -> dict:
    """The submitter's event (unsigned: it only asks for an evaluation that the runner checks again)."""
    if not isinstance(event, dict):
        raise RobustHubError("the request is not a JSON object")
    if event.get("state") != "PENDING":
        raise RobustHubError(f"the request's first event is {event.get('state')!r}, not PENDING")
    model_id = validate_model_id(event.get("model_id"))
    commit = event.get("commit")
    if not isinstance(commit, str) or not (COMMIT.fullmatch(commit) or LOCAL_COMMIT.fullmatch(commit)):
        raise RobustHubError(f"the request's commit {commit!r} is neither a 40-hex commit sha nor a local-sha256 "
                             "content hash")
    if is_local(commit) and not isinstance(event.get("local_dir"), str):
        raise RobustHubError("a request pinned to a content hash names no local_dir")
    if request_id(model_id, commit) != rid:
        raise RobustHubError(f"the request names {model_id}@{commit[:12]} but is filed as {rid}")
    return event


def _check_runner_event(rid: str, seq: int, payload: Any, key: bytes | None) -> dict:
    """A runner's event, verified: signed with the key, for this request and this slot, well formed."""
    if key is None:
        raise RobustHubError("a runner's event cannot be verified without the leaderboard key")
    event = signing.verified(payload, key)
    if event.get("request_id") != rid or event.get("seq") != seq:
        raise RobustHubError(f"the event was signed for {event.get('request_id')!r} slot {event.get('seq')!r}, "
                             f"not {rid} slot {seq}")
    if event.get("state") not in STATES:
        raise RobustHubError(f"unknown state {event.get('state')!r}")
    if event["state"] == "RUNNING":
        _timestamp(event.get("lease_until"))
        if not isinstance(event.get("runner"), dict):
            raise RobustHubError("a RUNNING event names no runner")
    return event


def _slot_path(rid: str, seq: int) -> str:
    return f"requests/{rid}/{seq:04d}.json"


class RequestQueue:
    """The requests in ``store``; ``key`` verifies and signs runner events (``submit`` needs none)."""

    def __init__(self, store: Store, key: bytes | None = None):
        self.store, self.key = store, key

    def folders(self, prefix: str = "requests") -> tuple[dict[str, list[tuple[int, str]]], dict[str, str]]:
        """Request id -> its event slots as (seq, path), in order; and the files that are no event, with why."""
        slots: dict[str, list[tuple[int, str]]] = {}
        rejected = {}
        for path in self.store.list(prefix):
            match = EVENT_FILE.fullmatch(path)
            if match and SAFE_PATH.fullmatch(path):
                slots.setdefault(match.group(1), []).append((int(match.group(2)), path))
            elif not SAFE_PATH.fullmatch(path):
                rejected[path] = "not a request: its name is not a plain store path (ORG--NAME--COMMIT/NNNN.json)"
            else:
                rejected[path] = "not a request event (requests/ORG--NAME--COMMIT/NNNN.json)"
        return {rid: sorted(s) for rid, s in slots.items()}, rejected

    def load(self, rid: str, slots: list[tuple[int, str]] | None = None) -> tuple[Request, dict[str, str]]:
        """The request's latest verified state, and the later files that were not verified, with why."""
        if slots is None:
            slots = self.folders(f"requests/{rid}")[0].get(rid, [])
        last_seq, rejected = (slots[-1][0] if slots else -1), {}
        for seq, path in reversed(slots):
            try:
                payload = signing.parse_json(self.store.read(path))
                if seq == 0:
                    return Request(rid, "PENDING", 0, last_seq, _check_pending(rid, payload)), rejected
                event = _check_runner_event(rid, seq, payload, self.key)
                return Request(rid, event["state"], seq, last_seq, event), rejected
            except RobustHubError as error:
                if seq == 0:  # the request itself is wrong: it can never run
                    return Request(rid, "MALFORMED", -1, last_seq, {}, f"malformed request: {error}"), rejected
                rejected[path] = str(error)
        return Request(rid, "MALFORMED", -1, last_seq, {}, "malformed request: no PENDING event"), rejected

    def all(self) -> tuple[list[Request], dict[str, str]]:
        """Every request, and every file under ``requests/`` that does not count, with the reason."""
        folders, rejected = self.folders()
        requests = []
        for rid, slots in folders.items():
            request, ignored = self.load(rid, slots)
            requests.append(request)
            rejected.update(ignored)
        return requests, rejected

    def submit(self, model_id: str, commit: str, requested_revision: str, **details: Any) -> Request:
        rid = request_id(validate_model_id(model_id), commit)
        event = {**details, "model_id": model_id, "commit": commit, "requested_revision": requested_revision,
                 "state": "PENDING", "at": _now().isoformat(timespec="seconds"), "writer": secrets.token_hex(8)}
        if not self.store.create(_slot_path(rid, 0), signing.json_bytes(event), message=f"{rid}: PENDING"):
            raise RobustHubError(f"duplicate submission: {model_id} at commit {commit[:12]} was already submitted "
                                 f"(request {rid})")
        return Request(rid, "PENDING", 0, 0, event)

    def append(self, request: Request, state: str, **details: Any) -> Request | None:
        """Sign ``state`` into the slot after ``request``'s last; None when another writer's verified event came
        first (then that writer owns the request now)."""
        assert state in STATES and self.key is not None
        carried = {k: request.event[k] for k in ("model_id", "commit", "requested_revision", "local_dir", "tries")
                   if k in request.event}
        for _ in range(MAX_APPENDS):
            seq = request.last_seq + 1
            # the writer's nonce makes two writers' bytes differ, so a store never mistakes one for the other
            event = {**carried, **details, "state": state, "request_id": request.id, "seq": seq,
                     "at": _now().isoformat(timespec="seconds"), "writer": secrets.token_hex(8)}
            if self.store.create(_slot_path(request.id, seq), signing.sign(event, self.key),
                                 message=f"{request.id}: {state}"):
                return Request(request.id, state, seq, seq, {**event, "signed_by": signing.SIGNER})
            current, _ = self.load(request.id)
            if current.seq != request.seq:
                return None
            request = current  # only unverified files took the slot: write after them
        raise RobustHubError(f"request {request.id}: {MAX_APPENDS} slots in a row were taken by unverified files")

    def claim(self, request: Request, lease_s: int = DEFAULT_LEASE_S) -> Request | None:
        """Take ``request`` for this process (one more try); None when another runner got it first."""
        return self.append(request, "RUNNING", runner=this_runner(), tries=request.tries + 1,
                           lease_until=_lease_until(lease_s))

    def renew(self, request: Request, lease_s: int = DEFAULT_LEASE_S) -> Request | None:
        """Extend the lease ``request`` (our latest RUNNING event) holds; None when we no longer hold it."""
        return self.append(request, "RUNNING", runner=request.event["runner"], lease_until=_lease_until(lease_s))


def _lease_until(lease_s: float) -> str:
    return (_now() + timedelta(seconds=lease_s)).isoformat(timespec="milliseconds")
