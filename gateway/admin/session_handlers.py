"""Admin API session handlers: sign in (start a web session), who am I, sign out."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.admin.backend_sign_in import BackendRefused, BackendSignIn, BackendUnavailable
from gateway.admin.basic_auth import M_INVALID, too_many_attempts, unauthorized
from gateway.admin.errors import (
    E_SIGN_IN_METHOD_DISABLED,
    E_SIGN_IN_REFUSED,
    E_SIGN_IN_UNAVAILABLE,
    NO_STORE,
    ApiError,
)
from gateway.admin.identity import Identity, IdentityRefused, TokenInvalid, local_identity
from gateway.admin.middlewares import current_admin
from gateway.admin.models import SIGN_IN_WORDS, SignIn, convert, fields
from gateway.admin.parsing import read_json_object
from gateway.admin.sessions import M_LOCAL_DISABLED, csrf_token
from gateway.runtime.appkeys import AUTH_KIND, AUTHENTICATOR, RUNTIME, SESSION_TOKEN, SESSIONS

log = logging.getLogger("keygate.admin.session")

SIGN_IN_FIELDS = fields(SignIn)
AUDIT_SIGN_IN = "admin_sign_in"
AUDIT_SIGN_OUT = "admin_sign_out"
M_BACKEND_DISABLED = "sign-in with the backend's accounts is not configured (admin.sign_in.methods)"
M_BACKEND_DOWN = (
    "the backend's sign-in is not answering ({cause}); try again later, or use a local "
    "break-glass account"
)
M_BACKEND_TOKEN = "the backend's token does not verify ({cause}); ask its administrator"


def session_json(request: web.Request, identity: Identity, token: str | None) -> dict[str, Any]:
    """Return who is signed in, where their grants come from, what they may grant and (for a
    session) its CSRF token."""
    settings = request.app[SESSIONS].settings
    return {
        "admin": identity.subject,
        "display_name": identity.display_name,
        "actor": identity.actor,
        "source": identity.source,
        "groups": list(identity.groups),
        "grants": sorted(identity.grants),
        "grant_all": identity.grant_all,
        "expires_at": identity.expires_at,
        "auth": request.get(AUTH_KIND, "basic" if token is None else "session"),
        "csrf_token": None if token is None else csrf_token(token),
        "idle_timeout": settings.idle_timeout,
        "absolute_timeout": settings.absolute_timeout,
        "expiry_warn_days": request.app[RUNTIME].settings.expiry.warn_days,
    }


def _method_of(request: web.Request, asked: str | None) -> str:
    """Return the way in a sign-in uses: the one asked for, else the first configured."""
    methods = request.app[RUNTIME].settings.admin.sign_in.methods
    if asked is not None:
        if asked not in methods:
            message = M_LOCAL_DISABLED if asked == "local" else M_BACKEND_DISABLED
            raise ApiError(403, E_SIGN_IN_METHOD_DISABLED, message)
        return asked
    for method in methods:
        if method in ("local", "backend"):
            return method
    raise ApiError(403, E_SIGN_IN_METHOD_DISABLED, M_LOCAL_DISABLED)


async def sign_in(request: web.Request) -> web.Response:
    """POST /api/v1/session: check an admin's name and password and start a web session.

    A local account gets the same check as HTTP Basic (throttle, hold-back, audit of
    failures); the backend's accounts are checked by its token endpoint, whose token then
    gives the grants. The answer sets the session cookie and carries the CSRF token.
    """
    data = await read_json_object(request, SIGN_IN_FIELDS)
    credentials = convert(data, SignIn, SIGN_IN_WORDS)
    name, password = credentials.name, credentials.password
    address = request.remote or "?"
    sessions = request.app[SESSIONS]
    method = _method_of(request, credentials.method)
    if method == "backend":
        identity, token_credentials = await _backend_sign_in(request, name, password, address)
        token = await sessions.start_identity(identity, token_credentials, address)
    else:
        try:
            account = await request.app[AUTHENTICATOR].check(address, (name, password))
        except ApiError as error:
            error.headers.pop("WWW-Authenticate", None)  # a form, not a Basic challenge
            raise
        identity = local_identity(account)
        token = await sessions.start(account, address)
    details: dict[str, Any] = {"remote": address, "method": method}
    if identity.source != "local":
        details |= {"display_name": identity.display_name, "groups": list(identity.groups)}
    await sessions.store.append_audit(actor=identity.actor, action=AUDIT_SIGN_IN, details=details)
    log.info("admin %r signed in from %s", identity.actor, address)
    request[AUTH_KIND] = "session"
    response = web.json_response(
        session_json(request, identity, token), headers={"Cache-Control": NO_STORE}
    )
    sessions.set_cookie(response, request, token)
    return response


async def _backend_sign_in(
    request: web.Request, name: str, password: str, address: str
) -> tuple[Identity, dict[str, str]]:
    """Ask the backend's token endpoint; return the identity and the credentials to keep
    (its token, never the password). Failures count against the address's throttle."""
    source = request.app[SESSIONS].sources.get("backend")
    if not isinstance(source, BackendSignIn):
        raise ApiError(403, E_SIGN_IN_METHOD_DISABLED, M_BACKEND_DISABLED)
    auth = request.app[AUTHENTICATOR]
    throttle, store = auth.throttle, auth.store
    reservation = throttle.begin(address, None)
    try:
        wait = await throttle.retry_after(store, reservation, account=False, trusted=False)
        if wait is not None:
            raise too_many_attempts(wait)
        try:
            token = await source.token_for(name, password)
        except BackendRefused:
            await auth.backend_failed(address)
            error = unauthorized(M_INVALID)
            error.headers.pop("WWW-Authenticate", None)
            raise error from None
        except BackendUnavailable as error:
            log.warning("the backend's token endpoint failed a sign-in: %s", error)
            raise ApiError(503, E_SIGN_IN_UNAVAILABLE, M_BACKEND_DOWN.format(cause=error)) from None
    finally:
        throttle.end(reservation)
    try:
        identity = await source.identity(token)
    except TokenInvalid as error:
        log.warning("the backend's token did not verify: %s", error.reason)
        status = 503 if error.unavailable else 502
        code = E_SIGN_IN_UNAVAILABLE
        raise ApiError(status, code, M_BACKEND_TOKEN.format(cause=error.reason)) from None
    except IdentityRefused as error:
        await auth.store.append_audit(
            actor=f"backend:{name}" if _printable(name) else "unknown",
            action="admin_sign_in_refused",
            details={"remote": address, "reason": error.reason},
        )
        raise ApiError(403, E_SIGN_IN_REFUSED, error.reason) from None
    return identity, {"token": token}


def _printable(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isprintable() and not c.isspace() for c in name)


async def who_am_i(request: web.Request) -> web.Response:
    """GET /api/v1/session: the signed-in admin, where their grants come from, the CSRF token."""
    token = request.get(SESSION_TOKEN)
    body = session_json(request, current_admin(request), token)
    return web.json_response(body, headers={"Cache-Control": NO_STORE})


async def sign_out(request: web.Request) -> web.Response:
    """DELETE /api/v1/session: end the request's web session on the server, clear its cookie."""
    token = request.get(SESSION_TOKEN)
    sessions = request.app[SESSIONS]
    if token is not None and await sessions.end(token):
        identity = current_admin(request)
        await sessions.store.append_audit(
            actor=identity.actor,
            action=AUDIT_SIGN_OUT,
            details={"remote": request.remote or "?"},
        )
    response = web.Response(status=204, headers={"Cache-Control": NO_STORE})
    sessions.clear_cookie(response, request)
    return response
