"""Admin API session handlers: sign in (start a web session), who am I, sign out."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.admin.errors import NO_STORE, ApiError
from gateway.admin.middlewares import current_admin
from gateway.admin.models import SIGN_IN_WORDS, SignIn, convert, fields
from gateway.admin.parsing import read_json_object
from gateway.admin.sessions import csrf_token
from gateway.runtime.appkeys import AUTHENTICATOR, RUNTIME, SESSION_TOKEN, SESSIONS
from gateway.store.base import AdminAccount

log = logging.getLogger("keygate.admin.session")

SIGN_IN_FIELDS = fields(SignIn)
AUDIT_SIGN_IN = "admin_sign_in"
AUDIT_SIGN_OUT = "admin_sign_out"


def session_json(request: web.Request, account: AdminAccount, token: str | None) -> dict[str, Any]:
    """Return who is signed in, what they may grant and (for a session) its CSRF token."""
    settings = request.app[SESSIONS].settings
    return {
        "admin": account.name,
        "grants": sorted(account.grants),
        "grant_all": account.grant_all,
        "auth": "basic" if token is None else "session",
        "csrf_token": None if token is None else csrf_token(token),
        "idle_timeout": settings.idle_timeout,
        "absolute_timeout": settings.absolute_timeout,
        "expiry_warn_days": request.app[RUNTIME].settings.expiry.warn_days,
    }


async def sign_in(request: web.Request) -> web.Response:
    """POST /api/v1/session: check an admin's name and password and start a web session.

    The same check as HTTP Basic (throttle, hold-back, audit of failures); the answer sets
    the session cookie and carries the session's CSRF token.
    """
    data = await read_json_object(request, SIGN_IN_FIELDS)
    credentials = convert(data, SignIn, SIGN_IN_WORDS)
    name, password = credentials.name, credentials.password
    address = request.remote or "?"
    try:
        account = await request.app[AUTHENTICATOR].check(address, (name, password))
    except ApiError as error:
        error.headers.pop("WWW-Authenticate", None)  # a form, not a Basic challenge
        raise
    sessions = request.app[SESSIONS]
    token = await sessions.start(account, address)
    await request.app[AUTHENTICATOR].store.append_audit(
        actor=account.name, action=AUDIT_SIGN_IN, details={"remote": address}
    )
    log.info("admin %r signed in from %s", account.name, address)
    response = web.json_response(
        session_json(request, account, token), headers={"Cache-Control": NO_STORE}
    )
    sessions.set_cookie(response, request, token)
    return response


async def who_am_i(request: web.Request) -> web.Response:
    """GET /api/v1/session: the signed-in admin, their grants and the session's CSRF token."""
    token = request.get(SESSION_TOKEN)
    body = session_json(request, current_admin(request), token)
    return web.json_response(body, headers={"Cache-Control": NO_STORE})


async def sign_out(request: web.Request) -> web.Response:
    """DELETE /api/v1/session: end the request's web session on the server, clear its cookie."""
    token = request.get(SESSION_TOKEN)
    sessions = request.app[SESSIONS]
    if token is not None and await sessions.end(token):
        account = current_admin(request)
        await sessions.store.append_audit(
            actor=account.name,
            action=AUDIT_SIGN_OUT,
            details={"remote": request.remote or "?"},
        )
    response = web.Response(status=204, headers={"Cache-Control": NO_STORE})
    sessions.clear_cookie(response, request)
    return response
