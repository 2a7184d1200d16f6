"""The proxy listener's access log: one line per request, naming the key, never its secret."""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway import access_writer
from gateway.logs import json_access_line
from gateway.state import KEY_NAME, RELAY_INCOMPLETE, REQUEST_ID, UPSTREAM_MS, UPSTREAM_STATUS

access_logger = logging.getLogger("keygate.access")
# A key anywhere in the target (path or query, `_` raw or percent-encoded): kept to its
# display prefix (`kg_` + 7 characters), the rest replaced.
_KEY_IN_TARGET = re.compile(r"(kg(?:_|%5[fF])[0-9A-Za-z]{7})[0-9A-Za-z]+")


def redact_keys(target: str) -> str:
    """Return a request target with every key cut to its display prefix."""
    if "kg" not in target:
        return target
    return _KEY_IN_TARGET.sub(r"\1...", target)


class ProxyAccessLogger(AbstractAccessLogger):
    """One line per proxied request: peer, request line, status, size, time, request id, key.

    The size is the body bytes written; an answer cut short (the upstream or the client
    failed mid-body) ends its line with ` incomplete`, never passing for a whole one.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access line (never a credential: only the key's name)."""
        incomplete = " incomplete" if request.get(RELAY_INCOMPLETE) else ""
        message = (
            f'{request.remote} "{request.method} {redact_keys(request.raw_path)}" '
            f"{response.status} {response.body_length} {time * 1000:.1f}ms "
            f"rid={request.get(REQUEST_ID, '-')} key={request.get(KEY_NAME, '-')}{incomplete}"
        )
        writer = access_writer.active
        if writer is not None:
            writer.text(message)
        else:
            self.logger.info("%s", message)


class JsonProxyAccessLogger(AbstractAccessLogger):
    """The access record with every field apart, for `log.format: json` (gateway.logs)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access record (never a credential: only the key's name)."""
        path = redact_keys(request.raw_path)
        status = response.status
        fields = {
            "request_id": request.get(REQUEST_ID),
            "method": request.method,
            "path": path,
            "status": status,
            "bytes": response.body_length,
            "duration_ms": round(time * 1000, 2),
            "key": request.get(KEY_NAME),
            "upstream_status": request.get(UPSTREAM_STATUS),
            "upstream_ms": request.get(UPSTREAM_MS),
            "incomplete": True if request.get(RELAY_INCOMPLETE) else None,
            "remote": request.remote,
        }
        writer = access_writer.active
        if writer is not None:
            writer.raw(json_access_line(f"{request.method} {path} {status}", fields))
        else:
            self.logger.info("%s %s %s", request.method, path, status, extra=fields)
