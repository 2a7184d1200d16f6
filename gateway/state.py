"""Typed aiohttp application and request state keys, declared in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.admin.basic_auth import Authenticator
from gateway.admin.sessions import SessionManager
from gateway.runtime import Runtime
from gateway.store.base import AdminAccount

RUNTIME = web.AppKey("runtime", Runtime)
AUTHENTICATOR = web.AppKey("admin_authenticator", Authenticator)
SESSIONS = web.AppKey("admin_sessions", SessionManager)
ADMIN = web.RequestKey("admin", AdminAccount)
# The web session token a request was authenticated by (absent for HTTP Basic).
SESSION_TOKEN = web.RequestKey("session_token", str)
# The name of the key a proxied request was made with (for the access log).
KEY_NAME = web.RequestKey("key_name", str)
# Set when a relayed answer was cut short (the upstream or the client failed mid-body).
RELAY_INCOMPLETE = web.RequestKey("relay_incomplete", bool)
# The request id (the client's X-Request-Id when well formed, else made), logged and relayed.
REQUEST_ID = web.RequestKey("request_id", str)
# The upstream's answer: its status and the milliseconds until its head arrived.
UPSTREAM_STATUS = web.RequestKey("upstream_status", int)
UPSTREAM_MS = web.RequestKey("upstream_ms", float)
