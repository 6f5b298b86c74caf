"""Reading what a shared store holds, and trusting only what the leaderboard's runner signed.

Anyone who can write to a store can put any bytes there, so every file is parsed strictly (UTF-8 JSON, no ``NaN``
or ``Infinity``, which JSON itself does not allow) and a file the runner wrote carries an HMAC-SHA256 over its
canonical JSON with the leaderboard's secret key. A signature proves that someone holding the key wrote exactly
these fields: results and request events are therefore exactly as trustworthy as the key is secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from robust_hub.errors import RobustHubError

SIGNER = "robust-hub leaderboard"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes) -> Any:
    """A store file's JSON; RobustHubError (never another exception) when it is not strict JSON."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RobustHubError(f"not valid JSON ({error})") from None


def _canonical(body: dict) -> bytes:
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as error:  # a non-finite number or a non-JSON value cannot be signed
        raise RobustHubError(f"cannot sign this content ({error})") from None


def _digest(body: dict, key: bytes) -> str:
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def json_bytes(content: dict) -> bytes:
    """The bytes of a store file holding ``content``."""
    return json.dumps(content, indent=2, sort_keys=True, allow_nan=False).encode()


def sign(body: dict, key: bytes) -> bytes:
    """``body`` with ``signed_by`` and its ``signature``, as the bytes of a store file."""
    signed = {**body, "signed_by": SIGNER}
    return json_bytes({**signed, "signature": _digest(signed, key)})


def verified(payload: Any, key: bytes) -> dict:
    """The signed fields of ``payload`` (``signature`` removed); RobustHubError when the signature does not match."""
    if not isinstance(payload, dict) or payload.get("signed_by") != SIGNER or "signature" not in payload:
        raise RobustHubError("not signed by the leaderboard")
    body = {k: v for k, v in payload.items() if k != "signature"}
    signature = payload["signature"]
    if not isinstance(signature, str) or not signature.isascii() or not hmac.compare_digest(_digest(body, key), signature):
        raise RobustHubError("signature mismatch: changed after the leaderboard wrote it, or not written by this "
                             "leaderboard")
    return body
