"""Typed aiohttp application and request state keys, declared in one place."""

from __future__ import annotations

from aiohttp import web

from gateway.admin.basic_auth import Authenticator
from gateway.admin.sessions import SessionManager
from gateway.request_notes import RequestNotes
from gateway.runtime import Runtime
from gateway.store.base import AdminAccount

RUNTIME = web.AppKey("runtime", Runtime)
AUTHENTICATOR = web.AppKey("admin_authenticator", Authenticator)
SESSIONS = web.AppKey("admin_sessions", SessionManager)
ADMIN = web.RequestKey("admin", AdminAccount)
# The web session token a request was authenticated by (absent for HTTP Basic).
SESSION_TOKEN = web.RequestKey("session_token", str)
# What the proxy notes about a request (id, key name, upstream answer) for the access log.
NOTES = web.RequestKey("notes", RequestNotes)
