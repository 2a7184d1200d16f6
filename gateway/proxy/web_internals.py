"""keygate's uses of aiohttp internals, in one place, pinned by pyproject's upper bound.

tests/test_web_internals.py fails when an aiohttp release changes any of them:
- `StreamResponse._prepare_headers` (no invented Content-Type on relayed answers);
- `StreamResponse._send_headers_immediately` (head and small body in one write);
- `StreamResponse._write_headers` and `_req` (non-ASCII upstream heads written byte for byte);
- `RequestHandler` and its `handle_error` (parser refusals answered as JSON), its `_loop`
  (read by the head timer), its `data_received` (the first byte after an idle wait starts
  the head timer; the idle wait itself is aiohttp's keep-alive timer's), its `_messages`
  queue and `_ErrInfo` (parsed requests screened for protocol versions and transfer codings
  before any handler);
- `RequestHandler.access_logger` (the access line of a request whose handler is cancelled,
  which aiohttp never logs);
- `AppRunner._make_server` and the built `Server`'s `request_handler`, `request_factory`,
  `handler_cancellation` and `_kwargs` (an application's connections get that handler too);
- `StreamResponse._start`, `_keep_alive`, `_eof_sent`, `_body_length`, `_payload_writer`,
  `BaseRequest._payload_writer` and `_prepare_hook`, and `helpers.rfc822_formatted_time`
  (a bodiless answer written as one byte string: `BodilessAnswer`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

from aiohttp import HttpVersion10, HttpVersion11, hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from gateway.proxy.error_answers import (
    E_BAD_REQUEST,
    E_HTTP_VERSION,
    E_INTERNAL,
    E_TRANSFER_CODING,
    error_response,
)

log = logging.getLogger("keygate")
# aiohttp's own data_received, called without a super() lookup: it runs for every chunk.
_parse = RequestHandler.data_received


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


def header_lines(headers: Iterable[tuple[str, str]]) -> str:
    """Return headers as `Name: value\r\n` lines; raise ValueError for a CR or LF in one, as
    aiohttp's serialiser does (a value is never allowed to start a header of its own)."""
    lines = [f"{name}: {value}\r\n" for name, value in headers]
    text = "".join(lines)
    # One CR and one LF per line, the line's own end: any other was in a name or value.
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("newline or carriage return in a response header")
    return text


class BodilessAnswer(web.StreamResponse):
    """An answer without a body, its head written as one byte string, made in one piece.

    aiohttp's way (a header multidict filled, then Content-Type, Content-Length, Date, Server
    and Connection worked out, then serialised and written) costs as much as the forward-auth
    decision it carries. Here the fixed lines are made once per server (`fixed`, from
    `header_lines`) and the per-answer ones once per answer (`lines`); headers set later on
    `headers` (the request id) still go out. The head is what aiohttp writes for an empty
    `web.Response`: Content-Length 0 (none for HEAD), Date, and Connection when the
    connection's fate needs saying.
    """

    def __init__(self, status: int, fixed: str, lines: str) -> None:
        """An answer of `status` (a 2xx, 4xx or 5xx: one that may have a body) with those lines."""
        super().__init__(status=status)
        self._lines = fixed + lines

    @property
    def lines(self) -> str:
        """The answer's header lines made so far (the fixed ones and the per-answer ones)."""
        return self._lines

    async def _start(self, request: web.BaseRequest) -> AbstractStreamWriter:
        self._req = request
        writer = self._payload_writer = request._payload_writer
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        await request._prepare_hook(self)
        version = request.version
        lines = self._lines
        if self.headers:
            lines += header_lines(self.headers.items())
        if request.method != hdrs.METH_HEAD:
            lines += "Content-Length: 0\r\n"
        if version == HttpVersion11:
            connection = "" if keep_alive else "Connection: close\r\n"
        else:
            connection = "Connection: keep-alive\r\n" if keep_alive else ""
        head = (
            f"HTTP/{version.major}.{version.minor} {self.status} {self.reason}\r\n{lines}"
            f"Date: {rfc822_formatted_time()}\r\n{connection}\r\n"
        )
        await writer.write_eof(head.encode())
        self._eof_sent = True
        self._body_length = writer.output_size
        self._req = None
        self._payload_writer = None
        return writer


