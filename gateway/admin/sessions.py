"""Web-page sessions of the admin listener: tokens, cookies, CSRF tokens, idle and absolute ends.

A session lives in the store (every worker and instance sees it) as the SHA-256 of its
token; the token itself exists only in the browser's HttpOnly cookie. The CSRF token is
derived from the session token under a separate label, so it is bound to the session, needs
no storage, and gives nothing away about the cookie.

A session is also bound to the address that signed in (through its stamp): a cookie and CSRF
token read elsewhere (a backend's logs, say) end the session when presented from any other
address. The plain-HTTP cookie is scoped to the admin API's path, so a browser does not send
it to other paths on the same host (cookies ignore ports: the proxy listener is one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable

from aiohttp import web

from gateway.admin.errors import E_CSRF, E_SESSION_ENDED, M_CSRF_TOKEN, ApiError
from gateway.proxy.hygiene import SECURE_SESSION_COOKIE, SESSION_COOKIE
from gateway.settings import SessionSettings
from gateway.store.base import AdminAccount, AdminSession, KeyStore

# The proxy strips both from every request it forwards (gateway.proxy.hygiene owns the names).
COOKIE = SESSION_COOKIE  # cookie over plain HTTP (the admin listener's usual loopback setup)
SECURE_COOKIE = SECURE_SESSION_COOKIE  # cookie over TLS: Secure, Path=/, no Domain
# The plain cookie's path: the admin API, the only place that reads it (the page and its assets
# are public). The `__Host-` cookie must have Path=/; `Secure` keeps it off plain-HTTP listeners.
COOKIE_PATH = "/api/v1"
CSRF_HEADER = "X-CSRF-Token"
# The page's background polls send this: they prove the session, but are not activity, so
# an open but unattended page still reaches its idle timeout.
BACKGROUND_HEADER = "X-Keygate-Background"
TOKEN_BYTES = 32  # random bytes of a session token (256 bits)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # what secrets.token_urlsafe(TOKEN_BYTES) gives
TOUCH_EVERY_MAX = 60.0  # seconds; the most a session's last_seen may lag behind its use
TOUCH_FRACTION = 0.1  # of the idle timeout: how stale last_seen may get before it is written
_CSRF_LABEL = b"keygate-csrf\0"

M_SESSION_ENDED = "your session has ended (signed out, timed out or account changed); sign in again"


def new_token() -> str:
    """Return a fresh random session token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    """Return the SHA-256 of a session token: all the store ever holds of it."""
    return hashlib.sha256(token.encode("ascii")).digest()


def csrf_token(token: str) -> str:
    """Return the CSRF token of a session (derived from its token under a separate label)."""
    digest = hashlib.sha256(_CSRF_LABEL + token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def admin_stamp(account: AdminAccount) -> str:
    """Return a digest of what a session depends on: the account, its password and grants."""
    material = json.dumps(
        [
            account.name,
            account.password_hash,
            sorted(account.grants),
            account.grant_all,
            account.created_at,
        ]
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def session_stamp(account: AdminAccount, address: str) -> str:
    """Return what a session is bound to: its admin's stamp and the address that signed in."""
    material = f"{admin_stamp(account)}\0{address}"
    return hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


def cookie_path(secure: bool) -> str:
    """Return the session cookie's Path: `/` for the `__Host-` cookie, the admin API's else."""
    return "/" if secure else COOKIE_PATH


def cookie_name(secure: bool) -> str:
    """Return the session cookie's name: the `__Host-` one over TLS, the plain one otherwise."""
    return SECURE_COOKIE if secure else COOKIE


def cleared_cookie(secure: bool) -> str:
    """Return a Set-Cookie value that removes the session cookie from the browser."""
    path = cookie_path(secure)
    value = f"{cookie_name(secure)}=; Max-Age=0; Path={path}; HttpOnly; SameSite=Strict"
    return value + "; Secure" if secure else value


def session_ended(secure: bool) -> ApiError:
    """Return the 401 for a session that no longer exists, clearing its cookie."""
    return ApiError(
        401, E_SESSION_ENDED, M_SESSION_ENDED, headers={"Set-Cookie": cleared_cookie(secure)}
    )


class SessionManager:
    """Starts, checks and ends web sessions in the store under the configured timeouts."""

    def __init__(
        self,
        store: KeyStore,
        settings: SessionSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock
        self._touch_after = min(TOUCH_EVERY_MAX, settings.idle_timeout * TOUCH_FRACTION)

    def token_of(self, request: web.Request) -> str | None:
        """Return the session token the request's cookie carries, or None when it has none."""
        value = request.cookies.get(cookie_name(request.secure))
        return value if value else None

    async def start(self, account: AdminAccount, address: str) -> str:
        """Start a session for an admin signed in from `address`; return its token (for the
        cookie only)."""
        token = new_token()
        now = self._clock()
        stamp = session_stamp(account, address)
        await self.store.create_session(
            AdminSession(token_hash(token), account.name, stamp, now, now),
            idle_before=now - self.settings.idle_timeout,
            started_before=now - self.settings.absolute_timeout,
        )
        return token

    async def resolve(
        self, token: str, *, secure: bool, activity: bool, address: str
    ) -> AdminAccount:
        """Return the admin of a live session, or raise 401 session_ended (and forget it).

        A session ends when it has been idle or alive too long, when its admin was removed
        or had their password or grants changed, or when it is used from another address
        than the one that signed in. `activity=False` (background polls) checks the session
        without restarting its idle timeout.
        """
        if not _TOKEN.fullmatch(token):
            raise session_ended(secure)
        hashed = token_hash(token)
        session = await self.store.get_session(hashed)
        if session is None:
            raise session_ended(secure)
        now = self._clock()
        account = await self.store.get_admin(session.admin)
        if (
            now - session.last_seen >= self.settings.idle_timeout
            or now - session.created_at >= self.settings.absolute_timeout
            or account is None
            or not hmac.compare_digest(session_stamp(account, address), session.stamp)
        ):
            await self.store.delete_session(hashed)
            raise session_ended(secure)
        if activity and now - session.last_seen >= self._touch_after:
            await self.store.touch_session(hashed, now)
        return account

    @staticmethod
    def check_csrf(request: web.Request, token: str) -> None:
        """Refuse (403 csrf) a state-changing request without this session's CSRF token."""
        values = request.headers.getall(CSRF_HEADER, [])
        expected = csrf_token(token).encode("ascii")
        given = values[0].strip().encode("utf-8", "replace") if len(values) == 1 else b""
        if not hmac.compare_digest(given, expected):
            raise ApiError(403, E_CSRF, M_CSRF_TOKEN)

    async def end(self, token: str) -> bool:
        """End a session on the server; return False when it had already ended."""
        if not _TOKEN.fullmatch(token):
            return False
        return await self.store.delete_session(token_hash(token))

    def set_cookie(self, response: web.StreamResponse, request: web.Request, token: str) -> None:
        """Give the browser the session cookie: HttpOnly, SameSite=Strict, Secure over TLS."""
        response.set_cookie(
            cookie_name(request.secure),
            token,
            path=cookie_path(request.secure),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )

    @staticmethod
    def clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
        """Remove the session cookie from the browser."""
        response.headers.add("Set-Cookie", cleared_cookie(request.secure))
