"""The lean upstream HTTP/1.1 client: asyncio Protocols, a keep-alive pool, httptools parsing."""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from gateway.settings import Upstream

# Response body bytes buffered from the upstream before reading pauses (backpressure).
READ_HIGH_WATER = 512 * 1024
# Seconds an idle pooled connection is trusted; older ones are closed instead of reused.
IDLE_TIMEOUT = 15.0
# Seconds `close()` waits for closing connections to finish (TLS close_notify exchange).
CLOSE_WAIT = 1.0
_LAST_CHUNK = b"0\r\n\r\n"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange (the proxy answers 502)."""


class UpstreamTimeout(UpstreamError):
    """Connecting, the response head, or a body read/write took too long (the proxy answers 504)."""


class UpstreamClosed(UpstreamError):
    """The connection closed or reset before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not a valid HTTP/1.x response."""


class RequestBodyError(UpstreamError):
    """Reading the request body from the client failed while sending it upstream."""


class BodySource(Protocol):
    """A streamed request body; aiohttp's `StreamReader` (`request.content`) is one."""

    def is_eof(self) -> bool:
        """Return whether the whole body has been received (all of it is buffered)."""
        ...

    def read_nowait(self, n: int = -1) -> bytes:
        """Return the buffered bytes without waiting."""
        ...

    async def readany(self) -> bytes:
        """Return the next buffered bytes, waiting for some; b"" at the end."""
        ...


def _chunk(data: bytes) -> bytes:
    """Frame `data` as one chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Connection(asyncio.Protocol):
    """One upstream TCP (or TLS) connection, carrying one exchange at a time."""

    def __init__(self, client: UpstreamClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.counted = True  # holds one of the pool's slots until forgotten
        self.uses = 0
        self.idle_since = 0.0
        self.reading_paused = False
        self.lost: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Feed the current response's parser; bytes on an idle connection break it."""
        response = self.response
        if response is None:
            self.abort()
            return
        response.feed(data)

    def eof_received(self) -> bool:
        """The upstream finished sending: let the transport close (a half-open peer is done)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the exchange in progress and give the pool slot back."""
        self.closed = True
        response = self.response
        if response is not None:
            response.connection_lost(exc)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        self.client._forget(self)

    def pause_writing(self) -> None:
        """The transport's write buffer is full: senders wait in `drain`."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The write buffer drained: wake a waiting sender."""
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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

    def abort(self) -> None:
        """Drop the connection now (unsent data discarded)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _wake(waiter: asyncio.Future[None]) -> None:
    """Wake a waiter (a timer callback: the woken side sees nothing changed and gives up)."""
    if not waiter.done():
        waiter.set_result(None)


class UpstreamResponse:
    """One upstream response: status, reason, headers in order, body read whole or in chunks."""

    def __init__(
        self, client: UpstreamClient, conn: _Connection, head_only: bool, timeout: float
    ) -> None:
        self.status = 0
        self.reason = ""
        self.version = ""
        # Headers exactly as received: original case and order, duplicates kept.
        self.headers: list[tuple[str, str]] = []
        # Comma-joined values of every `Connection` header, or None.
        self.connection: str | None = None
        self.content_length: int | None = None
        self._client = client
        self._conn: _Connection | None = conn
        self._loop = conn.loop
        self._timeout = timeout
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._reason_raw = b""
        self._interim = False
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._until_eof = False
        self._error: UpstreamError | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_for = "the response"
        self._writer: asyncio.Task[None] | None = None
        self.got_bytes = False  # any response byte arrived on this exchange
        self.body_consumed = False  # bytes were taken from a streamed request body

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        """A response (interim or final) starts."""
        if self._head_done:
            raise UpstreamProtocolError("bytes after the end of the response")
        self._raw_headers = []
        self._reason_raw = b""

    def on_status(self, status: bytes) -> None:
        """Collect the reason phrase (llhttp may deliver it in pieces)."""
        self._reason_raw += status

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect one header (trailers after a chunked body arrive here too and are dropped)."""
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Decode the head; skip 1xx interim responses; decide the body framing and reuse."""
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints...: wait for the final head
            return
        self.status = status
        self.reason = self._reason_raw.decode("latin-1")
        self.version = version = parser.get_http_version()
        headers = self.headers
        content_length: int | None = None
        transfer_encoding: str | None = None
        connection: str | None = None
        for raw_name, raw_value in self._raw_headers:
            name = raw_name.decode("utf-8", "surrogateescape")
            value = raw_value.decode("utf-8", "surrogateescape")
            headers.append((name, value))
            # Only three names matter for framing; their lengths are 10, 14 and 17.
            if len(raw_name) in (10, 14, 17):
                lowered = raw_name.lower()
                if lowered == b"content-length":
                    content_length = int(value)
                elif lowered == b"transfer-encoding":
                    transfer_encoding = (
                        value if transfer_encoding is None else f"{transfer_encoding}, {value}"
                    )
                elif lowered == b"connection":
                    connection = value if connection is None else f"{connection}, {value}"
        self.content_length = content_length
        self.connection = connection
        has_body = not self._head_only and status not in (204, 304)
        if has_body:
            if transfer_encoding is not None:
                self._until_eof = transfer_encoding.rsplit(",", 1)[-1].strip().lower() != "chunked"
            else:
                self._until_eof = content_length is None
        closes = connection is not None and "close" in {
            token.strip().lower() for token in connection.split(",")
        }
        self._keep_alive = version == "1.1" and not closes and not self._until_eof
        self._head_done = True
        if not has_body:
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
        """Parse bytes from the upstream."""
        self.got_bytes = True
        parser = self._parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
        except httptools.HttpParserError as error:
            self._fail(UpstreamProtocolError(f"invalid response from the upstream: {error}"))

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
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = None if timeout is None else self._loop.call_later(timeout, self._expire, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiter is waiter:
                self._waiter = None

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if self._waiter is waiter:
            self._fail(UpstreamTimeout(f"the upstream did not send {self._waiting_for} in time"))

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """The request body was sent, or sending it failed (then the connection is dropped)."""
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            if not isinstance(error, UpstreamError):
                error = RequestBodyError(f"reading the request body failed: {error!r}")
            self._fail(error)
            if self._conn is not None:
                self._conn.abort()
        else:
            self._wake()

    async def wait_head(self) -> None:
        """Wait for the final response head; the timeout runs once the request is sent."""
        deadline: float | None = None
        self._waiting_for = "a response"
        while not self._head_done:
            if self._error is not None:
                raise self._error
            writer = self._writer
            if writer is not None and not writer.done():
                await self._wait(None)  # the upload has its own stall timeout
                continue
            now = self._loop.time()
            if deadline is None:
                deadline = now + self._timeout
            await self._wait(deadline - now)

    # ---------------------------------------------------------------- public API

    @property
    def complete(self) -> bool:
        """Whether the whole response has been received."""
        return self._complete

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
            await self._wait(self._timeout)

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
        writer = self._writer
        writer_ok = writer is None or (
            writer.done() and not writer.cancelled() and writer.exception() is None
        )
        if writer is not None and not writer.done():
            writer.cancel()
        reusable = self._complete and self._keep_alive and self._error is None and writer_ok
        self._client._release(conn, reusable)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a writer task's outcome as seen (it is reported through the response)."""
    if not task.cancelled():
        task.exception()


