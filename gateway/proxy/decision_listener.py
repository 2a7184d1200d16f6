"""The optional decision listener (`forward_auth.listen`): forward-auth decisions only, on a
lighter HTTP/1.1 server than aiohttp's.

A decision is small (a head in, a head out) and aiohttp's per-request machinery (request
and response objects, header multidicts, the payload writer) costs as much as the decision
itself. Here httptools parses only the head (method, target, headers); the request goes to
the SAME `ForwardAuth.answer` as on the proxy listener (gate, decision, trust check), through
a small adapter, and its answer is written back as bytes with the same access line. Bodies
are refused; heads are bounded as on the proxy listener (line, field and count limits); a
head must arrive within `client.head_timeout`, an idle kept connection closes after
`client.keepalive_timeout`; connections are capped at `client.max_connections`. Pipelined
requests are answered in order, at most MAX_PIPELINED parsed ahead (reading pauses beyond).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import httptools
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy.access_log import access_logger, write_json, write_text
from gateway.proxy.error_answers import E_BAD_REQUEST, E_BAD_REQUEST_ID, E_INTERNAL, error_response
from gateway.proxy.forward_auth import ForwardAuth
from gateway.proxy.hygiene import REQUEST_ID_HEADER, offers_a_key, request_id
from gateway.proxy.notes import RequestNotes
from gateway.proxy.web_internals import TOO_MANY_CONNECTIONS, BodilessAnswer, header_lines
from gateway.runtime.appkeys import NOTES

log = logging.getLogger("keygate.decisions")

# As on the proxy listener (aiohttp's defaults there): request line, one header, header count.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
# Bytes read toward one request head: httptools gathers a header line whole before handing
# it over, so a line is bounded here as it arrives, not only once complete.
MAX_HEAD_SIZE = MAX_LINE_SIZE + MAX_HEADERS * MAX_FIELD_SIZE
# Parsed requests of one connection waiting for their answers before reading pauses.
MAX_PIPELINED = 16
# Headers announcing a request body (a Content-Length of 0 announces none: Envoy sends it).
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_FRAMING_LENGTHS = frozenset(len(name) for name in _FRAMING)
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}


class DecisionRequest:
    """One parsed decision request, shaped as admission reads a request (gate.AskingRequest)."""

    __slots__ = ("headers", "keep_alive", "method", "notes", "raw_path", "remote", "version")
    scheme = "http"

    def __init__(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        remote: str | None,
        version: str,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.headers = headers
        self.remote = remote
        self.version = version
        self.keep_alive = keep_alive
        self.notes: RequestNotes | None = None

    def get(self, key: object, default: Any = None) -> Any:
        """The request's notes under NOTES, as aiohttp's request mapping holds them."""
        return self.notes if key is NOTES and self.notes is not None else default


class _Refused(Exception):
    """A request head this listener will not serve: status and message, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def answer_bytes(
    response: web.StreamResponse, request_id_line: str, version: str, keep_alive: bool
) -> bytes:
    """The bytes of `ForwardAuth`'s answer: a BodilessAnswer's lines, or a web.Response's
    headers and body (the decision's JSON refusals), with the request id line (made here, as
    the proxy listener sets it on every answer), Content-Length, Date and Connection."""
    status = response.status
    if isinstance(response, BodilessAnswer):
        lines = response.lines
        body = b""
    else:
        body = cast(bytes, cast(web.Response, response).body or b"")
        lines = ""
    if response.headers:
        lines += header_lines(response.headers.items())
    if version == "1.1":
        connection = "" if keep_alive else "Connection: close\r\n"
    else:
        connection = "Connection: keep-alive\r\n" if keep_alive else ""
    reason = response.reason
    head = (
        f"HTTP/{version} {status} {reason}\r\n{lines}{request_id_line}"
        f"Content-Length: {len(body)}\r\n"
        f"Date: {rfc822_formatted_time()}\r\n{connection}\r\n"
    )
    return head.encode() + body


def _plain_error(status: int, code: str, message: str) -> bytes:
    """A JSON error for a head this listener refuses, with Connection: close."""
    body = json.dumps({"error": code, "message": message}).encode()
    reason = _REASONS.get(status, "Error")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nServer: keygate\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _resume(answering: Coroutine[Any, Any, bytes], waits_on: Any) -> bytes:
    """Run a coroutine on from where its first step suspended, as its own task would have.

    `waits_on` is what that step yielded: the future it awaits, or None (a bare yield). The
    coroutine is resumed when the future is done and reads the future's outcome itself; if
    this task is cancelled meanwhile, the future is cancelled, so the coroutine sees the
    cancellation where it waits, as under a task.
    """
    while True:
        try:
            if waits_on is None:
                await asyncio.sleep(0)
            else:
                waits_on._asyncio_future_blocking = False
                await asyncio.wait((waits_on,))
        except asyncio.CancelledError:
            if waits_on is None:
                answering.close()
                raise
            waits_on.cancel()
        try:
            waits_on = answering.send(None)
        except StopIteration as done:
            return cast(bytes, done.value)


