"""Admin listener middlewares: refuse API keys, then cross-site writes, then require credentials.

Credentials are HTTP Basic (scripts) or the web page's session cookie; a cookie-authenticated
write also needs the session's CSRF token.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from yarl import URL

from gateway.admin.errors import (
    E_API_KEY_FORBIDDEN,
    E_CSRF,
    M_API_KEY_FORBIDDEN,
    M_CSRF_CONTENT_TYPE,
    M_CSRF_ORIGIN,
    ApiError,
)
from gateway.admin.parsing import is_json_content_type
from gateway.admin.sessions import BACKGROUND_HEADER
from gateway.proxy.credentials import carries_api_key
from gateway.runtime.appkeys import ADMIN, AUTHENTICATOR, SESSION_TOKEN, SESSIONS
from gateway.store.base import AdminAccount

# Route names served without credentials: probes, the page and its assets, and sign-in.
PUBLIC_ROUTES = frozenset({"healthz", "readyz", "metrics", "page", "static", "sign_in"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # every other method changes state
SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values let through
SERVER = "keygate"  # the Server header: no framework or version
# Headers on every answer of the admin listener, parser refusals included.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": API_CSP,
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Server": SERVER,
}


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse any request that carries an API key, before anything else looks at it."""
    if carries_api_key(request.headers.items()):
        raise ApiError(403, E_API_KEY_FORBIDDEN, M_API_KEY_FORBIDDEN)
    return await handler(request)


def _origin_tuple(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme.lower(), (url.host or "").lower(), url.port)


def is_same_origin(origin: str, scheme: str, host: str) -> bool:
    """Return True when an Origin value names this listener (scheme, host and port)."""
    try:
        theirs = URL(origin)
        ours = URL.build(scheme=scheme, authority=host)
    except (ValueError, TypeError):
        return False
    if not theirs.scheme or not theirs.host or theirs.path not in ("", "/"):
        return False
    return _origin_tuple(theirs) == _origin_tuple(ours)


def check_same_site(request: web.Request) -> None:
    """Refuse (403 csrf) a state-changing request a browser could send from another site.

    Such a request must say it is JSON (a cross-site form cannot, without a CORS preflight
    this listener never grants), and whatever the browser says of its origin must be us.
    """
    if request.method in SAFE_METHODS:
        return
    if not is_json_content_type(request.content_type):
        raise ApiError(403, E_CSRF, M_CSRF_CONTENT_TYPE)
    site = request.headers.getall(hdrs.SEC_FETCH_SITE, [])
    if any(value.strip().lower() not in SAME_ORIGIN_SITES for value in site):
        raise ApiError(403, E_CSRF, M_CSRF_ORIGIN)
    origins = request.headers.getall(hdrs.ORIGIN, [])
    if any(not is_same_origin(value.strip(), request.scheme, request.host) for value in origins):
        raise ApiError(403, E_CSRF, M_CSRF_ORIGIN)


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse cross-site state changes on matched routes, before any credential is checked."""
    if request.match_info.http_exception is None:
        check_same_site(request)
    return await handler(request)


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: set the security headers and our Server on every answer.

    The page sets its own (still strict) Content-Security-Policy; every other answer gets
    the API's. A 401 to a script's fetch carries no Basic challenge, so the browser never
    pops up its own login box over the page's sign-in form.
    """
    csp = response.headers.get("Content-Security-Policy")
    response.headers.update(SECURITY_HEADERS)
    if csp is not None:
        response.headers["Content-Security-Policy"] = csp
    if response.status == 401 and request.headers.get("Sec-Fetch-Mode", "navigate") != "navigate":
        response.headers.popall("WWW-Authenticate", None)


async def authenticate(request: web.Request) -> AdminAccount:
    """Return the admin of a request: HTTP Basic when given, else the session cookie.

    Basic keeps working exactly as before for scripts; a request with neither gets Basic's
    401. A cookie-authenticated state change must also carry the session's CSRF token.
    """
    if request.headers.getall(hdrs.AUTHORIZATION, []):
        return await request.app[AUTHENTICATOR].authenticate(request)
    sessions = request.app[SESSIONS]
    token = sessions.token_of(request)
    if token is None:
        return await request.app[AUTHENTICATOR].authenticate(request)
    background = BACKGROUND_HEADER in request.headers
    account = await sessions.resolve(
        token, secure=request.secure, activity=not background, address=request.remote or "?"
    )
    if request.method not in SAFE_METHODS:
        sessions.check_csrf(request, token)
    request[SESSION_TOKEN] = token
    return account


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require admin credentials on every matched route except the public ones."""
    match = request.match_info
    if match.http_exception is None and match.route.name not in PUBLIC_ROUTES:
        request[ADMIN] = await authenticate(request)
    return await handler(request)


def current_admin(request: web.Request) -> AdminAccount:
    """Return the authenticated admin of a request."""
    return request[ADMIN]
