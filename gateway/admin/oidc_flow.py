"""One OpenID Connect sign-in in flight: state, nonce and PKCE verifier in a signed cookie (pure).

The browser carries the flow between `/oidc/start` and `/oidc/callback` in a short-lived,
HttpOnly, SameSite=Lax cookie signed with HMAC-SHA256 (Lax: the provider's redirect back is
a cross-site top-level GET). Nothing is kept on the server until the callback, so an
unauthenticated caller cannot fill memory by starting flows; the key is derived from the
client secret, so every instance sharing the config accepts the cookie. A callback consumes
the flow: the cookie is cleared and its state remembered until it would have expired anyway
(`UsedStates`), so one flow completes at most once even if the cookie is replayed (the
provider's codes are single use as well).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FLOW_TTL = 600.0  # seconds a started sign-in may take to come back (the provider's login page)
FLOW_BYTES = 32  # random bytes of each of state, nonce and PKCE verifier (256 bits)
MAX_FLOW_COOKIE = 1024  # characters of a flow cookie we accept (ours are about 330)
MAX_USED_STATES = 10_000  # states remembered as used (each for at most FLOW_TTL)
_KEY_LABEL = b"keygate-oidc-flow\0"
_SEPARATOR = "."


class FlowInvalid(Exception):
    """The flow cookie is missing, forged, expired, used, or for another state."""


@dataclass(frozen=True, slots=True)
class Flow:
    """The secrets of one sign-in in flight."""

    state: str
    nonce: str
    verifier: str
    expires: float


def new_flow(now: float) -> Flow:
    """Return a fresh flow (random state, nonce and PKCE verifier) expiring FLOW_TTL from now."""
    return Flow(
        secrets.token_urlsafe(FLOW_BYTES),
        secrets.token_urlsafe(FLOW_BYTES),
        secrets.token_urlsafe(FLOW_BYTES),  # 43 characters: RFC 7636 section 4.1 asks 43-128
        now + FLOW_TTL,
    )


def code_challenge(verifier: str) -> str:
    """Return the S256 code challenge of a PKCE verifier (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def flow_key(client_secret: str | None) -> bytes:
    """Return the cookie-signing key: from the client secret, else random for this process."""
    if client_secret:
        return hashlib.sha256(_KEY_LABEL + client_secret.encode("utf-8")).digest()
    return secrets.token_bytes(32)


def _mac(key: bytes, payload: str) -> str:
    digest = hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def seal(flow: Flow, key: bytes) -> str:
    """Return the cookie value of a flow: base64url JSON, a dot, its HMAC-SHA256."""
    body = json.dumps([flow.state, flow.nonce, flow.verifier, flow.expires]).encode("ascii")
    payload = base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")
    return payload + _SEPARATOR + _mac(key, payload)


def unseal(value: str | None, key: bytes, state: str, now: float) -> Flow:
    """Return the flow a cookie carries for this callback's `state`, or raise FlowInvalid."""
    if not value or len(value) > MAX_FLOW_COOKIE or value.count(_SEPARATOR) != 1:
        raise FlowInvalid("no sign-in in progress in this browser")
    payload, mac = value.split(_SEPARATOR)
    if not hmac.compare_digest(mac.encode("ascii", "replace"), _mac(key, payload).encode()):
        raise FlowInvalid("the sign-in cookie is not ours")
    try:
        fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        flow = Flow(str(fields[0]), str(fields[1]), str(fields[2]), float(fields[3]))
    except (ValueError, TypeError, IndexError, KeyError) as error:
        raise FlowInvalid("the sign-in cookie is damaged") from error
    if now >= flow.expires:
        raise FlowInvalid("the sign-in took too long")
    if not hmac.compare_digest(state.encode("utf-8", "replace"), flow.state.encode("ascii")):
        raise FlowInvalid("the state does not match this browser's sign-in")
    return flow


class UsedStates:
    """States of flows already completed, each kept until its flow would have expired."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._until: OrderedDict[str, float] = OrderedDict()
        self._clock = clock

    def consume(self, flow: Flow) -> bool:
        """Mark a flow used; return False when it already was."""
        now = self._clock()
        while self._until and (
            next(iter(self._until.values())) <= now or len(self._until) >= MAX_USED_STATES
        ):
            self._until.popitem(last=False)
        if flow.state in self._until:
            return False
        self._until[flow.state] = flow.expires
        return True
