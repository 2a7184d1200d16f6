"""One upstream connection (an asyncio Protocol) and the exchange it carries (httptools)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import cast

import httptools

from gateway.upstream import framing
from gateway.upstream.errors import (
    RequestBodyError,
    UpstreamClosed,
    UpstreamError,
    UpstreamLimitError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.upstream.framing import Framing, Limits

# Response body bytes buffered from the upstream before reading pauses (backpressure).
READ_HIGH_WATER = 512 * 1024

# Called with the connection and whether it may be reused, plus the upstream's idle hint.
ReleaseCallback = Callable[["UpstreamConnection", bool, float | None], None]


class UpstreamConnection(asyncio.Protocol):
    """One upstream TCP (or TLS) connection, carrying one exchange at a time."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_lost: Callable[[UpstreamConnection], None]
    ) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.exchange: UpstreamResponse | None = None
        self.closed = False
        self.uses = 0
        self.idle_deadline = 0.0  # loop time after which an idle connection is not reused
        self.keep_alive_hint: float | None = None  # the upstream's `Keep-Alive: timeout=`
        self.lost: asyncio.Future[None] = loop.create_future()
        self._on_lost = on_lost
        self.reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # The waiting exchange's deadline, checked by one timer per connection (see `watch`).
        self._watched: UpstreamResponse | None = None
        self._watch_deadline = 0.0
        self._watch_timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Feed the exchange's parser; bytes on an idle connection break it (never reused)."""
        exchange = self.exchange
        if exchange is None:
            self.abort()
            return
        exchange.feed(data)

    def eof_received(self) -> bool:
        """The upstream finished sending: let the transport close (a half-open peer is done)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the exchange in progress and tell the pool (which frees the slot)."""
        self.closed = True
        exchange = self.exchange
        if exchange is not None:
            exchange.connection_lost(exc)
        _wake(self._drain_waiter)
        self._stop_watching()
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)
        # The transport refers to this protocol and this to it: let go, so reference counting
        # alone frees both (and whatever the exchange still buffers).
        self.transport = None
        self.exchange = None

    def pause_writing(self) -> None:
        """The transport's write buffer is full: senders wait in `drain`."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The write buffer drained: wake a waiting sender."""
        self._write_paused = False
        _wake(self._drain_waiter)

    # ---------------------------------------------------------------- helpers

    def write(self, data: bytes) -> None:
        """Write to the transport unless the connection is gone."""
        if self.closed or self.transport is None:
            raise UpstreamClosed("the upstream connection closed")
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        """Wait until the transport accepts more data, at most `timeout` seconds."""
        if self._write_paused and not self.closed:
            deadline = self.loop.time() + timeout
            while self._write_paused and not self.closed:
                remaining = deadline - self.loop.time()
                if remaining <= 0:
                    raise UpstreamTimeout("the upstream stopped reading the request body")
                waiter = self.loop.create_future()
                self._drain_waiter = waiter
                timer = self.loop.call_later(remaining, _wake, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._drain_waiter = None
        if self.closed:
            raise UpstreamClosed("the upstream connection closed while sending")

    def watch(self, response: UpstreamResponse, deadline: float) -> None:
        """Expire `response`'s wait at loop time `deadline`, unless `unwatch` comes first.

        One timer per connection, re-armed only when it fires before the deadline in force:
        a wait that ends in time (nearly every one) costs two field writes, not a timer made
        and cancelled (0.6 us a request).
        """
        self._watched = response
        self._watch_deadline = deadline
        timer = self._watch_timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._watch_timer = self.loop.call_at(deadline, self._check_watch)

    def unwatch(self, response: UpstreamResponse) -> None:
        """`response`'s wait ended in time."""
        if self._watched is response:
            self._watched = None

    def _check_watch(self) -> None:
        self._watch_timer = None
        response = self._watched
        if response is None:
            return  # nothing waits: the next `watch` arms a timer again
        if self.loop.time() < self._watch_deadline:
            self._watch_timer = self.loop.call_at(self._watch_deadline, self._check_watch)
            return
        self._watched = None
        response.expire()

    def _stop_watching(self) -> None:
        """Cancel the timer (it refers to this connection) and forget the waiting exchange."""
        self._watched = None
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None

    def pause_reading(self) -> None:
        """Stop reading from the upstream until the body buffer is consumed."""
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the upstream again."""
        if self.reading_paused:
            self.reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def discard(self) -> None:
        """Abort a connection whose opening failed (cancelled, timed out) and let go of it.

        The event loop may close such a transport without ever calling `connection_lost`
        (uvloop does when `create_connection` is cancelled), which would leave this protocol
        and its transport referring to each other until a full collection.
        """
        self.abort()
        self._stop_watching()
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)

    def abort(self) -> None:
        """Drop the connection now (unsent data discarded); `connection_lost` follows."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    """Wake a waiter (a timer callback: the woken side sees nothing changed and gives up)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


_Fields = tuple[list[tuple[str, str]], int | None, str | None, str | None, str | None]


def _decode(raw_headers: list[tuple[bytes, bytes]], encoding: str) -> _Fields:
    """Decode a head's fields; pick out Content-Length, Transfer-Encoding, Connection, Keep-Alive.

    Returns (headers, content length, transfer-encoding, connection, keep-alive), repeated
    list fields joined with ", " (RFC 9110 section 5.3).
    """
    headers = []
    content_length: int | None = None
    transfer_encoding: str | None = None
    connection: str | None = None
    keep_alive: str | None = None
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode(encoding)
        value = raw_value.decode(encoding)
        headers.append((name, value))
        # Only four names matter for framing and reuse; their lengths are 10, 14 and 17.
        if len(raw_name) in (10, 14, 17):
            lowered = raw_name.lower()
            if lowered == b"content-length":
                content_length = int(value)  # llhttp checked it is one valid number
            elif lowered == b"transfer-encoding":
                transfer_encoding = (
                    value if transfer_encoding is None else f"{transfer_encoding}, {value}"
                )
            elif lowered == b"connection":
                connection = value if connection is None else f"{connection}, {value}"
            elif lowered == b"keep-alive":
                keep_alive = value
    return headers, content_length, transfer_encoding, connection, keep_alive


class _HeadTooLarge(Exception):
    """Raised inside a parser callback to stop llhttp at once (re-raised as UpstreamLimitError)."""


class UpstreamResponse:
    """One exchange's response: status, reason, headers in order, body read whole or in chunks.

    Header names and values and the reason are the upstream's bytes decoded as latin-1, so
    `.encode("latin-1")` gives back exactly the bytes that arrived, whatever their encoding.
    """

    # One per exchange, with 35 fields: past 30, an instance dict stops sharing its keys and
    # grows by resizing (2.7 us to build one); slots make it a fixed block.
    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_head_budget",
        "_head_done",
        "_head_only",
        "_head_room",
        "_head_timeout",
        "_interim",
        "_keep_alive",
        "_keep_alive_hint",
        "_loop",
        "_max_headers",
        "_max_line",
        "_parser",
        "_raw_headers",
        "_read_timeout",
        "_reason_raw",
        "_release",
        "_until_eof",
        "_waiter",
        "_waiting_for",
        "body_consumed",
        "connection",
        "content_length",
        "got_bytes",
        "head_ascii",
        "headers",
        "reason",
        "status",
        "transfer_codings",
        "version",
        "writer",
    )

    def __init__(
        self,
        conn: UpstreamConnection,
        release: ReleaseCallback,
        *,
        head_only: bool,
        head_timeout: float,
        read_timeout: float,
        limits: Limits,
    ) -> None:
        self.status = 0
        self.reason = ""
        self.version = ""
        # Headers exactly as received: original case and order, duplicates kept.
        self.headers: list[tuple[str, str]] = []
        # Every byte of the head is ASCII (then any encoding writes it back unchanged).
        self.head_ascii = True
        # Comma-joined values of every `Connection` header, or None.
        self.connection: str | None = None
        self.content_length: int | None = None
        # Transfer codings other than the final chunked, in order (e.g. ("gzip",)).
        self.transfer_codings: tuple[str, ...] = ()
        self.got_bytes = False  # any response byte arrived on this exchange
        self.body_consumed = False  # bytes were taken from a streamed request body
        self.writer: asyncio.Task[None] | None = None  # streams the request body, if any
        self._conn: UpstreamConnection | None = conn
        self._release = release
        self._loop = conn.loop
        self._head_timeout = head_timeout
        self._read_timeout = read_timeout
        self._max_line = limits.max_line_size
        self._max_headers = limits.max_headers
        self._head_budget = self._head_room = limits.max_head_size
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._reason_raw = b""
        self._interim = False
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._keep_alive_hint: float | None = None
        self._until_eof = False
        self._error: UpstreamError | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_for = "the response"

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        """A response (interim or final) starts."""
        if self._head_done:
            raise UpstreamProtocolError("bytes after the end of the response")
        self._raw_headers = []
        self._reason_raw = b""

    def on_status(self, status: bytes) -> None:
        """Collect the reason phrase (llhttp may deliver it in pieces; `feed` bounds it)."""
        self._reason_raw += status

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect one header (trailers after a chunked body arrive here too and are dropped).

        Limits are checked per packet in `feed` and exactly once the head is complete.
        """
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Decode the head; skip 1xx interim responses; decide the body framing and reuse."""
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints...: wait for the final head
            return
        if self._head_done:
            return  # trailers of a chunked body: dropped (RFC 9110 section 6.5.1 allows it)
        self.status = status
        self.version = version = parser.get_http_version()
        raw_headers = self._raw_headers
        reason = self._reason_raw
        if len(raw_headers) > self._max_headers:
            raise _HeadTooLarge("the number of header fields")
        max_line = self._max_line - 2  # the ": " of a field line
        if self._head_budget - self._head_room > max_line:
            # Only a head longer than one line can hold a line over the limit.
            if len(reason) > max_line - 11:  # "HTTP/1.1 200 "
                raise _HeadTooLarge("the status line")
            for raw_name, raw_value in raw_headers:
                if len(raw_name) + len(raw_value) > max_line:
                    raise _HeadTooLarge("a header line")
        try:  # ASCII nearly always: as fast as latin-1, and it tells whether the head is
            self.reason = reason.decode("ascii")
            fields = _decode(raw_headers, "ascii")
        except UnicodeDecodeError:
            self.head_ascii = False
            self.reason = reason.decode("latin-1")
            fields = _decode(raw_headers, "latin-1")
        self.headers, content_length, transfer_encoding, connection, keep_alive_field = fields
        self._raw_headers = []  # trailers, if any, are counted afresh
        codings = () if transfer_encoding is None else framing.transfer_codings(transfer_encoding)
        how = framing.response_framing(status, self._head_only, codings, content_length)
        self.transfer_codings = codings[:-1] if codings[-1:] == ("chunked",) else codings
        # RFC 9112 section 6.3 rule 3: with Transfer-Encoding, Content-Length is not the length.
        self.content_length = None if codings else content_length
        self.connection = connection
        self._until_eof = how is Framing.UNTIL_CLOSE
        self._keep_alive = framing.keep_alive(version, connection, how)
        if keep_alive_field is not None:
            self._keep_alive_hint = framing.keep_alive_timeout(keep_alive_field)
        self._head_done = True
        if how is Framing.NONE:
            self._complete = True  # llhttp knows 204/304, not HEAD: never wait for a body
        self._wake()

    def on_body(self, body: bytes) -> None:
        """Buffer body bytes; pause reading when the consumer falls behind."""
        if self._complete:  # a body after HEAD's head: never reuse this connection
            self._keep_alive = False
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and self._conn is not None:
            self._conn.pause_reading()
        if self._waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        """The interim response ended, or the final response is complete."""
        if self._interim:
            self._interim = False
            return
        self._complete = True
        self._wake()

    # ---------------------------------------------------------------- connection events

    def feed(self, data: bytes) -> None:
        """Parse bytes from the upstream, the head bounded while it arrives."""
        self.got_bytes = True
        parser = self._parser
        if parser is None:
            return
        try:
            if not self._head_done:
                room = self._head_room
                if len(data) > room:
                    # Parse what fits: the head may end inside it, the rest being body. The
                    # room is used up first, so `on_headers_complete` checks every line.
                    self._head_room = 0
                    parser.feed_data(data[:room])
                    if not self._head_done:
                        raise _HeadTooLarge("the response head")
                    data = data[room:]
                else:
                    self._head_room = room - len(data)
            parser.feed_data(data)
            # Before the head is done these are its fields, after it a chunked body's trailers
            # (the list starts afresh at the head's end): a flood of either stops here.
            if len(self._raw_headers) > self._max_headers:
                raise _HeadTooLarge("the number of header fields")
        except _HeadTooLarge as error:
            self._fail_limit(str(error))
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeadTooLarge):
                self._fail_limit(str(error.__context__))
            elif isinstance(error.__context__, UpstreamError):
                self._fail(error.__context__)
            else:
                self._fail(UpstreamProtocolError(f"invalid response from the upstream: {error}"))
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
        except httptools.HttpParserError as error:
            self._fail(UpstreamProtocolError(f"invalid response from the upstream: {error}"))

    def _fail_limit(self, what: str) -> None:
        """Stop reading a head over the limits: the connection is dropped at once."""
        self._parser = None
        self._fail(UpstreamLimitError(f"{what} from the upstream is over the configured limit"))
        if self._conn is not None:
            self._conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        """EOF ends a read-until-close body; otherwise an incomplete response failed."""
        self._keep_alive = False
        if not self._complete:
            if self._head_done and self._until_eof and exc is None:
                self._complete = True
            elif self._error is None:
                self._error = UpstreamClosed("the upstream closed the connection")
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        self._keep_alive = False
        if not self._complete and self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        """Wait for the next parser or connection event; a timeout becomes a sticky error."""
        conn = self._conn
        if conn is None:
            raise UpstreamClosed("the exchange was released")  # nothing can arrive any more
        loop = self._loop
        waiter = loop.create_future()
        self._waiter = waiter
        if timeout is not None:
            conn.watch(self, loop.time() + timeout)
        try:
            await waiter
        finally:
            if timeout is not None:
                conn.unwatch(self)
            if self._waiter is waiter:
                self._waiter = None

    def expire(self) -> None:
        """The wait in progress ran out of time (the connection's timer says so)."""
        if self._waiter is not None:
            self._fail(UpstreamTimeout(f"the upstream did not send {self._waiting_for} in time"))

    def send_failed(self, error: UpstreamError) -> None:
        """Writing the request failed: fail the exchange and drop the connection."""
        self._fail(error)
        if self._conn is not None:
            self._conn.abort()

    def writer_done(self, task: asyncio.Task[None]) -> None:
        """The request body was sent, or sending it failed (then the connection is dropped)."""
        self.writer = None  # the finished task's traceback frames refer back to this response
        if task.cancelled():
            self._keep_alive = False  # the body was not sent whole: never reuse the connection
            return
        error = task.exception()
        if error is None:
            self._wake()
            return
        # Kept for wait_head to raise: without the writer's frames, so nothing cycles back.
        error.__traceback__ = None
        if not isinstance(error, UpstreamError):
            error = RequestBodyError(f"reading the request body failed: {error!r}")
        self.send_failed(error)

    async def wait_head(self) -> None:
        """Wait for the final response head; its timeout runs once the request is sent.

        While the request body streams, its own bounds apply (the client's idle time, the
        upstream's drain time), so no phase waits unbounded.
        """
        deadline: float | None = None
        self._waiting_for = "a response"
        while not self._head_done:
            if self._error is not None:
                raise self._error
            writer = self.writer
            if writer is not None and not writer.done():
                await self._wait(None)
                continue
            now = self._loop.time()
            if deadline is None:
                deadline = now + self._head_timeout
            await self._wait(deadline - now)

    # ---------------------------------------------------------------- public API

    async def read_chunk(self) -> bytes:
        """Return the next body bytes (all that is buffered); b"" once the body is complete."""
        self._waiting_for = "the rest of the body"
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                conn = self._conn
                if conn is not None and conn.reading_paused:
                    conn.resume_reading()
                return data
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(self._read_timeout)

    async def read(self) -> bytes:
        """Return the whole body."""
        first = await self.read_chunk()
        if not first:
            return first
        parts = [first]
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Give the connection back to the pool if the exchange ended cleanly, else drop it."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._parser = None  # also breaks the parser <-> response reference cycle
        writer = self.writer
        writer_ok = writer is None or (
            writer.done() and not writer.cancelled() and writer.exception() is None
        )
        if writer is not None and not writer.done():
            writer.cancel()
        reusable = self._complete and self._keep_alive and self._error is None and writer_ok
        # A raised error's traceback holds frames that refer to this response: forget it, so
        # reference counting alone frees the exchange (and any buffered body).
        self._error = None
        self._release(conn, reusable, self._keep_alive_hint)
