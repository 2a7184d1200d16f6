"""Webhook notifications: signing, one delivery attempt, the retry schedule, URLs shown safely.

Each event is POSTed to every configured URL with `Keygate-Signature: t=<unix>,v1=<hex>`,
where v1 is HMAC-SHA256 over `"<t>.<body>"` with the webhook's secret (the scheme Stripe
uses), so a receiver can check both origin and freshness, and `Keygate-Event-Id` (the
body's `id`, stable across retries) to drop repeats. Delivery itself (one worker per
receiver, the cursor in the store) is `gateway.events.delivery`. Events never carry a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.clock import iso
from gateway.keys.keyformat import cut_keys

SIGNATURE_HEADER = "Keygate-Signature"
EVENT_ID_HEADER = "Keygate-Event-Id"
DELIVERY_TIMEOUT = 5.0  # seconds one POST may take
# The retry schedule of an event a receiver did not accept (2xx), persisted in the store:
RETRY_FIRST = 1.0  # seconds before the first retry; doubles each time
RETRY_MAX = 600.0  # seconds; the longest wait between two tries (10 minutes)
RETRY_GIVE_UP = 86_400.0  # seconds after the first attempt a failing event is abandoned (24 h)
ERROR_LIMIT = 200  # characters of a delivery error kept (logs, store)
SIGNATURE_TOLERANCE = 300.0  # seconds a receiver should accept a signature's timestamp
HIDDEN = "***"  # what stands for a URL's credentials wherever it is shown
# A first path segment this long (characters), or this long with a digit in it, is taken
# for a token (e.g. https://example/AbC123...): shown hidden too.
TOKEN_LENGTH = 16
TOKEN_LENGTH_WITH_DIGIT = 8


def _looks_like_token(segment: str) -> bool:
    """Return True when a path segment may be a credential rather than a name."""
    if len(segment) >= TOKEN_LENGTH or cut_keys(segment) != segment:
        return True
    return len(segment) >= TOKEN_LENGTH_WITH_DIGIT and any(c.isdigit() for c in segment)


def _hidden_value(pair: str) -> str:
    """Return a query item with its value hidden (a bare item hidden when token-like)."""
    name, equals, _ = pair.partition("=")
    if equals:
        return f"{name}={HIDDEN}"
    return HIDDEN if _looks_like_token(name) else name


def redact_url(url: str) -> str:
    """Return a webhook URL as it may be shown (logs, CLI): no credentials in it.

    Userinfo becomes `***@`, every query value and the fragment `***`; of the path only the
    first segment is kept (unless it looks like a token), the rest becomes `/***`, as
    Slack- and Discord-style URLs carry their tokens there. Scheme, host and port stay.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN
    host = parts.netloc
    if "@" in host:
        host = f"{HIDDEN}@{host.rpartition('@')[2]}"
    shown = f"{parts.scheme}://{host}" if parts.scheme else host
    first, slash, rest = parts.path.removeprefix("/").partition("/")
    if parts.path:
        shown += "/" + (HIDDEN if _looks_like_token(first) else first)
        shown += f"/{HIDDEN}" if rest else slash
    if parts.query:
        shown += "?" + "&".join(_hidden_value(pair) for pair in parts.query.split("&"))
    if parts.fragment:
        shown += f"#{HIDDEN}"
    return shown


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where events go and the secret they are signed with (its repr shows neither)."""

    url: str = field(repr=False)
    secret: bytes = field(repr=False)

    @property
    def shown(self) -> str:
        """The URL as logs and the CLI show it (no credentials)."""
        return redact_url(self.url)

    @property
    def receiver_id(self) -> str:
        """The receiver's stable id in the store and metrics (a digest, never the URL)."""
        return receiver_id(self.url)


def receiver_id(url: str) -> str:
    """Return a webhook URL's receiver id: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def retry_delay(failures: int) -> float:
    """Return the seconds to wait after an event's `failures`-th failed attempt (1 s, 2 s, …)."""
    return min(RETRY_FIRST * 2.0 ** min(max(failures - 1, 0), 64), RETRY_MAX)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """Return the signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: bytes, header: str, body: bytes, now: float, tolerance: float = SIGNATURE_TOLERANCE
) -> bool:
    """Return True when `header` signs `body` with `secret` within `tolerance` seconds of now."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp = fields.get("t", "")
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance:
        return False
    expected = sign(secret, int(stamp), body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def event(kind: str, data: Mapping[str, Any], at: float) -> dict[str, Any]:
    """Return an event: a unique id, its type (e.g. `key.revoked`), time and data."""
    return {"id": secrets.token_hex(12), "type": kind, "created_at": iso(at), "data": dict(data)}


async def deliver_once(
    session: aiohttp.ClientSession, hook: Webhook, body: bytes, event_id: str
) -> str | None:
    """POST one signed event to one webhook once; return None on 2xx, else what went wrong."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(hook.secret, int(time.time()), body),
        EVENT_ID_HEADER: event_id,
    }
    try:
        async with session.post(hook.url, data=body, headers=headers) as response:
            await response.read()
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        return type(error).__name__


def encode(item: Mapping[str, Any]) -> bytes:
    """Return an event's JSON body as it is sent and signed."""
    return json.dumps(item, separators=(",", ":")).encode()
