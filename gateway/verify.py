"""Verify keygate's `X-Acting-User-Signature` in a backend (standard library only; copy freely).

keygate signs every request it forwards for an API key:

    X-Acting-User-Signature: t=<unix seconds>,kid=<key id>,v1=<hex HMAC-SHA256>

over the bytes `"<t>\\n<METHOD>\\n<request target>\\n<acting user>"` (UTF-8), where the
request target is exactly what the request line carries (path and query) and the acting user
is the value of the acting-user header (default `X-Acting-User`). A backend that checks it
rejects requests that did not pass through keygate, even from hosts that can reach its port.

    from verify import verify_acting_user
    ok = verify_acting_user(
        request.headers["X-Acting-User-Signature"], request.method, request.target,
        request.headers["X-Acting-User"], keys={"k2": b"new secret", "k1": b"old secret"},
    )
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "X-Acting-User-Signature"
DEFAULT_TOLERANCE = 300.0  # seconds a signature's timestamp may differ from the verifier's clock


def signed_message(timestamp: int, method: str, target: str, acting_user: str) -> bytes:
    """Return the bytes keygate signs for one forwarded request."""
    return f"{timestamp}\n{method}\n{target}\n{acting_user}".encode()


def signature(key: bytes, timestamp: int, method: str, target: str, acting_user: str) -> str:
    """Return the hex HMAC-SHA256 of one request's signed message."""
    message = signed_message(timestamp, method, target, acting_user)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def header_value(
    key_id: str, key: bytes, timestamp: int, method: str, target: str, acting_user: str
) -> str:
    """Return the whole `X-Acting-User-Signature` value keygate sends."""
    mac = signature(key, timestamp, method, target, acting_user)
    return f"t={timestamp},kid={key_id},v1={mac}"


def verify_acting_user(
    header: str,
    method: str,
    target: str,
    acting_user: str,
    keys: Mapping[str, bytes],
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """Return True when `header` signs this request with one of `keys` and is fresh.

    `keys` maps key ids to secrets; during a rotation give both the new and the old one.
    The comparison runs in constant time.
    """
    fields: dict[str, str] = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value
    stamp, key_id, mac = fields.get("t", ""), fields.get("kid", ""), fields.get("v1", "")
    if not stamp.isascii() or not stamp.isdigit() or not mac:
        return False
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance:
        return False
    candidates = [keys[key_id]] if key_id in keys else list(keys.values())
    valid = False
    for key in candidates:  # every candidate is checked: the time taken does not tell which
        expected = signature(key, int(stamp), method, target, acting_user)
        valid |= hmac.compare_digest(expected, mac)
    return valid
