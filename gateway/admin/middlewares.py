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
    E_SIGN_IN_METHOD_DISABLED,
    E_SIGN_IN_REFUSED,
    E_SIGN_IN_UNAVAILABLE,
    E_TOKEN_INVALID,
    E_UNAUTHORIZED,
    E_UNTRUSTED_PROXY,
    M_API_KEY_FORBIDDEN,
    M_CSRF_CONTENT_TYPE,
    M_CSRF_ORIGIN,
    ApiError,
)
from gateway.admin.identity import (
    Identity,
    IdentityRefused,
    Source,
    TokenInvalid,
    local_identity,
)
from gateway.admin.parsing import is_json_content_type
from gateway.admin.sessions import BACKGROUND_HEADER, M_LOCAL_DISABLED, SessionManager
from gateway.admin.trusted_header import TrustedHeader, UntrustedPeer
from gateway.proxy.credentials import carries_api_key
from gateway.runtime.appkeys import (
    ADMIN,
    AUTH_KIND,
    AUTHENTICATOR,
    SESSION_TOKEN,
    SESSIONS,
    TRUSTED_HEADER,
)

# Route names served without credentials: probes, the page and its assets, and sign-in.
PUBLIC_ROUTES = frozenset(
    {
        "healthz",
        "readyz",
        "metrics",
        "page",
        "static",
        "sign_in",
        "sign_in_methods",
        "oidc_start",
        "oidc_callback",
        "oidc_logout",
    }
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # every other method changes state
SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values let through
SERVER = "keygate"  # the Server header: no framework or version
# Sources whose tokens a script may present as `Authorization: Bearer <JWT>`.
BEARER_SOURCES: tuple[Source, ...] = ("oidc", "backend")
M_NO_CREDENTIALS = (
    "sign in first (local admin accounts are disabled; use your organisation's sign-in)"
)
M_NO_BEARER = (
    "bearer tokens need admin.sign_in.methods to list oidc or backend; "
    "an API key (kg_...) never works here"
)
M_UNTRUSTED_PROXY = (
    "the {header} header is only accepted from the sign-in proxy's addresses "
    "(admin.sign_in.trusted_header.trusted_proxies)"
)
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


async def authenticate(request: web.Request) -> Identity:
    """Return the admin of a request: Authorization (Basic or Bearer), the sign-in proxy's
    token header, else the session cookie.

    Basic keeps working for scripts while local accounts are enabled; a bearer JWT is
    verified like a sign-in's token; the proxy's header counts only from its addresses. A
    request with none of them gets Basic's 401. A cookie-authenticated state change must
    also carry the session's CSRF token.
    """
    sessions = request.app[SESSIONS]
    authorization = request.headers.getall(hdrs.AUTHORIZATION, [])
    if authorization:
        scheme = authorization[0].split(None, 1)[0].lower() if authorization[0].strip() else ""
        if scheme == "bearer" and len(authorization) == 1:
            request[AUTH_KIND] = "bearer"
            return await bearer_identity(sessions, authorization[0].split(None, 1)[1:])
        if not sessions.local_enabled:
            raise ApiError(403, E_SIGN_IN_METHOD_DISABLED, M_LOCAL_DISABLED)
        request[AUTH_KIND] = "basic"
        return local_identity(await request.app[AUTHENTICATOR].authenticate(request))
    header = request.app[TRUSTED_HEADER]
    if header is not None and header.header in request.headers:
        request[AUTH_KIND] = "header"
        return await header_identity(header, request)
    token = sessions.token_of(request)
    if token is None:
        if not sessions.local_enabled:
            raise ApiError(401, E_UNAUTHORIZED, M_NO_CREDENTIALS)
        return local_identity(await request.app[AUTHENTICATOR].authenticate(request))
    background = BACKGROUND_HEADER in request.headers
    identity = await sessions.resolve(
        token, secure=request.secure, activity=not background, address=request.remote or "?"
    )
    if request.method not in SAFE_METHODS:
        sessions.check_csrf(request, token)
    request[SESSION_TOKEN] = token
    request[AUTH_KIND] = "session"
    return identity


async def bearer_identity(sessions: SessionManager, rest: list[str]) -> Identity:
    """Return the identity of a script's bearer JWT, verified by the provider's or the
    backend's verifier (whichever is configured and takes it), or raise a 4xx/503."""
    token = rest[0].strip() if rest else ""
    candidates = [sessions.sources[s] for s in BEARER_SOURCES if s in sessions.sources]
    if not candidates:
        raise ApiError(401, E_UNAUTHORIZED, M_NO_BEARER)
    first: TokenInvalid | None = None
    for source in candidates:
        try:
            return await source.bearer(token)
        except TokenInvalid as error:
            first = first or error
        except IdentityRefused as error:
            raise ApiError(403, E_SIGN_IN_REFUSED, error.reason) from None
    assert first is not None
    if first.unavailable:
        raise ApiError(503, E_SIGN_IN_UNAVAILABLE, first.reason)
    raise ApiError(401, E_TOKEN_INVALID, f"bearer token refused: {first.reason}")


async def header_identity(header: TrustedHeader, request: web.Request) -> Identity:
    """Return the identity in the sign-in proxy's token header, or raise a 4xx/503."""
    try:
        return await header.from_request(request.remote, request.headers.getall(header.header))
    except UntrustedPeer:
        message = M_UNTRUSTED_PROXY.format(header=header.header)
        raise ApiError(403, E_UNTRUSTED_PROXY, message) from None
    except TokenInvalid as error:
        if error.unavailable:
            raise ApiError(503, E_SIGN_IN_UNAVAILABLE, error.reason) from None
        raise ApiError(
            401, E_TOKEN_INVALID, f"the {header.header} token is refused: {error.reason}"
        ) from None
    except IdentityRefused as error:
        raise ApiError(403, E_SIGN_IN_REFUSED, error.reason) from None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require admin credentials on every matched route except the public ones."""
    match = request.match_info
    if match.http_exception is None and match.route.name not in PUBLIC_ROUTES:
        request[ADMIN] = await authenticate(request)
    return await handler(request)


def current_admin(request: web.Request) -> Identity:
    """Return the authenticated admin of a request."""
    return request[ADMIN]