class DecisionServer:
    """One listener's shared state: the forward-auth answerer, limits, access log, connections."""

    def __init__(
        self,
        forward_auth: ForwardAuth,
        *,
        head_timeout: float | None,
        keepalive_timeout: float,
        max_connections: int | None,
        access_log: bool,
        json_logs: bool,
        on_refused: Callable[[str], None],
    ) -> None:
        self.forward_auth = forward_auth
        self.head_timeout = head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_connections = max_connections
        self.write_line = (write_json if json_logs else write_text) if access_log else None
        self.on_refused = on_refused
        self.connections: set[DecisionProtocol] = set()

    def __call__(self) -> DecisionProtocol:
        """A protocol for one new connection."""
        return DecisionProtocol(self)

    def close_all(self) -> None:
        """Close every open connection (shutdown)."""
        for connection in list(self.connections):
            connection.close()


class DecisionProtocol(asyncio.Protocol):
    """One client connection: parse heads, answer each in order, bound time and size."""

    def __init__(self, server: DecisionServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._queue: collections.deque[DecisionRequest] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._line = 0  # bytes of the current head's request line
        self._head_bytes = 0  # bytes read since the last complete head
        self._deadline = 0.0  # loop time by which the head (or next head's first byte) is due
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._paused = False
        self._refusal: bytes | None = None  # a refused head's answer, due after the queue
        self._loop = asyncio.get_running_loop()

    # --- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept the connection, or refuse it when the listener is at its cap."""
        # uvloop's transports are not asyncio.Transport subclasses: cast, not check.
        self._transport = cast(asyncio.Transport, transport)
        server = self._server
        if server.max_connections is not None and len(server.connections) >= (
            server.max_connections
        ):
            self._transport.write(TOO_MANY_CONNECTIONS)
            self._transport.close()
            return
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) and peer else None
        timeout = server.head_timeout
        self._arm(server.keepalive_timeout if timeout is None else timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the connection: its timer, its pending answers."""
        self._server.connections.discard(self)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()

    def _arm(self, seconds: float) -> None:
        """Move the deadline `seconds` ahead; one timer per connection checks it."""
        self._deadline = self._loop.time() + seconds
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        if self._task is not None and not self._in_head:
            return  # answering: the deadline is re-armed when the answers are out
        now = self._loop.time()
        if now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        if self._in_head:
            log.info("closing a decision connection that sent no complete request head in time")
        self._transport.close()

    # --- parsing ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Parse request bytes; a head this listener refuses is answered, then the connection
        closes."""
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_SIZE:
            self._refuse(400, E_BAD_REQUEST, f"a request head is larger than {MAX_HEAD_SIZE} bytes")
            return
        try:
            self._parser.feed_data(data)
        except _Refused as refused:
            self._refuse(refused.status, E_BAD_REQUEST, str(refused))
        except httptools.HttpParserUpgrade:
            self._refuse(400, E_BAD_REQUEST, "protocol upgrades are not served here")
        except httptools.HttpParserError as error:
            cause = error.__cause__ or error.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, E_BAD_REQUEST, str(cause))
            else:
                self._refuse(400, E_BAD_REQUEST, "malformed HTTP request")

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a refused head after the answers still due for the requests before it, then
        close (nothing more is read)."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._refusal is not None:
            return
        log.info("refused decision request from %s: %s", self._remote, code)
        self._server.on_refused(code)
        refusal = _plain_error(status, code, message)
        if self._task is not None:  # earlier pipelined requests first, in order
            self._refusal = refusal
            transport.pause_reading()
            return
        transport.write(refusal)
        transport.close()

    def on_message_begin(self) -> None:
        """A head starts: head_timeout from its first byte (it was keepalive's while idle)."""
        self._in_head = True
        self._url = b""
        self._headers = []
        self._line = 0
        if self._server.head_timeout is not None:
            self._arm(self._server.head_timeout)

    def on_url(self, url: bytes) -> None:
        """Collect the request target, bounded."""
        self._line += len(url)
        if self._line > MAX_LINE_SIZE:
            raise _Refused(400, f"the request line is longer than {MAX_LINE_SIZE} bytes")
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect one header, bounded in size and count."""
        headers = self._headers
        if len(headers) >= MAX_HEADERS:
            raise _Refused(400, f"more than {MAX_HEADERS} header fields")
        if len(name) + len(value) > MAX_FIELD_SIZE:
            raise _Refused(400, f"a header field is longer than {MAX_FIELD_SIZE} bytes")
        # As aiohttp decodes them, so both listeners see the same strings.
        headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        """The head is in: queue the request for its answer."""
        self._in_head = False
        self._head_bytes = 0  # bytes after this head in the same read count toward the next
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refused(400, "only HTTP/1.0 and HTTP/1.1 are served")
        if parser.should_upgrade():
            raise _Refused(400, "protocol upgrades are not served here")
        for name, value in self._headers:
            # Refused with its head, before any answer to it: a body, or the promise of one.
            if len(name) in _FRAMING_LENGTHS and name.lower() in _FRAMING and value.strip() != "0":
                raise _Refused(400, "a forward-auth request carries no body")
        request = DecisionRequest(
            parser.get_method().decode("ascii", "surrogateescape"),
            self._url.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(CIMultiDict(self._headers)),
            self._remote,
            version,
            parser.should_keep_alive(),
        )
        if self._task is None and not self._queue:
            self._answer_now(request)
            return
        self._queue.append(request)
        if self._task is None:
            self._task = self._loop.create_task(self._answer_queued())
        if len(self._queue) >= MAX_PIPELINED and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()

    def on_body(self, body: bytes) -> None:
        """A decision request carries no body: refuse it."""
        raise _Refused(400, "a forward-auth request carries no body")

    # --- answering --------------------------------------------------------------------------

    def _answer_now(self, request: DecisionRequest) -> None:
        """Answer a request with nothing queued before it, here, without a task.

        Most decisions never wait (the table, the policy and a local limiter are in memory):
        their coroutine is run to its end in this callback, which saves a task and a loop
        turn per decision. One that waits (a Redis-counted limit) is finished by a task, as
        the queue's are, and the requests after it queue behind it.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # a head pipelined after the last answer of a closing connection
        answering = self._answer(request)
        try:
            waits_on = answering.send(None)
        except StopIteration as done:
            if self._deliver(request, done.value):
                self._arm(self._server.keepalive_timeout)
            return
        self._task = self._loop.create_task(self._answer_queued(answering, waits_on, request))

    def _deliver(self, request: DecisionRequest, data: bytes) -> bool:
        """Write one answer; False when the connection is over (closed, or not kept alive)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        if not request.keep_alive:
            transport.close()
            return False
        return True

    async def _answer_queued(
        self,
        started: Coroutine[Any, Any, bytes] | None = None,
        waits_on: Any = None,
        first: DecisionRequest | None = None,
    ) -> None:
        """Answer the queued requests in order (after `first`, whose answer `started` is
        suspended on `waits_on`); then wait for the next head (keep-alive)."""
        queue = self._queue
        try:
            if started is not None and first is not None:
                data = await _resume(started, waits_on)
                if not self._deliver(first, data):
                    return
            while queue:
                request = queue.popleft()
                transport = self._transport
                if transport is None or transport.is_closing():
                    return
                data = await self._answer(request)
                if not self._deliver(request, data):
                    return
                transport = self._transport
                assert transport is not None  # _deliver saw it open
                if self._paused and len(queue) < MAX_PIPELINED and self._refusal is None:
                    self._paused = False
                    transport.resume_reading()
        finally:
            self._task = None
        transport = self._transport
        if transport is None:
            return
        if self._refusal is not None:
            transport.write(self._refusal)
            transport.close()
        elif not self._in_head:
            self._arm(self._server.keepalive_timeout)

    async def _answer(self, request: DecisionRequest) -> bytes:
        """The answer to one request, through ForwardAuth.answer, and its access line."""
        started = time.monotonic()
        offered = request.headers.get(REQUEST_ID_HEADER)
        notes = request.notes = RequestNotes(request_id(offered))
        server = self._server
        keep_alive = request.keep_alive
        response: web.StreamResponse
        if offered is not None and offers_a_key(offered):
            server.on_refused(E_BAD_REQUEST_ID)
            response = error_response(400, E_BAD_REQUEST_ID, "the X-Request-Id holds an API key")
        else:
            try:
                response = await server.forward_auth.answer(request, notes)
            except Exception:
                log.exception("unexpected error deciding %s", request.method)
                response = error_response(500, E_INTERNAL, "internal error")
                keep_alive = request.keep_alive = False
        # request_id() only ever returns a well-formed id (no CR, LF or other control).
        rid = f"{REQUEST_ID_HEADER}: {notes.request_id}\r\n"
        data = answer_bytes(response, rid, request.version, keep_alive)
        if server.write_line is not None:
            server.write_line(
                access_logger,
                request.remote,
                request.method,
                request.raw_path,
                response.status,
                len(data),
                time.monotonic() - started,
                notes,
            )
        return data
