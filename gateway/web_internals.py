"""keygate's uses of aiohttp internals, in one place, pinned by pyproject's upper bound.

tests/test_web_internals.py fails when an aiohttp release changes any of them:
- `StreamResponse._prepare_headers` (no invented Content-Type on relayed answers);
- `StreamResponse._send_headers_immediately` (head and small body in one write);
- `StreamResponse._write_headers` and `_req` (non-ASCII upstream heads written byte for byte);
- `RequestHandler` and its `handle_error` (parser refusals answered as JSON);
- `AppRunner._make_server` and the built `Server`'s `request_handler`, `request_factory`,
  `handler_cancellation` and `_kwargs` (an application's connections get that handler too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from gateway.error_responses import E_BAD_REQUEST, E_INTERNAL, error_response

log = logging.getLogger("keygate")


class RelayedResponse(web.StreamResponse):
    """A streamed response carrying the upstream's headers: aiohttp adds no Content-Type or Server.

    aiohttp defaults a body's missing Content-Type to application/octet-stream; a proxy must
    not invent one (RFC 9110 section 8.3 lets the recipient sniff or assume instead). Nor does
    it announce aiohttp's and Python's versions in a `Server` the upstream did not send.
    """

    # The upstream's transfer codings other than chunked (set per response when any).
    transfer_codings: tuple[str, ...] = ()

    async def _prepare_headers(self) -> None:
        headers = self.headers
        untyped = hdrs.CONTENT_TYPE not in headers
        unnamed = hdrs.SERVER not in headers
        await super()._prepare_headers()
        if untyped:
            headers.popall(hdrs.CONTENT_TYPE, None)
        if unnamed:
            headers.popall(hdrs.SERVER, None)
        if self.transfer_codings and hdrs.TRANSFER_ENCODING in headers:
            # The upstream's codings (gzip ...) stay applied to the body keygate re-chunks:
            # relayed in front of chunked, never silently dropped (RFC 9112 section 6.1).
            headers[hdrs.TRANSFER_ENCODING] = ", ".join((*self.transfer_codings, "chunked"))


class RelayedWholeResponse(RelayedResponse):
    """A relayed response whose body is at hand: head and body go out in one write.

    aiohttp's StreamResponse sends its head as soon as it is prepared; `web.Response` opts
    out with this class attribute so the head waits for the body. Streams keep the default,
    so a client sees the head of a slow stream at once.
    """

    _send_headers_immediately = False


class Latin1Head(RelayedResponse):
    """A relayed response whose head holds non-ASCII bytes, written back byte for byte.

    Header strings hold the upstream's bytes as latin-1 (see UpstreamResponse). aiohttp
    serialises heads as UTF-8, byte-exact only for ASCII: it would re-encode (or, for lone
    surrogates, drop) other bytes. So such a head is written here, straight to the
    transport, before any body byte. Only these rare heads pay for it.
    """

    async def _write_headers(self) -> None:
        request = self._req
        assert request is not None
        version = request.version
        lines = [f"HTTP/{version.major}.{version.minor} {self.status} {self.reason}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client connection closed")
        transport.write(head)
        request.writer.output_size += len(head)


class Latin1WholeHead(Latin1Head, RelayedWholeResponse):
    """A whole relayed response with a non-ASCII head."""


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, with parser-level errors answered as keygate's JSON.

    Malformed requests (asterisk-form or over-long request lines, smuggling attempts) never
    reach the proxy handler; aiohttp would answer them in plain text and log a traceback
    each, which hostile clients could use to flood the log. aiohttp's parser messages quote
    the offending header line (credentials included), so only the error's class is logged
    and nothing of it is echoed.
    """

    error_headers: Mapping[str, str] = {}  # added to every error answer (set per server)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not parse or handle with a JSON error."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:
            log.error("error handling request from %s", request.remote, exc_info=exc)
            response = error_response(status, E_INTERNAL, "internal error")
        else:
            # Only the kind of error: aiohttp's message quotes the offending header line, which
            # may hold a key or Basic credentials.
            reason = type(exc).__name__ if exc is not None else "error"
            log.info("refused malformed request from %s: %s", request.remote, reason)
            response = error_response(status, E_BAD_REQUEST, "malformed HTTP request")
        response.headers.update(self.error_headers)
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """A low-level aiohttp server whose connections use JsonErrorRequestHandler."""

    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any = None,
        handler_cancellation: bool = False,
        error_headers: Mapping[str, str] | None = None,
        **handler_kwargs: Any,
    ) -> None:
        """Serve `handler`; `handler_kwargs` go to every connection's RequestHandler.

        `error_headers` are added to every parser-level error answer.
        """
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            **handler_kwargs,
        )
        # Kept here rather than read back from the base class's private fields.
        self._handler_loop = asyncio.get_running_loop()
        self._handler_kwargs = handler_kwargs
        self._error_headers = dict(error_headers or {})

    def __call__(self) -> RequestHandler:
        """Return the handler for one new connection."""
        handler = JsonErrorRequestHandler(self, loop=self._handler_loop, **self._handler_kwargs)
        handler.error_headers = self._error_headers
        return handler


class JsonErrorAppRunner(web.AppRunner):
    """An AppRunner whose connections use JsonErrorRequestHandler (parser refusals as JSON)."""

    def __init__(
        self,
        app: web.Application,
        *,
        error_headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Run `app` like web.AppRunner; `error_headers` go on every parser-level error answer."""
        super().__init__(app, **kwargs)
        self._error_headers = dict(error_headers or {})

    async def _make_server(self) -> web.Server:
        # The base class starts the app up and builds aiohttp's Server for it; serve the same
        # handler, request factory and connection settings through JsonErrorServer instead.
        plain = await super()._make_server()
        return JsonErrorServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            error_headers=self._error_headers,
            **plain._kwargs,
        )