ETOO_MANY_CONNECTIONS = "too_many_connections"
_TOO_MANY_BODY = json.dumps(
    {"error": ETOO_MANY_CONNECTIONS, "message": "too many open connections; retry shortly"}
).encode()
# Written straight to a refused connection: no parser, no handler, no task for it.
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Server: keygate\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Length: %d\r\n\r\n%b" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)


class ProtocolRefusal(Exception):
    """A parsed request refused before any handler sees it: status, error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# RFC 9112 section 2.3: HTTP/1.x only on this connection. An HTTP/0.9 request line is not a
# request keygate can relay (no head, no Host); a later major version is well formed but
# served on its own connections (RFC 9110 section 15.6.6: 505).
HTTP_09 = ProtocolRefusal(400, E_BAD_REQUEST, "HTTP/0.9 requests are not accepted")
VERSION_NOT_SUPPORTED = ProtocolRefusal(
    505, E_HTTP_VERSION, "only HTTP/1.0 and HTTP/1.1 are served on this connection"
)
# RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
CODED_HTTP_10 = ProtocolRefusal(
    400, E_BAD_REQUEST, "an HTTP/1.0 request may not carry Transfer-Encoding"
)
# RFC 9112 section 6.1: a coding the server does not understand is answered 501. keygate
# forwards request bodies as they arrive, re-chunked; it understands chunked alone.
CODING_NOT_IMPLEMENTED = ProtocolRefusal(
    501, E_TRANSFER_CODING, "the only request transfer coding accepted is chunked"
)


def protocol_refusal(message: RawRequestMessage) -> ProtocolRefusal | None:
    """Return why a parsed request may not be served, or None (nearly always).

    aiohttp's parser accepts any HTTP version and, before a final chunked, any transfer
    coding (which it then ignores): the body would reach handlers and the upstream still
    coded, under a Transfer-Encoding of chunked alone. Codings with chunked not last are
    already refused by the parser (RFC 9112 section 6.3: 400).
    """
    version = message.version
    if version != HttpVersion11:
        if version == HttpVersion10:
            return CODED_HTTP_10 if hdrs.TRANSFER_ENCODING in message.headers else None
        return HTTP_09 if version.major == 0 else VERSION_NOT_SUPPORTED
    if message.chunked:
        fields = message.headers.getall(hdrs.TRANSFER_ENCODING, ())
        if len(fields) != 1 or fields[0].strip().lower() != "chunked":
            return CODING_NOT_IMPLEMENTED
    return None


class _ScreenedMessages(collections.deque[Any]):
    """aiohttp's queue of parsed requests, each screened as it is queued (protocol_refusal).

    Every parsed request passes through this queue (straight from the socket, or re-parsed
    after a declined upgrade), before a handler is chosen for it: a refused one is queued as
    aiohttp queues its own parser errors, and answered by `handle_error`.
    """

    def append(self, item: Any) -> None:
        """Queue a parsed request, or the refusal that replaces it."""
        message = item[0]
        # Nearly every request is HTTP/1.1 (aiohttp's parser hands out its one HttpVersion11)
        # and not chunked: two attribute reads, no call. Any other goes to the exact test.
        if type(message) is RawRequestMessage and (
            message.version is not HttpVersion11 or message.chunked
        ):
            refusal = protocol_refusal(message)
            if refusal is not None:
                error = _ErrInfo(status=refusal.status, exc=refusal, message=refusal.message)
                item = (error, item[1])
        _deque_append(self, item)


_deque_append = collections.deque.append


class JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, with parser-level errors answered as keygate's JSON.

    Malformed requests (asterisk-form or over-long request lines, smuggling attempts) never
    reach the proxy handler; aiohttp would answer them in plain text and log a traceback
    each, which hostile clients could use to flood the log. aiohttp's parser messages quote
    the offending header line (credentials included), so only the error's class is logged
    and nothing of it is echoed.
    """

    error_headers: Mapping[str, str] = {}  # added to every error answer (set per server)
    limits: ConnectionLimits | None = None  # set per server: head timeout, connection cap
    _head_timer: asyncio.TimerHandle | None = None
    _head_deadline = 0.0  # loop time by which the awaited request head must be complete
    _awaiting_head = False
    # Between requests on a kept connection, before the next head's first byte: the wait is
    # keepalive_timeout's (aiohttp's own timer), the head clock starts with that byte.
    _idle = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's handler, with every parsed request screened (see _ScreenedMessages)."""
        super().__init__(*args, **kwargs)
        self._messages = _ScreenedMessages()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept a connection, or refuse it at once when the server is at its cap."""
        super().connection_made(transport)
        limits = self.limits
        if limits is None:
            return
        if limits.over_capacity():
            # Refuse quickly rather than slow everyone: a canned answer, then close.
            # uvloop's transports are not asyncio.WriteTransport subclasses: cast, not check.
            cast(asyncio.Transport, transport).write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._start_head_clock()  # the first head: from connection open

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the head timer with the connection."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse request bytes; the first byte after an idle wait starts the head clock."""
        if self._idle:
            self._idle = False
            self._start_head_clock()
        _parse(self, data)

    def await_head(self) -> None:
        """A response is done: the connection idles until the next head's first byte.

        The idle wait is bounded by keepalive_timeout (aiohttp's keep-alive timer), not by
        head_timeout, which starts with that byte (`data_received`).
        """
        self._idle = True

    def head_received(self) -> None:
        """A request head arrived in time."""
        self._awaiting_head = False
        self._idle = False

    def _start_head_clock(self) -> None:
        """Give the awaited request head head_timeout seconds from now.

        This only notes a deadline; one timer per connection checks it, and re-arms itself
        while heads keep arriving in time (no timer churn on the hot path).
        """
        limits = self.limits
        if limits is None or limits.head_timeout is None or self.transport is None:
            return  # no bound, or the connection is gone (its handler ran to the end)
        loop = self._loop
        self._head_deadline = loop.time() + limits.head_timeout
        self._awaiting_head = True
        if self._head_timer is None:
            self._head_timer = loop.call_at(self._head_deadline, self._check_head)

    def _check_head(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self.transport is None:
            return  # served, or idle: the next head's first byte starts the clock again
        loop = asyncio.get_running_loop()
        if loop.time() < self._head_deadline:
            self._head_timer = loop.call_at(self._head_deadline, self._check_head)
            return
        log.info("closing a connection that sent no complete request head in time")
        self.force_close()

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
        if isinstance(exc, ProtocolRefusal):
            log.info("refused request from %s: %s", request.remote, exc.code)
            response = error_response(exc.status, exc.code, exc.message)
        elif status >= 500:
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


def log_access_now(request: web.BaseRequest, response: web.StreamResponse, seconds: float) -> None:
    """Write a request's access line from its handler, which will not return a response.

    aiohttp logs a request once its handler returned and the answer went out; a handler
    cancelled (its client left) never gets there, so it writes its own line, once.
    """
    handler = request.protocol
    if isinstance(handler, RequestHandler):
        access_logger = handler.access_logger
        if access_logger is not None and access_logger.enabled:
            access_logger.log(request, response, seconds)


class ConnectionLimits:
    """One server's client-side bounds: time to send a request head, and a connection cap."""

    def __init__(self, head_timeout: float | None, max_connections: int | None) -> None:
        # Seconds for a request head: from connect, or on a kept connection from its first byte.
        self.head_timeout = head_timeout
        self.max_connections = max_connections  # open client connections at once
        self.live = 0

    def over_capacity(self) -> bool:
        """Return True when one more connection than allowed is open."""
        return self.max_connections is not None and self.live > self.max_connections


class JsonErrorServer(web.Server):
    """A low-level aiohttp server whose connections use JsonErrorRequestHandler."""

    def __init__(
        self,
        handler: Any,
        *,
        request_factory: Any = None,
        handler_cancellation: bool = False,
        error_headers: Mapping[str, str] | None = None,
        limits: ConnectionLimits | None = None,
        **handler_kwargs: Any,
    ) -> None:
        """Serve `handler`; `handler_kwargs` go to every connection's RequestHandler.

        `error_headers` are added to every parser-level error answer; `limits` bound what
        clients may hold (a head timeout, a connection cap).
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
        self.limits = limits

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        """Count an open connection."""
        super().connection_made(handler, transport)
        if self.limits is not None:
            self.limits.live += 1

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        """Count a closed connection."""
        super().connection_lost(handler, exc)
        if self.limits is not None:
            self.limits.live -= 1

    def __call__(self) -> RequestHandler:
        """Return the handler for one new connection."""
        handler = JsonErrorRequestHandler(self, loop=self._handler_loop, **self._handler_kwargs)
        handler.error_headers = self._error_headers
        handler.limits = self.limits
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
