"""Results the leaderboard computed itself: evaluation records signed by its runner, and checked on every read.

A result file is ``results/REQUEST_ID/RECORD.json`` holding the evaluation record, the request it answers and an
HMAC-SHA256 over both with the leaderboard's secret key (signing.py). Anyone can write to a shared store, so nothing
read back is trusted until (1) it is strict JSON and the signature matches, (2) the record passes the evaluation
schema, (3) it evaluates the model and commit its request names, and (4) it is filed at the one path that result of
that request has. A file failing any of these is rejected with the reason, never shown.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from robust_hub.errors import RobustHubError
from robust_hub.evaluation.records import EvalRecord
from robust_hub.leaderboard import signing
from robust_hub.leaderboard.requests import request_id
from robust_hub.leaderboard.store import Store

KEY_ENV = "ROBUST_HUB_LEADERBOARD_KEY"


def default_key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "robust-hub" / "leaderboard.key"


def load_key(key_file: str | os.PathLike | None = None, *, create: bool = False) -> bytes:
    """The signing key: ``$ROBUST_HUB_LEADERBOARD_KEY``, else the key file (made on first use by ``run``)."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    path = Path(key_file) if key_file else default_key_file()
    if path.is_file():
        key = path.read_bytes().strip()
        if len(key) < 32:
            raise RobustHubError(f"leaderboard key {path} is too short (want at least 32 characters)")
        return key
    if not create:
        raise RobustHubError(f"no leaderboard key: set {KEY_ENV} or give --key-file (looked for {path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


def result_path(record: dict, request: str) -> str:
    """Where the result of ``record`` for ``request`` lives: one file per request and result key, so at most one."""
    from robust_hub.evaluation.records import record_filename, record_key

    key = record_key(record["model"]["id"], record["model"]["revision"], record["protocol"]["name"],
                     record["dataset"]["source"], record["metric_set"], record["threat"]["norm"],
                     record["threat"]["eps"])
    return f"results/{request}/{record_filename(key)}"


def sign(record: dict, request: str, key: bytes) -> bytes:
    return signing.sign({"record": record, "request_id": request}, key)


@dataclass(frozen=True)
class VerifiedResult:
    record: dict
    request_id: str
    path: str


def check_result(data: bytes, path: str, key: bytes | None) -> VerifiedResult:
    """Parse and verify a result file; RobustHubError naming the first thing that is wrong."""
    payload = signing.parse_json(data)
    if not isinstance(payload, dict) or set(payload) != {"record", "request_id", "signed_by", "signature"}:
        raise RobustHubError("not a signed leaderboard result (fields record, request_id, signed_by, signature)")
    if key is not None:
        signing.verified(payload, key)
    try:
        record = EvalRecord.from_dict(payload["record"]).to_dict()
    except (TypeError, ValueError) as error:  # a shape the schema's checks did not expect
        raise RobustHubError(f"invalid result record ({type(error).__name__}: {error})") from None
    rid = payload["request_id"]
    if not isinstance(rid, str) or rid != request_id(record["model"]["id"], record["model"]["revision"]):
        raise RobustHubError(f"the record evaluates {record['model']['id']}@{record['model']['revision'][:12]}, "
                             f"not what request {rid!r} names")
    # the file's place is part of what it claims: a copy under another name or another request's folder would
    # otherwise be a second row, or a row of the wrong request
    if path != result_path(record, rid):
        raise RobustHubError(f"a result of request {rid} belongs at {result_path(record, rid)}, not here")
    return VerifiedResult(record, rid, path)


def load_results(store: Store, key: bytes | None) -> tuple[list[VerifiedResult], dict[str, str]]:
    """Every verified result in ``store``, and the rejected files with the reason."""
    good, rejected = [], {}
    for path in store.list("results"):
        if not path.endswith(".json"):
            continue
        try:
            good.append(check_result(store.read(path), path, key))
        except RobustHubError as error:
            rejected[path] = str(error)
    return good, rejected


