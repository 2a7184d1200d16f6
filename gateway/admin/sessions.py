"""Web-page sessions of the admin listener: tokens, cookies, CSRF tokens, idle and absolute ends.

A session lives in the store (every worker and instance sees it) as the SHA-256 of its
token; the token itself exists only in the browser's HttpOnly cookie. The CSRF token is
derived from the session token under a separate label, so it is bound to the session, needs
no storage, and gives nothing away about the cookie.

A session is also bound to the address that signed in (through its stamp): a cookie and CSRF
token read elsewhere (a backend's logs, say) end the session when presented from any other
address. The plain-HTTP cookie is scoped to the admin API's path, so a browser does not send
it to other paths on the same host (cookies ignore ports: the proxy listener is one).

A session signed in with an identity (an OpenID provider, the backend's accounts) keeps the
credentials that re-verify its grants (a token, or a refresh token) sealed with AES-GCM
under a key derived from the session token: the store alone cannot read them. Each request
re-checks them through the identity's source, so grants follow the identity and a token
that no longer verifies ends the session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.admin.errors import (
    E_CSRF,
    E_SESSION_ENDED,
    E_SIGN_IN_UNAVAILABLE,
    M_CSRF_TOKEN,
    ApiError,
)
from gateway.admin.identity import (
    SOURCES,
    Identity,
    IdentityRefused,
    IdentitySource,
    Source,
    TokenInvalid,
    actor_of,
    local_identity,
)
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
_SEAL_LABEL = b"keygate-identity-seal"
_NONCE_BYTES = 12  # AES-GCM's standard nonce
MAX_SEALED_BYTES = 64 * 1024  # bytes of a session's sealed credentials (tokens are far smaller)

M_SESSION_ENDED = "your session has ended (signed out, timed out or account changed); sign in again"
M_LOCAL_DISABLED = (
    "local admin accounts are disabled (admin.sign_in.methods does not list local); "
    "sign in with your organisation's identity"
)
M_SIGNER_UNAVAILABLE = "the identity provider could not be reached to check your sign-in; try again"


def _seal_key(token: str, token_hash_: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=token_hash_, info=_SEAL_LABEL)
    return AESGCM(hkdf.derive(token.encode("ascii")))


def seal(token: str, credentials: Mapping[str, str]) -> bytes:
    """Encrypt a session's credentials under a key only its session token gives."""
    hashed = token_hash(token)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    plain = json.dumps(dict(credentials), separators=(",", ":")).encode("utf-8")
    sealed = nonce + _seal_key(token, hashed).encrypt(nonce, plain, hashed)
    if len(sealed) > MAX_SEALED_BYTES:
        raise ValueError(f"sealed credentials over {MAX_SEALED_BYTES} bytes")
    return sealed


def unseal(token: str, sealed: bytes) -> dict[str, str] | None:
    """Return a session's credentials, or None when they do not open with this token."""
    hashed = token_hash(token)
    try:
        plain = _seal_key(token, hashed).decrypt(
            sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], hashed
        )
        data = json.loads(plain)
    except (InvalidTag, ValueError):
        return None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return None
    return data


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


def identity_stamp(identity: Identity, address: str) -> str:
    """Return what an identity session is bound to: its source, subject and signing-in address."""
    material = f"{identity.source}\0{identity.subject}\0{address}"
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


def session_ended(secure: bool, message: str = M_SESSION_ENDED) -> ApiError:
    """Return the 401 for a session that no longer exists, clearing its cookie."""
    return ApiError(401, E_SESSION_ENDED, message, headers={"Set-Cookie": cleared_cookie(secure)})


