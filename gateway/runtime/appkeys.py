"""Typed aiohttp application and request state keys, declared in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

# The listeners' types are named for the type checker only: this module sits below the
# listeners (proxy, admin), which import it; the keys' types are checked by mypy, not at run
# time (aiohttp uses them only in a key's repr).
if TYPE_CHECKING:
    from gateway.admin.basic_auth import Authenticator
    from gateway.admin.sessions import SessionManager
    from gateway.proxy.notes import RequestNotes
    from gateway.runtime.context import Runtime
    from gateway.store.base import AdminAccount

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("admin_authenticator")
SESSIONS: web.AppKey[SessionManager] = web.AppKey("admin_sessions")
ADMIN: web.RequestKey[AdminAccount] = web.RequestKey("admin")
# The web session token a request was authenticated by (absent for HTTP Basic).
SESSION_TOKEN: web.RequestKey[str] = web.RequestKey("session_token")
# What the proxy notes about a request (id, key name, upstream answer) for the access log.
NOTES: web.RequestKey[RequestNotes] = web.RequestKey("notes")
