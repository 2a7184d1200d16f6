"""The upstream client: ties framing, the connection protocol and the pool into `request()`."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

from gateway import settings
from gateway.upstream import framing
from gateway.upstream.connection import UpstreamConnection, UpstreamResponse
from gateway.upstream.errors import (
    ClientBodyTimeout,
    RequestBodyError,
    UpstreamClosed,
    UpstreamError,
)
from gateway.upstream.framing import LAST_CHUNK, Limits
from gateway.upstream.pool import Pool

_DEFAULT_PORTS = {"http": 80, "https": 443}


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


_DEFAULTS = settings.Upstream()  # the config model's defaults, the one table of them


class UpstreamClient:
    """HTTP/1.1 client for one upstream origin over a bounded keep-alive connection pool."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = _DEFAULTS.pool_size,
        connect_timeout: float = _DEFAULTS.connect_timeout,
        timeout: float = _DEFAULTS.timeout,
        pool_timeout: float = _DEFAULTS.pool_timeout,
        idle_timeout: float = _DEFAULTS.idle_timeout,
        client_body_timeout: float = _DEFAULTS.client_body_timeout,
        read_timeout: float = _DEFAULTS.read_timeout,
        max_line_size: int = _DEFAULTS.max_line_size,
        max_headers: int = _DEFAULTS.max_headers,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        host = parts.hostname
        port = parts.port or _DEFAULT_PORTS[scheme]
        bracketed = f"[{host}]" if ":" in host else host
        explicit_port = parts.port is not None and parts.port != _DEFAULT_PORTS[scheme]
        self.host_header = f"{bracketed}:{parts.port}" if explicit_port else bracketed
        context: ssl.SSLContext | None = None
        if scheme == "https":
            # Verified by default: the system's CAs, the certificate must name the host.
            context = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.timeout = timeout
        self.client_body_timeout = client_body_timeout
        self.read_timeout = read_timeout
        self.limits = Limits(max_line_size=max_line_size, max_headers=max_headers)
        self.pool = Pool(
            host,
            port,
            size=pool_size,
            connect_timeout=connect_timeout,
            pool_timeout=pool_timeout,
            idle_timeout=idle_timeout,
            ssl_context=context,
            server_hostname=(server_hostname or host) if context is not None else None,
        )

    @property
    def connections_opened(self) -> int:
        """Connections opened to the upstream so far."""
        return self.pool.opened

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
        `release()` the response. Cancelling abandons the exchange and drops its connection.
        """
        head = framing.request_head(method, target, self.host_header, headers, chunked)
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
                head += framing.chunk(data) + LAST_CHUNK if data else LAST_CHUNK
            elif len(data) != length:
                # Bytes past the declared length would reach the upstream as another request.
                raise RequestBodyError(f"the request body is {len(data)} bytes, not {length}")
            else:
                head += data
            body = None
        head_only = method == "HEAD"
        conn = await self.pool.acquire(fresh=False)
        reused = conn.uses > 0
        response = self._start(conn, head, body, length, head_only)
        try:
            await response.wait_head()
            return response
        except UpstreamClosed:
            response.release()
            # RFC 9112 section 9.3.1.1: only an idempotent request whose answer never began,
            # on a pooled connection that had gone stale, is resent; once, with all its body.
            if (
                not reused
                or not framing.is_idempotent(method)
                or response.got_bytes
                or response.body_consumed
            ):
                raise
        except BaseException:
            response.release()
            raise
        conn = await self.pool.acquire(fresh=True)
        response = self._start(conn, head, body, length, head_only)
        try:
            await response.wait_head()
        except BaseException:
            response.release()
            raise
        return response

    def _start(
        self,
        conn: UpstreamConnection,
        head: bytes,
        body: BodySource | None,
        length: int | None,
        head_only: bool,
    ) -> UpstreamResponse:
        """Begin one exchange on `conn`: write the request, or start streaming its body."""
        response = UpstreamResponse(
            conn,
            self.pool.release,
            head_only=head_only,
            head_timeout=self.timeout,
            read_timeout=self.read_timeout,
            limits=self.limits,
        )
        conn.exchange = response
        conn.uses += 1
        if body is None:
            try:
                conn.write(head)
            except UpstreamClosed as error:
                response.send_failed(error)
        else:
            task = conn.loop.create_task(self._send_body(conn, response, head, body, length))
            task.add_done_callback(_retrieve)
            task.add_done_callback(response.writer_done)
            response.writer = task
        return response

    async def _send_body(
        self,
        conn: UpstreamConnection,
        response: UpstreamResponse,
        head: bytes,
        body: BodySource,
        length: int | None,
    ) -> None:
        """Stream the request body as it arrives, honouring the transport's flow control.

        With a Content-Length (`length`) the body ends after that many bytes, without waiting
        for the source's end; otherwise (`length` None) it goes out chunked. The client going
        idle for `client_body_timeout` fails it with ClientBodyTimeout.
        """
        conn.write(head)
        drain_timeout = self.read_timeout
        left = length
        while left is None or left > 0:
            data = await self._read_client(body)
            if not data:
                break
            response.body_consumed = True
            if left is None:
                conn.write(framing.chunk(data))
            else:
                left -= len(data)
                if left < 0:  # never write past the declared length: that is another request
                    raise RequestBodyError(f"the request body is {-left} bytes too long")
                conn.write(data)
            await conn.drain(drain_timeout)
        if left is None:
            conn.write(LAST_CHUNK)
            await conn.drain(drain_timeout)
        elif left:
            raise RequestBodyError(f"the request body ended {left} bytes short")

    async def _read_client(self, body: BodySource) -> bytes:
        """The next bytes of the client's body, waiting at most `client_body_timeout`."""
        try:
            async with asyncio.timeout(self.client_body_timeout):
                return await body.readany()
        except TimeoutError:
            raise ClientBodyTimeout(
                f"the client sent no request body bytes for {self.client_body_timeout:g} s"
            ) from None
        except UpstreamError:
            raise
        except Exception as error:
            # aiohttp keeps the client's error in its StreamReader and re-raises that same
            # object: its traceback then holds the reader's frames, and the reader holds it, a
            # cycle that keeps every buffered body chunk alive until a full collection. Drop
            # the traceback (the message says what happened) and do not chain it.
            error.__traceback__ = None
            raise RequestBodyError(f"reading the request body failed: {error!r}") from None

    async def close(self) -> None:
        """Close the idle connections; in-flight responses drop theirs when released."""
        await self.pool.close()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a writer task's outcome as seen (it is reported through the response)."""
    if not task.cancelled():
        task.exception()