class SessionManager:
    """Starts, checks and ends web sessions in the store under the configured timeouts."""

    def __init__(
        self,
        store: KeyStore,
        settings: SessionSettings,
        *,
        clock: Callable[[], float] = time.time,
        local_enabled: bool = True,
        sources: Mapping[Source, IdentitySource] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.local_enabled = local_enabled
        # The ways in other than local accounts, by source; the app fills it from settings.
        self.sources: dict[Source, IdentitySource] = dict(sources or {})
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

    async def start_identity(
        self, identity: Identity, credentials: Mapping[str, str], address: str
    ) -> str:
        """Start a session for an identity signed in from `address` (its credentials sealed);
        return its token (for the cookie only)."""
        token = new_token()
        now = self._clock()
        await self.store.create_session(
            AdminSession(
                token_hash(token),
                actor_of(identity),
                identity_stamp(identity, address),
                now,
                now,
                source=identity.source,
                subject=identity.subject,
                display_name=identity.display_name,
                sealed=seal(token, credentials),
                expires_at=identity.expires_at,
            ),
            idle_before=now - self.settings.idle_timeout,
            started_before=now - self.settings.absolute_timeout,
        )
        return token

    async def resolve(self, token: str, *, secure: bool, activity: bool, address: str) -> Identity:
        """Return the admin of a live session, or raise 401 session_ended (and forget it).

        A session ends when it has been idle or alive too long, when its admin was removed
        or had their password or grants changed, or when it is used from another address
        than the one that signed in; an identity's session also when its credentials no
        longer verify (grants are re-read from them on every request). `activity=False`
        (background polls) checks the session without restarting its idle timeout.
        """
        if not _TOKEN.fullmatch(token):
            raise session_ended(secure)
        hashed = token_hash(token)
        session = await self.store.get_session(hashed)
        if session is None:
            raise session_ended(secure)
        now = self._clock()
        if (
            now - session.last_seen >= self.settings.idle_timeout
            or now - session.created_at >= self.settings.absolute_timeout
        ):
            await self.store.delete_session(hashed)
            raise session_ended(secure)
        if session.source is None:
            identity = await self._local(session, hashed, secure=secure, address=address)
        else:
            identity = await self._renewed(token, session, secure=secure, address=address)
        if activity and now - session.last_seen >= self._touch_after:
            await self.store.touch_session(hashed, now)
        return identity

    async def _local(
        self, session: AdminSession, hashed: bytes, *, secure: bool, address: str
    ) -> Identity:
        """The local account of a session, or end it (account changed, local disabled)."""
        account = await self.store.get_admin(session.admin)
        if (
            account is None
            or not hmac.compare_digest(session_stamp(account, address), session.stamp)
            or not self.local_enabled
        ):
            await self.store.delete_session(hashed)
            message = M_SESSION_ENDED if self.local_enabled else M_LOCAL_DISABLED
            raise session_ended(secure, message)
        return local_identity(account)

    async def _renewed(
        self, token: str, session: AdminSession, *, secure: bool, address: str
    ) -> Identity:
        """Re-check an identity session's credentials through its source, or end it."""
        hashed = session.token_hash
        kind = session.source
        source = self.sources.get(kind) if kind in SOURCES else None
        credentials = None if session.sealed is None else unseal(token, session.sealed)
        if (
            source is None
            or kind not in SOURCES
            or credentials is None
            or not hmac.compare_digest(
                identity_stamp(Identity(kind, session.subject or "", ""), address),
                session.stamp,
            )
        ):
            await self.store.delete_session(hashed)
            raise session_ended(secure)
        try:
            identity, refreshed = await source.renew(credentials)
        except TokenInvalid as error:
            if error.unavailable:
                raise ApiError(503, E_SIGN_IN_UNAVAILABLE, M_SIGNER_UNAVAILABLE) from None
            await self.store.delete_session(hashed)
            raise session_ended(
                secure, f"your sign-in no longer verifies ({error.reason}); sign in again"
            ) from None
        except IdentityRefused as error:
            await self.store.delete_session(hashed)
            raise session_ended(
                secure, f"your sign-in is no longer allowed ({error.reason}); sign in again"
            ) from None
        if identity.source != session.source or identity.subject != session.subject:
            await self.store.delete_session(hashed)
            raise session_ended(secure)
        if refreshed is not None:
            await self.store.update_session_credentials(
                hashed, seal(token, refreshed), identity.expires_at
            )
        return identity

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
