"""JSON error answers of the proxy listener: `{"error": code, "message": text}`."""

from __future__ import annotations

import json

from aiohttp import web

# E_BAD_TARGET lives with the refusals (the shared decision answers it); importable here too.
from gateway.proxy.refusals import E_BAD_TARGET as E_BAD_TARGET
from gateway.proxy.refusals import WWW_AUTHENTICATE_VALUE, Refusal

# The upstream's errors carry their own answers (gateway.upstream.errors); importable here too.
from gateway.upstream.errors import E_CLIENT_BODY_TIMEOUT as E_CLIENT_BODY_TIMEOUT
from gateway.upstream.errors import E_UPSTREAM_BAD_RESPONSE as E_UPSTREAM_BAD_RESPONSE
from gateway.upstream.errors import E_UPSTREAM_DOWN as E_UPSTREAM_DOWN
from gateway.upstream.errors import E_UPSTREAM_HEAD_TOO_LARGE as E_UPSTREAM_HEAD_TOO_LARGE
from gateway.upstream.errors import E_UPSTREAM_TIMEOUT as E_UPSTREAM_TIMEOUT

E_INTERNAL = "internal_error"
E_BAD_REQUEST = "bad_request"
E_HTTP_VERSION = "http_version_not_supported"  # 505: HTTP/2 and later over an HTTP/1 connection
E_TRANSFER_CODING = "transfer_coding_not_implemented"  # 501: a request coding besides chunked
E_BAD_REQUEST_ID = "bad_request_id"  # 400: an X-Request-Id holding something shaped like a key
_JSON_TYPE = "application/json"
# What keygate's own answers say in `Server` (never the aiohttp or Python version).
SERVER_NAME = "keygate"


def error_response(status: int, code: str, message: str, challenge: bool = False) -> web.Response:
    """Return a JSON error response `{"error", "message"}`."""
    response = web.Response(
        status=status,
        body=json.dumps({"error": code, "message": message}).encode(),
        content_type=_JSON_TYPE,
        headers={"Server": SERVER_NAME},
    )
    if challenge:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE_VALUE
    return response


def refusal_response(refusal: Refusal) -> web.Response:
    """Render an auth refusal as its JSON error response."""
    return error_response(refusal.status, refusal.code, refusal.message, refusal.challenge)
