"""The admin app factory: routes, middlewares and resources of the admin listener (wiring only)."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.admin import (
    audit_handlers,
    health,
    insight_handlers,
    key_handlers,
    oidc_handlers,
    openapi,
    page,
    policy_handlers,
    session_handlers,
    usage_handlers,
)
from gateway.admin.backend_sign_in import BackendSignIn
from gateway.admin.basic_auth import Authenticator
from gateway.admin.errors import error_middleware
from gateway.admin.identity import GrantMapping, IdentitySource, Source
from gateway.admin.middlewares import (
    add_security_headers,
    api_key_middleware,
    auth_middleware,
    csrf_middleware,
)
from gateway.admin.oidc_sign_in import OidcSignIn
from gateway.admin.parsing import MAX_BODY_BYTES
from gateway.admin.sessions import SessionManager
from gateway.admin.throttle import LoginThrottle
from gateway.admin.trusted_header import TrustedHeader
from gateway.runtime.appkeys import AUTHENTICATOR, RUNTIME, SESSIONS, TRUSTED_HEADER
from gateway.runtime.context import Runtime
from gateway.settings import SignInSettings

KEYS = "/api/v1/keys"
# A key by id or name; not an action's name (its literal path answers every method, and
# a 405 there names only the action's own methods in Allow).
_NOT_AN_ACTION = "|".join(re.escape(action) for action in key_handlers.KEY_ACTIONS)
KEY = f"{KEYS}/{{id:(?!(?:{_NOT_AN_ACTION})\\Z)[^{{}}/]+}}"
SESSION = "/api/v1/session"

# (method, path, handler, route name); the OpenAPI document lists exactly these.
ROUTES: tuple[tuple[str, str, Handler, str | None], ...] = (
    ("GET", "/healthz", health.healthz, "healthz"),
    ("GET", "/readyz", health.readyz, "readyz"),
    ("GET", "/metrics", health.metrics, "metrics"),
    ("GET", "/", page.page, "page"),
    ("GET", r"/static/{name:[A-Za-z0-9_.-]+}", page.static, "static"),
    ("GET", "/api/v1/openapi.json", openapi.openapi, None),
    ("POST", SESSION, session_handlers.sign_in, "sign_in"),
    ("GET", SESSION, session_handlers.who_am_i, None),
    ("DELETE", SESSION, session_handlers.sign_out, None),
    ("GET", oidc_handlers.METHODS, oidc_handlers.methods, "sign_in_methods"),
    ("GET", oidc_handlers.OIDC_START, oidc_handlers.start, "oidc_start"),
    ("GET", oidc_handlers.OIDC_CALLBACK, oidc_handlers.callback, "oidc_callback"),
    ("GET", oidc_handlers.OIDC_LOGOUT, oidc_handlers.logout, "oidc_logout"),
    ("GET", "/api/v1/changes", key_handlers.changes, None),
    ("POST", KEYS, key_handlers.create_key, None),
    ("GET", KEYS, key_handlers.list_keys, None),
    ("POST", f"{KEYS}/revoke-all", key_handlers.revoke_all, None),
    ("POST", f"{KEYS}/reinstate-all", key_handlers.reinstate_all, None),
    ("POST", f"{KEYS}/delete-revoked", key_handlers.delete_revoked, None),
    ("POST", f"{KEYS}/identify", key_handlers.identify_key, None),
    ("GET", f"{KEYS}/batch-counts", key_handlers.batch_counts, None),
    ("GET", f"{KEYS}/summary", insight_handlers.keys_summary, None),
    ("POST", f"{KEYS}/batch", key_handlers.batch_keys, None),
    ("GET", KEY, key_handlers.get_key, None),
    ("PATCH", KEY, key_handlers.update_key, None),
    ("DELETE", KEY, key_handlers.delete_key, None),
    ("POST", f"{KEY}/revoke", key_handlers.revoke_key, None),
    ("POST", f"{KEY}/reinstate", key_handlers.reinstate_key, None),
    ("POST", f"{KEY}/roll", key_handlers.roll_key, None),
    ("GET", f"{KEY}/usage", usage_handlers.key_usage, None),
    ("GET", f"{KEY}/rules", insight_handlers.key_rules, None),
    ("GET", f"{KEY}/addresses", insight_handlers.key_addresses, None),
    ("GET", f"{KEY}/advice", insight_handlers.key_advice, None),
    ("GET", "/api/v1/roles", policy_handlers.list_roles, None),
    ("GET", "/api/v1/policy", policy_handlers.policy_info, None),
    ("POST", "/api/v1/policy/explain", policy_handlers.explain, None),
    ("GET", "/api/v1/audit", audit_handlers.list_audit, None),
)


def identity_sources(sign_in: SignInSettings) -> dict[Source, IdentitySource]:
    """Return the configured ways in other than local accounts and the proxy header, by source."""
    mapping = GrantMapping.from_settings(sign_in.grants)
    sources: dict[Source, IdentitySource] = {}
    if "backend" in sign_in.methods and sign_in.backend is not None:
        sources["backend"] = BackendSignIn(sign_in.backend, mapping)
    if "oidc" in sign_in.methods and sign_in.oidc is not None:
        sources["oidc"] = OidcSignIn(sign_in.oidc, mapping)
    return sources


def trusted_header(sign_in: SignInSettings) -> TrustedHeader | None:
    """Return the sign-in proxy's header reader when trusted_header is configured."""
    if "trusted_header" not in sign_in.methods or sign_in.trusted_header is None:
        return None
    return TrustedHeader(sign_in.trusted_header, GrantMapping.from_settings(sign_in.grants))


async def _close_sources(app: web.Application) -> None:
    """on_cleanup: close the identity sources' HTTP sessions (the OpenID provider's)."""
    for source in app[SESSIONS].sources.values():
        if isinstance(source, OidcSignIn):
            await source.client.close()


def create_admin_app(
    runtime: Runtime,
    *,
    throttle: LoginThrottle | None = None,
    authenticator: Authenticator | None = None,
    sessions: SessionManager | None = None,
) -> web.Application:
    """Build the admin listener's app on a runtime whose store is already open.

    The caller owns the runtime (store, table, policy); this app owns the password-hashing
    pool. `throttle`/`authenticator` let tests and deployments tune login throttling,
    `sessions` the web sessions' clock.
    """
    app = web.Application(
        middlewares=[error_middleware, api_key_middleware, csrf_middleware, auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[RUNTIME] = runtime
    app.on_response_prepare.append(add_security_headers)
    auth = authenticator if authenticator is not None else Authenticator(runtime.store, throttle)
    app[AUTHENTICATOR] = auth
    sign_in = runtime.settings.admin.sign_in
    manager = (
        sessions
        if sessions is not None
        else SessionManager(runtime.store, runtime.settings.sessions)
    )
    manager.local_enabled = "local" in sign_in.methods
    for kind, way_in in identity_sources(sign_in).items():
        manager.sources.setdefault(kind, way_in)
    app[SESSIONS] = manager
    app[TRUSTED_HEADER] = trusted_header(sign_in)
    app.cleanup_ctx.append(auth.context)
    app.on_cleanup.append(_close_sources)
    for method, path, handler, name in ROUTES:
        app.router.add_route(method, path, handler, name=name)
    return app
