"""The proxy listener's access log: one line per request, naming the key, never its secret."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.state import KEY_NAME

access_logger = logging.getLogger("keygate.access")


class ProxyAccessLogger(AbstractAccessLogger):
    """One line per proxied request: peer, request line, status, size, time, key name."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access line (never a credential: only the key's name)."""
        self.logger.info(
            '%s "%s %s" %s %s %.1fms key=%s',
            request.remote,
            request.method,
            request.raw_path,
            response.status,
            response.body_length,
            time * 1000,
            request.get(KEY_NAME, "-"),
        )
