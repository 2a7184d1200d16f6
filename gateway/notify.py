"""Webhook notifications: signed JSON events delivered in the background with retries.

Each event is POSTed to every configured URL with `Keygate-Signature: t=<unix>,v1=<hex>`,
where v1 is HMAC-SHA256 over `"<t>.<body>"` with the webhook's secret (the scheme Stripe
uses), so a receiver can check both origin and freshness. Delivery never blocks the caller:
events wait in a bounded queue (the oldest is dropped, and counted, when it is full) and a
background task sends them, retrying with exponential back-off. Events never carry a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.clock import iso
from gateway.keys import cut_keys

log = logging.getLogger("keygate.notify")

SIGNATURE_HEADER = "Keygate-Signature"
QUEUE_LIMIT = 10_000  # events waiting for delivery; beyond it the oldest is dropped
DELIVERY_TIMEOUT = 5.0  # seconds one POST may take
ATTEMPTS = 6  # deliveries tried per event and URL before it is given up
BACKOFF_BASE = 0.5  # seconds before the first retry; doubles each time
BACKOFF_MAX = 30.0  # seconds; the longest wait between two tries
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


async def deliver_once(session: aiohttp.ClientSession, hook: Webhook, body: bytes) -> str | None:
    """POST one signed event to one webhook once; return None on 2xx, else what went wrong."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(hook.secret, int(time.time()), body),
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


class Notifier:
    """Queues events and delivers them to every webhook in the background."""

    def __init__(self, webhooks: tuple[Webhook, ...]) -> None:
        self._webhooks = webhooks
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0  # events given up on one URL after every attempt
        self.dropped = 0  # events dropped because the queue was full

    def publish(self, item: dict[str, Any]) -> None:
        """Queue an event for delivery; never waits (drops the oldest when full)."""
        if not self._webhooks:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    async def start(self) -> None:
        """Start delivering in the background."""
        if self._webhooks and self._task is None:
            self._task = asyncio.create_task(self._run(), name="keygate-notify")

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the queue to empty (tests, shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)

    async def close(self) -> None:
        """Stop delivering (events still queued are dropped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                item = await self._queue.get()
                try:
                    body = encode(item)
                    await asyncio.gather(
                        *(self._deliver(session, hook, body) for hook in self._webhooks)
                    )
                finally:
                    self._queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, hook: Webhook, body: bytes) -> None:
        """POST one event to one webhook, retrying with back-off; log the outcome once."""
        delay = BACKOFF_BASE
        for attempt in range(1, ATTEMPTS + 1):
            problem = await deliver_once(session, hook, body)
            if problem is None:
                self.delivered += 1
                return
            if attempt == ATTEMPTS:
                break
            log.info("webhook %s: %s; retry %d in %.1fs", hook.shown, problem, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        self.failed += 1
        log.warning("webhook %s: giving up an event after %d attempts", hook.shown, ATTEMPTS)
