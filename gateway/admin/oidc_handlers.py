"""The sign-in routes of the OpenID provider and the page's list of ways in.

`GET /api/v1/session/methods` (public) tells the page which ways in to offer.
`GET /api/v1/session/oidc/start` sends the browser to the provider (code flow, PKCE S256,
state and nonce in a signed flow cookie); `GET /api/v1/session/oidc/callback` completes the
sign-in and starts keygate's own server-side session; `GET /api/v1/session/oidc/logout`
sends the browser to the provider's logout page (after `DELETE /api/v1/session`). Every
outcome of a browser route is a 303: to the provider, to the page, or to the page with
`#sign-in-error=CODE` (a fragment: never sent to a server or written to a log), which the
page explains. Where the browser returns to is always the page: never a URL from a request.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.admin.errors import E_NOT_FOUND, NO_STORE, ApiError
from gateway.admin.identity import IdentityRefused, TokenInvalid
from gateway.admin.oidc import IdTokenRefused, ProviderRefused, ProviderUnavailable, error_code
from gateway.admin.oidc_flow import FLOW_TTL, FlowInvalid, new_flow, seal, unseal
from gateway.admin.oidc_sign_in import OidcSignIn, credentials_of
from gateway.proxy.hygiene import KEYGATE_COOKIE_MARK
from gateway.runtime.appkeys import AUTH_KIND, RUNTIME, SESSIONS

log = logging.getLogger("keygate.admin.oidc")

METHODS = "/api/v1/session/methods"
OIDC_START = "/api/v1/session/oidc/start"
OIDC_CALLBACK = "/api/v1/session/oidc/callback"
OIDC_LOGOUT = "/api/v1/session/oidc/logout"
# The flow cookie's names carry the session cookie's mark, so the proxy strips them too.
FLOW_COOKIE = f"{KEYGATE_COOKIE_MARK}-oidc"  # over plain HTTP, scoped to the OIDC routes
SECURE_FLOW_COOKIE = f"__Host-{KEYGATE_COOKIE_MARK}-oidc"  # over TLS: Secure, Path=/
FLOW_COOKIE_PATH = "/api/v1/session/oidc"
PAGE = "/"
MAX_CALLBACK_VALUE = 4096  # characters of one callback parameter looked at (codes are ~50)
AUDIT_SIGN_IN = "admin_sign_in"
AUDIT_REFUSED = "admin_sign_in_refused"
M_OIDC_OFF = "sign-in with an OpenID provider is not configured (admin.sign_in.methods, oidc)"

# The page's explanations of these codes live in web/app.js (SIGN_IN_ERRORS).
PROVIDER_UNAVAILABLE = "provider_unavailable"
SIGN_IN_EXPIRED = "sign_in_expired"
PROVIDER_REFUSED = "provider_refused"
TOKEN_INVALID = "token_invalid"
NOT_ALLOWED = "not_allowed"
CANCELLED = "cancelled"


def oidc_of(request: web.Request) -> OidcSignIn:
    """Return the configured OpenID provider, or raise 404 when there is none."""
    source = request.app[SESSIONS].sources.get("oidc")
    if not isinstance(source, OidcSignIn):
        raise ApiError(404, E_NOT_FOUND, M_OIDC_OFF)
    return source


def flow_cookie_name(secure: bool) -> str:
    """Return the flow cookie's name: the `__Host-` one over TLS."""
    return SECURE_FLOW_COOKIE if secure else FLOW_COOKIE


def _flow_cookie_path(secure: bool) -> str:
    return "/" if secure else FLOW_COOKIE_PATH


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": NO_STORE})


def _clear_flow(response: web.Response, request: web.Request) -> None:
    secure = request.secure
    response.set_cookie(
        flow_cookie_name(secure),
        "",
        max_age=0,
        path=_flow_cookie_path(secure),
        httponly=True,
        samesite="Lax",
        secure=secure,
    )


def _back(request: web.Request, code: str, reason: str | None = None) -> web.Response:
    """Send the browser back to the page, saying why it was not signed in; end the flow."""
    fragment = f"sign-in-error={code}" + (f"&reason={reason}" if reason else "")
    response = _see_other(f"{PAGE}#{fragment}")
    _clear_flow(response, request)
    return response


async def methods(request: web.Request) -> web.Response:
    """GET /api/v1/session/methods: which ways in the page offers (public)."""
    sign_in = request.app[RUNTIME].settings.admin.sign_in
    source = request.app[SESSIONS].sources.get("oidc")
    oidc: dict[str, Any] | None = None
    if isinstance(source, OidcSignIn):
        oidc = {"name": source.name, "start": OIDC_START, "logout": OIDC_LOGOUT}
    body = {
        "methods": list(sign_in.methods),
        "local": "local" in sign_in.methods,
        "backend": "backend" in sign_in.methods,
        "oidc": oidc,
    }
    return web.json_response(body, headers={"Cache-Control": NO_STORE})


