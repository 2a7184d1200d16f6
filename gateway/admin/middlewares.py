"""Admin listener middlewares: refuse API keys first, then require admin credentials."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.admin.errors import E_API_KEY_FORBIDDEN, M_API_KEY_FORBIDDEN, ApiError
from gateway.credentials import carries_api_key
from gateway.state import ADMIN, AUTHENTICATOR
from gateway.store.base import AdminAccount

PUBLIC_ROUTES = frozenset({"healthz", "readyz", "metrics"})  # route names served without Basic auth


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse any request that carries an API key, before anything else looks at it."""
    if carries_api_key(request.headers.items()):
        raise ApiError(403, E_API_KEY_FORBIDDEN, M_API_KEY_FORBIDDEN)
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require admin Basic credentials on every matched route except the public ones."""
    match = request.match_info
    if match.http_exception is None and match.route.name not in PUBLIC_ROUTES:
        request[ADMIN] = await request.app[AUTHENTICATOR].authenticate(request)
    return await handler(request)


def current_admin(request: web.Request) -> AdminAccount:
    """Return the authenticated admin of a request."""
    return request[ADMIN]
