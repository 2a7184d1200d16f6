"""Typed aiohttp application and request state keys, declared in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.runtime import Runtime
from gateway.store.base import AdminAccount

if TYPE_CHECKING:
    from gateway.admin.auth import Authenticator

RUNTIME = web.AppKey("runtime", Runtime)
# The admin listener's authenticator (typed by annotation: its module imports this one).
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("admin_authenticator")
ADMIN = web.RequestKey("admin", AdminAccount)