async def start(request: web.Request) -> web.Response:
    """GET /api/v1/session/oidc/start: send the browser to the provider's sign-in page."""
    oidc = oidc_of(request)
    try:
        discovery, _ = await oidc.client.discovery(fresh=True)
    except ProviderUnavailable as error:
        log.warning("OpenID sign-in could not start: %s", error)
        return _back(request, PROVIDER_UNAVAILABLE)
    flow = new_flow(oidc.clock())
    response = _see_other(oidc.client.authorization_url(discovery, flow))
    secure = request.secure
    response.set_cookie(
        flow_cookie_name(secure),
        seal(flow, oidc.flow_key),
        max_age=int(FLOW_TTL),
        path=_flow_cookie_path(secure),
        httponly=True,
        samesite="Lax",  # sent on the provider's top-level redirect back, not on sub-requests
        secure=secure,
    )
    return response


def _single(request: web.Request, name: str) -> str | None:
    """Return a callback parameter given once and of sane length; None when absent or not."""
    values = request.query.getall(name, [])
    if len(values) != 1 or not values[0] or len(values[0]) > MAX_CALLBACK_VALUE:
        return None
    return values[0]


async def callback(request: web.Request) -> web.Response:
    """GET /api/v1/session/oidc/callback: complete a sign-in and start keygate's session.

    The state must be this browser's flow (signed cookie, unexpired, not used before); the
    code is exchanged with the flow's PKCE verifier; the ID token must verify (signature,
    issuer, audience, expiry) and carry the flow's nonce; the identity's groups must be
    allowed to sign in. Anything else sends the browser back to the page with the reason.
    """
    oidc = oidc_of(request)
    sessions = request.app[SESSIONS]
    address = request.remote or "?"
    state = _single(request, "state") or ""
    try:
        flow = unseal(
            request.cookies.get(flow_cookie_name(request.secure)),
            oidc.flow_key,
            state,
            oidc.clock(),
        )
    except FlowInvalid as error:
        log.warning("OpenID callback from %s refused: %s", address, error)
        return _back(request, SIGN_IN_EXPIRED)
    if not oidc.used_states.consume(flow):
        log.warning("OpenID callback from %s refused: the sign-in was already completed", address)
        return _back(request, SIGN_IN_EXPIRED)
    issuer = request.query.get("iss")
    if issuer is not None and issuer != oidc.client.issuer:  # RFC 9207: a mix-up
        log.warning("OpenID callback from %s names another issuer", address)
        return _back(request, TOKEN_INVALID)
    failure = request.query.get("error")
    if failure is not None:
        reason = error_code(failure)
        return _back(request, CANCELLED if reason == "access_denied" else PROVIDER_REFUSED, reason)
    code = _single(request, "code")
    if code is None:
        return _back(request, PROVIDER_REFUSED, "no_code")
    try:
        tokens = await oidc.client.exchange(code, flow)
    except ProviderRefused as error:
        log.warning("OpenID provider refused a code from %s: %s", address, error.code)
        return _back(request, PROVIDER_REFUSED, error.code)
    except ProviderUnavailable as error:
        log.warning("OpenID code exchange failed: %s", error)
        return _back(request, PROVIDER_UNAVAILABLE)
    except TokenInvalid as error:
        log.warning("OpenID ID token refused: %s", error.reason)
        return _back(request, PROVIDER_UNAVAILABLE if error.unavailable else TOKEN_INVALID)
    except IdTokenRefused as error:
        log.warning("OpenID ID token refused: %s", error)
        return _back(request, TOKEN_INVALID)
    try:
        identity = oidc.identity(tokens.claims)
    except IdentityRefused as error:
        await sessions.store.append_audit(
            actor=_refused_actor(tokens.claims.get("sub")),
            action=AUDIT_REFUSED,
            details={"remote": address, "method": "oidc", "reason": error.reason},
        )
        return _back(request, NOT_ALLOWED)
    token = await sessions.start_identity(identity, credentials_of(tokens), address)
    await sessions.store.append_audit(
        actor=identity.actor,
        action=AUDIT_SIGN_IN,
        details={
            "remote": address,
            "method": "oidc",
            "display_name": identity.display_name,
            "groups": list(identity.groups),
        },
    )
    log.info("admin %r signed in with %s from %s", identity.actor, oidc.name, address)
    request[AUTH_KIND] = "session"
    response = _see_other(PAGE)
    _clear_flow(response, request)
    sessions.set_cookie(response, request, token)
    return response


def _refused_actor(subject: object) -> str:
    if isinstance(subject, str) and 0 < len(subject) <= 255 and subject.isprintable():
        return f"oidc:{subject}"
    return "unknown"


async def logout(request: web.Request) -> web.Response:
    """GET /api/v1/session/oidc/logout: the provider's logout page, where it offers one.

    The page calls it after ending keygate's session (DELETE /api/v1/session); the provider
    returns the browser to the page. Without a logout endpoint (Google) it is the page.
    """
    oidc = oidc_of(request)
    try:
        discovery, _ = await oidc.client.discovery()
    except ProviderUnavailable as error:
        log.warning("OpenID logout: %s", error)
        return _see_other(PAGE)
    return _see_other(oidc.client.end_session_url(discovery, oidc.page_url) or PAGE)
