"""Typed aiohttp application and request state keys, declared in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

# The listeners' types are named for the type checker only: this module sits below the
# listeners (proxy, admin), which import it; the keys' types are checked by mypy, not at run
# time (aiohttp uses them only in a key's repr).
if TYPE_CHECKING:
    from gateway.admin.basic_auth import Authenticator
    from gateway.admin.identity import Identity
    from gateway.admin.sessions import SessionManager
    from gateway.admin.trusted_header import TrustedHeader
    from gateway.proxy.notes import RequestNotes
    from gateway.runtime.context import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("admin_authenticator")
SESSIONS: web.AppKey[SessionManager] = web.AppKey("admin_sessions")
# The sign-in proxy's token header, when admin.sign_in.methods lists trusted_header.
TRUSTED_HEADER: web.AppKey[TrustedHeader | None] = web.AppKey("admin_trusted_header")
ADMIN: web.RequestKey[Identity] = web.RequestKey("admin")
# The web session token a request was authenticated by (absent for HTTP Basic).
SESSION_TOKEN: web.RequestKey[str] = web.RequestKey("session_token")
# How a request's admin was authenticated: basic, session, bearer or header.
AUTH_KIND: web.RequestKey[str] = web.RequestKey("auth_kind")
# What the proxy notes about a request (id, key name, upstream answer) for the access log.
NOTES: web.RequestKey[RequestNotes] = web.RequestKey("notes")