class UpstreamClient:
    """HTTP/1.1 client for one upstream origin with a bounded keep-alive connection pool."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int,
        connect_timeout: float,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        self._host = parts.hostname
        self._port = parts.port or _DEFAULT_PORTS[scheme]
        bracketed = f"[{self._host}]" if ":" in self._host else self._host
        explicit_port = parts.port is not None and parts.port != _DEFAULT_PORTS[scheme]
        self.host_header = f"{bracketed}:{parts.port}" if explicit_port else bracketed
        self._ssl: ssl.SSLContext | None = None
        if scheme == "https":
            self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._count = 0  # open or opening connections, idle ones included
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closing = False
        self.connections_opened = 0

    # ---------------------------------------------------------------- pool

    def _wake_slot_waiter(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _forget(self, conn: _Connection) -> None:
        """A connection closed: drop it from the pool and free its slot."""
        if conn.counted:
            conn.counted = False
            self._count -= 1
            if conn.response is None and conn in self._idle:
                self._idle.remove(conn)
            self._wake_slot_waiter()

    def _release(self, conn: _Connection, reusable: bool) -> None:
        conn.response = None
        if reusable and not conn.closed and not self._closing:
            conn.resume_reading()
            conn.idle_since = conn.loop.time()
            self._idle.append(conn)
            self._wake_slot_waiter()
        else:
            conn.abort()
            self._forget(conn)

    async def _acquire(self, fresh: bool) -> _Connection:
        """Return an idle connection (newest first) or a new one, within the pool limit."""
        if self._closing:
            raise UpstreamClosed("the upstream client is closed")
        idle = self._idle
        while True:
            if not fresh:
                while idle:
                    conn = idle.pop()
                    if conn.closed or conn.loop.time() - conn.idle_since > IDLE_TIMEOUT:
                        conn.abort()
                        self._forget(conn)
                        continue
                    return conn
            if self._count < self.pool_size:
                break
            await self._wait_for_slot()
        self._count += 1
        try:
            return await self._connect()
        except BaseException:
            self._count -= 1
            self._wake_slot_waiter()
            raise

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self._wake_slot_waiter()  # pass the wake-up on to the next in line
            if isinstance(error, TimeoutError):
                raise UpstreamTimeout("no upstream connection became free in time") from None
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("connecting to the upstream timed out") from None
        except OSError as error:
            raise UpstreamClosed(f"connecting to the upstream failed: {error}") from error
        self.connections_opened += 1
        return conn

    # ---------------------------------------------------------------- requests

    def _request_head(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], chunked: bool
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        breaks = len(lines) + 1
        if text.count("\n") != breaks or text.count("\r") != breaks:
            raise ValueError("CR or LF inside the request line or a header")
        return text.encode("utf-8", "surrogateescape")

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: BodySource | None = None,
        *,
        chunked: bool = False,
    ) -> UpstreamResponse:
        """Send a request and return once the final response head arrived.

        `target` goes out byte-exact; `headers` must not hold Host or Transfer-Encoding (a
        body is framed by the given Content-Length, or chunked when `chunked`). The caller must
        `release()` the response. A stale pooled connection is retried once on a fresh one.
        """
        head = self._request_head(method, target, headers, chunked)
        length: int | None = None
        if body is not None and not chunked:
            for name, value in headers:
                if len(name) == 14 and name.lower() == "content-length":
                    length = int(value)
            if length is None:
                raise ValueError("a request body needs a Content-Length header or chunked=True")
        if body is not None and body.is_eof():
            # The whole body is here already: one write with the head, and resendable.
            try:
                data = body.read_nowait()
            except Exception as error:
                raise RequestBodyError(f"reading the request body failed: {error!r}") from error
            if chunked:
                head += _chunk(data) + _LAST_CHUNK if data else _LAST_CHUNK
            else:
                head += data
            body = None
        head_only = method == "HEAD"
        conn = await self._acquire(fresh=False)
        reused = conn.uses > 0
        response = self._start(conn, head, body, length, head_only)
        try:
            await response.wait_head()
            return response
        except UpstreamClosed:
            response.release()
            if not reused or response.got_bytes or response.body_consumed:
                raise
        except BaseException:
            response.release()
            raise
        # The pooled connection had gone stale before the upstream saw the request: retry once.
        conn = await self._acquire(fresh=True)
        response = self._start(conn, head, body, length, head_only)
        try:
            await response.wait_head()
        except BaseException:
            response.release()
            raise
        return response

    def _start(
        self,
        conn: _Connection,
        head: bytes,
        body: BodySource | None,
        length: int | None,
        head_only: bool,
    ) -> UpstreamResponse:
        """Begin one exchange on `conn`: write the request, or start streaming its body."""
        response = UpstreamResponse(self, conn, head_only, self.timeout)
        conn.response = response
        conn.uses += 1
        if body is None:
            try:
                conn.write(head)
            except UpstreamClosed as error:
                response._fail(error)
        else:
            task = conn.loop.create_task(self._send_body(conn, response, head, body, length))
            task.add_done_callback(_retrieve)
            task.add_done_callback(response._writer_done)
            response._writer = task
        return response

    async def _send_body(
        self,
        conn: _Connection,
        response: UpstreamResponse,
        head: bytes,
        body: BodySource,
        length: int | None,
    ) -> None:
        """Stream the request body as it arrives, honouring the transport's flow control.

        With a Content-Length (`length`) the body ends after that many bytes, without waiting
        for the source's end; otherwise (`length` None) it goes out chunked.
        """
        conn.write(head)
        timeout = self.timeout
        left = length
        while left is None or left > 0:
            data = await body.readany()
            if not data:
                break
            response.body_consumed = True
            if left is None:
                conn.write(_chunk(data))
            else:
                left -= len(data)
                conn.write(data)
            await conn.drain(timeout)
        if left is None:
            conn.write(_LAST_CHUNK)
            await conn.drain(timeout)
        elif left:
            raise RequestBodyError(f"the request body ended {left} bytes short")

    async def close(self) -> None:
        """Close the idle connections; in-flight responses drop theirs when released."""
        self._closing = True
        idle, self._idle = self._idle, []
        loop = asyncio.get_running_loop()
        closing: list[asyncio.Future[None]] = []
        for conn in idle:
            if conn.transport is not None and not conn.closed:
                conn.lost = loop.create_future()
                closing.append(conn.lost)
                conn.transport.close()
        if closing:
            await asyncio.wait(closing, timeout=CLOSE_WAIT)
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamClosed("the upstream client is closed"))


def create_upstream_client(upstream: Upstream) -> UpstreamClient:
    """Return the keep-alive upstream client (connection pool) configured by `upstream`."""
    return UpstreamClient(
        upstream.url,
        pool_size=upstream.pool_size,
        connect_timeout=upstream.connect_timeout,
        timeout=upstream.timeout,
    )
