"""The upstream client against raw-socket upstreams on loopback ports: framing, pool, errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import socket
import ssl
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.virtual_time import on_virtual_time
from support.workers import free_port

from gateway.settings import Upstream as UpstreamSettings
from gateway.settings import UpstreamTLS
from gateway.upstream import (
    READ_HIGH_WATER,
    RequestBodyError,
    UpstreamClient,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    create_upstream_client,
)

MIB = 1024 * 1024
BIG = 64 * MIB  # bytes moved each way by the bounded-memory tests
MAX_PEAK = 8 * MIB  # most bytes traced by tracemalloc while BIG bytes stream through
TEST_TIMEOUT = 20.0  # seconds any one exchange in these tests may take
EARLY = 0.001  # seconds a loop timer may fire before its deadline (the clock's rounding)
BLOCK = bytes(range(256)) * 4096  # 1 MiB of a known pattern

Handler = Callable[["Exchange"], Awaitable[None]]


@dataclass
class Exchange:
    """One accepted upstream connection, seen from the server side."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    number: int

    async def read_request(self) -> tuple[bytes, bytes]:
        """Read one request: return (head, body), de-chunking a chunked body."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        lowered = head.lower()
        if b"\r\ntransfer-encoding: chunked\r\n" in lowered:
            body = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    return head, bytes(body)
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
        for line in lowered.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                return head, await self.reader.readexactly(int(line.split(b":")[1]))
        return head, b""

    async def send(self, data: bytes) -> None:
        """Write and drain."""
        self.writer.write(data)
        await self.writer.drain()


@dataclass
class Upstream:
    """A raw-socket upstream: counts connections, keeps request heads, runs `handler`."""

    handler: Handler
    port: int = 0
    accepted: int = 0
    open_now: int = 0
    most_open: int = 0
    heads: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The upstream's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(Exchange(reader, writer, self.accepted))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@contextlib.asynccontextmanager
async def upstream(handler: Handler) -> AsyncIterator[Upstream]:
    """Run `handler` for every connection to a fresh loopback port."""
    up = Upstream(handler)
    up.server = await asyncio.start_server(up._serve, "127.0.0.1", 0)
    up.port = up.server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        up.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(up.server.wait_closed(), 2)


@contextlib.asynccontextmanager
async def client_for(
    url: str,
    *,
    pool_size: int = 8,
    timeout: float = 5.0,
    connect_timeout: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> AsyncIterator[UpstreamClient]:
    """An UpstreamClient for `url` (`timeout` bounds every phase unless set), closed afterwards."""
    for bound in ("pool_timeout", "read_timeout", "client_body_timeout"):
        options.setdefault(bound, timeout)
    client = UpstreamClient(
        url,
        pool_size=pool_size,
        connect_timeout=connect_timeout,
        timeout=timeout,
        ssl_context=ssl_context,
        **options,
    )
    try:
        yield client
    finally:
        await client.close()


async def fetch(
    client: UpstreamClient,
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
) -> tuple[UpstreamResponse, bytes]:
    """One request: the response (released) and its whole body."""
    async with asyncio.timeout(TEST_TIMEOUT):
        response = await client.request(method, target, headers or [])
        try:
            return response, await response.read()
        finally:
            response.release()


def canned(*responses: bytes, close: bool = False) -> Handler:
    """A handler answering successive requests on a connection with `responses`, in turn."""

    async def handle(ex: Exchange) -> None:
        for response in responses:
            await ex.read_request()
            await ex.send(response)
        if not close:
            await ex.reader.read()  # keep the connection open until the client closes it

    return handle


def keep_answering(response: bytes) -> Handler:
    """A handler answering every request on a connection with `response`."""

    async def handle(ex: Exchange) -> None:
        while True:
            await ex.read_request()
            await ex.send(response)

    return handle


OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


# --------------------------------------------------------------------------- request


async def test_request_line_headers_and_host_go_out_exactly() -> None:
    async def handle(ex: Exchange) -> None:
        while True:
            head, _ = await ex.read_request()
            up.heads.append(head)
            await ex.send(OK_HELLO)

    async with upstream(handle) as up, client_for(up.url) as client:
        headers = [("X-One", "1"), ("x-dup", "a"), ("X-Dup", "b"), ("Accept", "*/*")]
        await fetch(client, "GET", "/a%20b/c?x=1&y=%2F", headers)
        await fetch(client, "DELETE", "/trailing?")
    assert up.heads[0] == (
        b"GET /a%20b/c?x=1&y=%2F HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{up.port}\r\n".encode()
        + b"X-One: 1\r\nx-dup: a\r\nX-Dup: b\r\nAccept: */*\r\n\r\n"
    )
    assert up.heads[1].startswith(b"DELETE /trailing? HTTP/1.1\r\n")


async def test_header_injection_is_refused() -> None:
    client = UpstreamClient("http://127.0.0.1:9", pool_size=1, connect_timeout=1, timeout=1)
    for headers in ([("X-Evil", "a\r\nX-Injected: 1")], [("X-Evil\n", "a")]):
        with pytest.raises(ValueError):
            await client.request("GET", "/", headers)
    await client.close()


async def test_a_body_needs_framing() -> None:
    client = UpstreamClient("http://127.0.0.1:9", pool_size=1, connect_timeout=1, timeout=1)
    with pytest.raises(ValueError, match="Content-Length"):
        await client.request("POST", "/", [("X-A", "1")], Buffered(b"abc"))
    await client.close()


class Source:
    """A streamed request body made of `count` blocks, read like aiohttp's StreamReader."""

    def __init__(self, count: int, block: bytes = BLOCK, delay: float = 0.0) -> None:
        self.left = count
        self.block = block
        self.delay = delay
        self.digest = hashlib.sha256()

    def is_eof(self) -> bool:
        """Never fully buffered: this body always streams."""
        return False

    def read_nowait(self, n: int = -1) -> bytes:
        """Nothing is buffered ahead."""
        return b""

    async def readany(self) -> bytes:
        """The next block, or b"" at the end."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.left:
            return b""
        self.left -= 1
        self.digest.update(self.block)
        return self.block


class Buffered:
    """A request body that has fully arrived already (aiohttp: `is_eof()` true)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def is_eof(self) -> bool:
        """The whole body is buffered."""
        return True

    def read_nowait(self, n: int = -1) -> bytes:
        """All of it."""
        data, self.data = self.data, b""
        return data

    async def readany(self) -> bytes:
        """All of it (unused when `is_eof()` is true)."""
        return self.read_nowait()


def echo_digest(ex_heads: list[bytes]) -> Handler:
    """A handler answering each request with the SHA-256 and length of its body."""

    async def handle(ex: Exchange) -> None:
        while True:
            head, body = await ex.read_request()
            ex_heads.append(head)
            answer = f"{hashlib.sha256(body).hexdigest()} {len(body)}".encode()
            await ex.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(answer), answer)
            )

    return handle


@pytest.mark.parametrize("chunked", [False, True])
async def test_buffered_body_goes_out_with_the_head(chunked: bool) -> None:
    heads: list[bytes] = []
    data = b"x" * 1000
    async with upstream(echo_digest(heads)) as up, client_for(up.url) as client:
        headers = [] if chunked else [("Content-Length", "1000")]
        response = await client.request("POST", "/b", headers, Buffered(data), chunked=chunked)
        answer = await response.read()
        response.release()
        empty = await client.request("POST", "/e", [], Buffered(b""), chunked=True)
        assert await empty.read() == f"{hashlib.sha256(b'').hexdigest()} 0".encode()
        empty.release()
    assert answer == f"{hashlib.sha256(data).hexdigest()} 1000".encode()
    assert (b"transfer-encoding: chunked" in heads[0].lower()) is chunked
    assert up.accepted == 1


@pytest.mark.parametrize("chunked", [False, True])
async def test_streamed_body_arrives_intact(chunked: bool) -> None:
    heads: list[bytes] = []
    source = Source(5, b"abc" * 1000, delay=0.01)
    async with upstream(echo_digest(heads)) as up, client_for(up.url) as client:
        headers = [] if chunked else [("Content-Length", "15000")]
        async with asyncio.timeout(TEST_TIMEOUT):
            response = await client.request("PUT", "/s", headers, source, chunked=chunked)
            answer = await response.read()
            response.release()
            second, _ = await fetch(client)
    assert answer == f"{source.digest.hexdigest()} 15000".encode()
    assert second.status == 200
    assert up.accepted == 1  # the connection was reused after the streamed upload


# --------------------------------------------------------------------------- response framing


async def test_content_length_body() -> None:
    async with upstream(canned(OK_HELLO)) as up, client_for(up.url) as client:
        response, body = await fetch(client)
    assert (response.status, response.reason, body) == (200, "OK", b"hello")
    assert response.content_length == 5
    assert response.version == "1.1"


async def test_chunked_body_with_trailers() -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        b"4\r\nraw \r\n5\r\nbytes\r\n0\r\nX-Sum: 1\r\n\r\n"
    )
    async with upstream(keep_answering(chunked)) as up, client_for(up.url) as client:
        response, body = await fetch(client)
        _, body_again = await fetch(client)
    assert (response.status, response.reason, body) == (201, "Created", b"raw bytes")
    assert response.content_length is None
    assert ("Transfer-Encoding", "chunked") in response.headers
    assert body_again == b"raw bytes"
    assert up.accepted == 1  # chunked framing ended cleanly: reused


async def test_read_until_close_body() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await ex.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for part in (b"one ", b"two ", b"three"):
            await asyncio.sleep(0.01)
            await ex.send(part)

    async with upstream(handle) as up, client_for(up.url) as client:
        response, body = await fetch(client)
        await fetch(client)
    assert body == b"one two three"
    assert response.content_length is None
    assert up.accepted == 2  # read-until-close can never be reused


async def test_head_has_no_body_and_keeps_content_length() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\nContent-Type: a/b\r\n\r\n"
    async with upstream(canned(head, OK_HELLO)) as up, client_for(up.url) as client:
        response, body = await fetch(client, "HEAD")
        _, after_body = await fetch(client)
    assert (response.status, body, response.content_length) == (200, b"", 12345)
    assert ("Content-Length", "12345") in response.headers
    assert after_body == b"hello"
    assert up.accepted == 1  # the HEAD answer did not confuse the next exchange


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 99\r\n\r\n',
    ],
)
async def test_204_and_304_have_no_body(answer: bytes) -> None:
    async with upstream(canned(answer, OK_HELLO)) as up, client_for(up.url) as client:
        response, body = await fetch(client)
        _, after = await fetch(client)
    assert body == b""
    assert response.status in (204, 304)
    assert after == b"hello"
    assert up.accepted == 1


async def test_duplicate_headers_keep_order_and_case() -> None:
    answer = (
        b"HTTP/1.1 299 Custom Reason\r\n"
        b"Set-Cookie: a=1; Path=/\r\n"
        b"x-custom: one\r\n"
        b"Set-Cookie: b=2; HttpOnly\r\n"
        b"X-CUSTOM: two\r\n"
        b"X-Spaces: value with  spaces\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Utf8: caf\xc3\xa9\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    async with upstream(canned(answer)) as up, client_for(up.url) as client:
        response, _ = await fetch(client)
    assert (response.status, response.reason) == (299, "Custom Reason")
    assert response.headers == [
        ("Set-Cookie", "a=1; Path=/"),
        ("x-custom", "one"),
        ("Set-Cookie", "b=2; HttpOnly"),
        ("X-CUSTOM", "two"),
        ("X-Spaces", "value with  spaces"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Utf8", "caf\xc3\xa9"),  # the bytes, as latin-1: byte-exact whatever they mean
        ("Content-Length", "0"),
    ]
    assert response.connection == "keep-alive, X-Hop"


async def test_interim_responses_are_skipped() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 5\r\n\r\nhello"
    )
    async with upstream(canned(answer, OK_HELLO)) as up, client_for(up.url) as client:
        response, body = await fetch(client)
        _, after = await fetch(client)
    assert (response.status, body) == (200, b"hello")
    assert response.headers == [("X-Final", "yes"), ("Content-Length", "5")]
    assert after == b"hello"
    assert up.accepted == 1


async def test_interim_response_split_across_packets() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        for part in (b"HTTP/1.1 100 Con", b"tinue\r\n\r\nHTTP/1.1 2", b"00 OK\r\nContent-Le"):
            await ex.send(part)
            await asyncio.sleep(0.01)
        await ex.send(b"ngth: 5\r\n\r\nhel")
        await asyncio.sleep(0.01)
        await ex.send(b"lo")
        await ex.reader.read()

    async with upstream(handle) as up, client_for(up.url) as client:
        response, body = await fetch(client)
    assert (response.status, response.reason, body) == (200, "OK", b"hello")


async def test_garbage_is_a_protocol_error() -> None:
    async with upstream(canned(b"SSH-2.0-OpenSSH\r\n\r\n")) as up, client_for(up.url) as client:
        with pytest.raises(UpstreamProtocolError):
            await fetch(client)


# --------------------------------------------------------------------------- pool


async def test_keep_alive_reuses_one_connection() -> None:
    async with upstream(keep_answering(OK_HELLO)) as up, client_for(up.url) as client:
        for _ in range(20):
            _, body = await fetch(client)
            assert body == b"hello"
    assert up.accepted == 1
    assert client.connections_opened == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, CLOSE\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
    ],
)
async def test_connection_close_and_http10_are_not_reused(answer: bytes) -> None:
    async with upstream(canned(answer)) as up, client_for(up.url) as client:
        for _ in range(3):
            _, body = await fetch(client)
            assert body == b"hello"
    assert up.accepted == 3


async def test_unread_body_is_not_reused() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\n\r\n" + b"y" * 4_000_000
    async with upstream(keep_answering(big)) as up, client_for(up.url) as client:
        response = await client.request("GET", "/", [])
        assert len(await response.read_chunk()) > 0
        response.release()  # mid-body: the connection is dropped
        _, body = await fetch(client)
    assert len(body) == 4_000_000
    assert up.accepted == 2


async def test_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    """The upstream closes an idle keep-alive connection just as the next request goes out."""

    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await ex.send(OK_HELLO)
        if ex.number == 1:
            await ex.read_request()  # the reused connection: close it without an answer
            ex.writer.transport.abort()
            return
        await ex.reader.read()

    async with upstream(handle) as up, client_for(up.url) as client:
        await fetch(client)
        response, body = await fetch(client)
        assert (response.status, body) == (200, b"hello")
    assert up.accepted == 2


async def test_buffered_body_of_an_idempotent_request_is_resent_on_retry() -> None:
    seen: list[bytes] = []

    async def handle(ex: Exchange) -> None:
        if ex.number == 1:
            await ex.read_request()
            await ex.send(OK_HELLO)
        _, body = await ex.read_request()
        seen.append(body)
        if ex.number == 1:
            ex.writer.transport.abort()  # stale: the POST is lost with the connection
            return
        await ex.send(OK_HELLO)
        await ex.reader.read()

    async with upstream(handle) as up, client_for(up.url) as client:
        await fetch(client)
        response = await client.request("PUT", "/", [("Content-Length", "3")], Buffered(b"abc"))
        assert await response.read() == b"hello"
        response.release()
    assert up.accepted == 2
    assert seen == [b"abc", b"abc"]


async def test_no_retry_on_a_fresh_connection_or_after_response_bytes() -> None:
    async def drop(ex: Exchange) -> None:
        await ex.read_request()
        ex.writer.transport.abort()

    async with upstream(drop) as up, client_for(up.url) as client:
        with pytest.raises(UpstreamClosed):
            await fetch(client)
    assert up.accepted == 1

    async def partial(ex: Exchange) -> None:
        await ex.read_request()
        await ex.send(OK_HELLO)
        await ex.read_request()
        await ex.send(b"HTTP/1.1 200 O")
        ex.writer.transport.abort()

    async with upstream(partial) as up, client_for(up.url) as client:
        await fetch(client)
        with pytest.raises(UpstreamClosed):
            await fetch(client)
    assert up.accepted == 1


async def test_streamed_body_already_read_is_not_resent() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await ex.send(OK_HELLO)
        await ex.reader.readexactly(10)  # part of the next request
        ex.writer.transport.abort()

    async with upstream(handle) as up, client_for(up.url) as client:
        await fetch(client)
        source = Source(3, b"z" * 100_000)
        with pytest.raises(UpstreamClosed):
            async with asyncio.timeout(TEST_TIMEOUT):
                await client.request("PUT", "/", [("Content-Length", "300000")], source)
    assert up.accepted == 1


@on_virtual_time
async def test_pool_limit_is_respected() -> None:
    async def handle(ex: Exchange) -> None:
        while True:
            await ex.read_request()
            await asyncio.sleep(0.05)
            await ex.send(OK_HELLO)

    async with upstream(handle) as up, client_for(up.url, pool_size=2) as client:
        results = await asyncio.gather(*(fetch(client) for _ in range(10)))
    assert [body for _, body in results] == [b"hello"] * 10
    assert up.most_open <= 2
    assert up.accepted == 2


@on_virtual_time
async def test_waiting_for_a_free_connection_times_out() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await asyncio.sleep(1)

    async with upstream(handle) as up, client_for(up.url, pool_size=1, timeout=0.3) as client:
        first = asyncio.create_task(fetch(client))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeout):
            await fetch(client)
        with pytest.raises(UpstreamTimeout):
            await first


def loop_time() -> float:
    """The running loop's clock (virtual under @on_virtual_time: idle waits are skipped)."""
    return asyncio.get_running_loop().time()


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop turn until `condition` holds (at most TEST_TIMEOUT seconds)."""
    async with asyncio.timeout(TEST_TIMEOUT):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_released_connection_goes_to_the_first_waiter_not_a_newcomer() -> None:
    """Under saturation the queue is served in order: a newcomer arriving while the connection
    is released queues behind the waiters instead of taking it before the woken one runs."""
    served: list[bytes] = []

    async def handle(ex: Exchange) -> None:
        while True:
            head, _ = await ex.read_request()
            served.append(head.split(b" ", 2)[1])
            await asyncio.sleep(0.02)  # a slow upstream
            await ex.send(OK_HELLO)

    # A generous pool_timeout: the order, not a race against a clock, is what is checked.
    async with upstream(handle) as up, client_for(up.url, pool_size=1, timeout=10) as client:
        held = await client.request("GET", "/h", [])
        assert await held.read() == b"hello"
        first = asyncio.create_task(fetch(client, "GET", "/a"))
        await _until(lambda: client.pool.waiting == 1)
        second = asyncio.create_task(fetch(client, "GET", "/b"))
        await _until(lambda: client.pool.waiting == 2)
        # The newcomer's task is ready before the release wakes the first waiter: it runs
        # first, as a request arriving in the same loop turn would.
        newcomer = asyncio.create_task(fetch(client, "GET", "/c"))
        held.release()
        results = await asyncio.gather(first, second, newcomer)
    assert [body for _, body in results] == [b"hello"] * 3
    assert served == [b"/h", b"/a", b"/b", b"/c"]
    assert up.accepted == 1  # one connection, handed from each request to the next


async def test_close_closes_idle_connections() -> None:
    closed = asyncio.Event()

    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await ex.send(OK_HELLO)
        await ex.reader.read()  # EOF once the client closes its side
        closed.set()

    async with upstream(handle) as up:
        client = UpstreamClient(up.url, pool_size=4, connect_timeout=1, timeout=1)
        await fetch(client)
        await client.close()
        await asyncio.wait_for(closed.wait(), 2)
        with pytest.raises(UpstreamClosed):
            await client.request("GET", "/", [])


@on_virtual_time
async def test_idle_data_drops_the_connection() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await ex.send(OK_HELLO)
        await asyncio.sleep(0.05)
        await ex.send(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
        await ex.reader.read()

    async with upstream(handle) as up, client_for(up.url) as client:
        await fetch(client)
        await asyncio.sleep(0.2)
        response, body = await fetch(client)
    assert (response.status, body) == (200, b"hello")
    assert up.accepted == 2


# --------------------------------------------------------------------------- errors


async def test_connection_refused() -> None:
    port = free_port()  # free a moment ago, and no other worker takes it
    async with client_for(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(UpstreamClosed) as caught:
            await fetch(client)
    assert not isinstance(caught.value, UpstreamTimeout)


async def test_connect_timeout() -> None:
    """A listener whose accept queue is full: the SYN is dropped and connecting hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.1)
        async with client_for(f"http://127.0.0.1:{port}", connect_timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await fetch(client)
            assert time.monotonic() - started < 2
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@on_virtual_time
async def test_head_timeout() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await asyncio.sleep(3)

    async with upstream(handle) as up, client_for(up.url, timeout=0.3) as client:
        started = loop_time()
        with pytest.raises(UpstreamTimeout):
            await fetch(client)
        assert 0.3 - EARLY <= loop_time() - started < 1.5


@on_virtual_time
async def test_a_shorter_read_timeout_after_a_longer_head_wait_still_holds() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await asyncio.sleep(0.1)  # the client waits for the head (bounded by 5 s)
        await ex.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await asyncio.sleep(3)

    async with upstream(handle) as up, client_for(up.url, timeout=5, read_timeout=0.2) as client:
        response = await client.request("GET", "/", [])
        try:
            assert await response.read_chunk() == b"abc"
            started = loop_time()
            with pytest.raises(UpstreamTimeout):
                await response.read_chunk()
            assert 0.2 - EARLY <= loop_time() - started < 1.0  # 0.2 s, not the head's 5 s
        finally:
            response.release()


@on_virtual_time
async def test_timeouts_hold_for_each_exchange_on_a_kept_connection() -> None:
    # Each exchange's wait has its own deadline: an earlier exchange's never cuts a later
    # one short, and a later one that stalls still times out.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    delays = [0.0, 0.45, 0.45, 3.0]

    async def handle(ex: Exchange) -> None:
        for delay in delays:
            await ex.read_request()
            await asyncio.sleep(delay)
            await ex.send(answer)

    async with upstream(handle) as up, client_for(up.url, pool_size=1, timeout=0.6) as client:
        for _ in range(3):  # each head comes 0.45 s after its request: inside 0.6 s
            response, body = await fetch(client)
            assert (response.status, body) == (200, b"ok")
        assert client.connections_opened == 1
        started = loop_time()
        with pytest.raises(UpstreamTimeout):
            await fetch(client)
        assert 0.6 - EARLY <= loop_time() - started < 1.5


async def test_mid_body_close_is_an_error_after_the_bytes_that_came() -> None:
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10

    async with upstream(canned(truncated, close=True)) as up, client_for(up.url) as client:
        response = await client.request("GET", "/", [])
        try:
            assert await response.read_chunk() == b"x" * 10
            with pytest.raises(UpstreamClosed):
                await response.read_chunk()
        finally:
            response.release()
        with pytest.raises(UpstreamClosed):
            await fetch(client)


@on_virtual_time
async def test_mid_body_stall_times_out() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await ex.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        await asyncio.sleep(3)

    async with upstream(handle) as up, client_for(up.url, timeout=0.3) as client:
        response = await client.request("GET", "/", [])
        try:
            assert await response.read_chunk() == b"abc"
            started = loop_time()
            with pytest.raises(UpstreamTimeout):
                await response.read_chunk()
            assert 0.3 - EARLY <= loop_time() - started < 1.5
        finally:
            response.release()


@on_virtual_time
async def test_upload_stall_times_out() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)  # never reads the body

    async with upstream(handle) as up, client_for(up.url, timeout=0.5) as client:
        source = Source(64)  # 64 MiB: far more than the socket buffers hold
        started = loop_time()
        with pytest.raises(UpstreamTimeout):
            async with asyncio.timeout(TEST_TIMEOUT):
                await client.request("PUT", "/", [("Content-Length", str(64 * MIB))], source)
        assert 0.5 - EARLY <= loop_time() - started < 3
    assert source.left > 0


# --------------------------------------------------------------------------- big bodies


async def test_big_download_streams_with_bounded_memory() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await ex.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
        for _ in range(BIG // len(BLOCK)):
            await ex.send(BLOCK)
        await ex.reader.read()

    expected = hashlib.sha256()
    for _ in range(BIG // len(BLOCK)):
        expected.update(BLOCK)
    async with upstream(handle) as up, client_for(up.url) as client:
        received = hashlib.sha256()
        total = 0
        most_buffered = 0
        tracemalloc.start()
        try:
            async with asyncio.timeout(60):
                response = await client.request("GET", "/big", [])
                while chunk := await response.read_chunk():
                    received.update(chunk)
                    total += len(chunk)
                    most_buffered = max(most_buffered, len(chunk))
                    await asyncio.sleep(0.0005)  # a consumer slower than loopback
                response.release()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert total == BIG
    assert received.digest() == expected.digest()
    assert most_buffered <= READ_HIGH_WATER + MIB
    assert peak < MAX_PEAK, peak


async def test_big_upload_streams_with_bounded_memory() -> None:
    heads: list[bytes] = []

    async def handle(ex: Exchange) -> None:
        head = await ex.reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        digest = hashlib.sha256()
        left = BIG
        while left:
            data = await ex.reader.read(min(left, 256 * 1024))
            if not data:
                return
            digest.update(data)
            left -= len(data)
            await asyncio.sleep(0.0005)  # an upstream slower than the client
        answer = digest.hexdigest().encode()
        await ex.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(answer), answer))

    source = Source(BIG // len(BLOCK))
    async with upstream(handle) as up, client_for(up.url, timeout=30) as client:
        tracemalloc.start()
        try:
            async with asyncio.timeout(60):
                response = await client.request("PUT", "/", [("Content-Length", str(BIG))], source)
                answer = await response.read()
                response.release()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert answer == source.digest.hexdigest().encode()
    assert peak < MAX_PEAK, peak


# --------------------------------------------------------------------------- https


def self_signed(directory: Path) -> tuple[Path, Path]:
    """Make a self-signed certificate for 127.0.0.1 with the openssl command (required)."""
    assert shutil.which("openssl") is not None, "the https tests need the openssl command"
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


async def test_https_upstream(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    up = Upstream(keep_answering(OK_HELLO))
    server = await asyncio.start_server(up._serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with client_for(f"https://127.0.0.1:{port}", ssl_context=trusting) as client:
            for _ in range(3):
                response, body = await fetch(client)
                assert (response.status, body) == (200, b"hello")
        assert up.accepted == 1
        # The default context does not trust a self-signed certificate.
        async with client_for(f"https://127.0.0.1:{port}") as strict:
            with pytest.raises(UpstreamClosed):
                await fetch(strict)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


# --------------------------------------------------------------------------- defects (issue 8)


async def test_a_post_is_never_resent_after_the_upstream_received_it() -> None:
    """RFC 9112 section 9.3.1.1: a non-idempotent request is not retried automatically."""
    seen: list[bytes] = []

    async def handle(ex: Exchange) -> None:
        while True:
            head, body = await ex.read_request()
            seen.append(head.split(b" ", 1)[0] + b" " + body)
            if head.startswith(b"POST"):
                ex.writer.transport.abort()  # received, then dropped without an answer
                return
            await ex.send(OK_HELLO)

    async with upstream(handle) as up, client_for(up.url) as client:
        await fetch(client)
        with pytest.raises(UpstreamClosed):
            async with asyncio.timeout(TEST_TIMEOUT):
                await client.request("POST", "/", [("Content-Length", "3")], Buffered(b"abc"))
        # A streamed POST body is not resent either.
        await fetch(client)
        with pytest.raises(UpstreamClosed):
            async with asyncio.timeout(TEST_TIMEOUT):
                await client.request("POST", "/", [("Content-Length", "3")], Source(1, b"xyz"))
    assert seen.count(b"POST abc") == 1
    assert seen.count(b"POST xyz") == 1


def _open_fds() -> int:
    """File descriptors this process holds now."""
    return len(os.listdir("/proc/self/fd"))


STRESS_REQUESTS = 3000  # requests in the cancellation stress test
STRESS_CONCURRENCY = 48  # of them in flight at once
STRESS_POOL = 8  # pool_size under stress


async def test_pool_accounting_holds_under_random_cancellations() -> None:
    """Thousands of requests, cancelled at random in every phase, against a rude upstream."""
    rng = random.Random(8)
    fds_before = _open_fds()

    async def handle(ex: Exchange) -> None:
        while True:
            head, _ = await ex.read_request()
            kind = head.split(b" ", 2)[1]
            if kind == b"/slow":
                await asyncio.sleep(0.002)
                await ex.send(OK_HELLO)
            elif kind == b"/stall":  # half a body, then silence
                await ex.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                await asyncio.sleep(0.05)
                ex.writer.transport.abort()
                return
            elif kind == b"/drop":
                ex.writer.transport.abort()
                return
            elif kind == b"/close":
                await ex.send(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
                )
                return
            else:
                await ex.send(OK_HELLO)

    over: list[int] = []
    async with upstream(handle) as up:
        client = UpstreamClient(
            up.url, pool_size=STRESS_POOL, connect_timeout=1, timeout=0.3, pool_timeout=2
        )

        async def one(path: str) -> None:
            response = await client.request("GET", path, [])
            try:
                await response.read()
            finally:
                response.release()

        async def sample() -> None:
            while True:
                live = client.pool.live
                if live > STRESS_POOL:
                    over.append(live)
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        semaphore = asyncio.Semaphore(STRESS_CONCURRENCY)
        paths = ["/fast"] * 6 + ["/slow", "/stall", "/drop", "/close"]

        async def run(n: int) -> None:
            async with semaphore:
                task = asyncio.create_task(one(rng.choice(paths)))
                if rng.random() < 0.5:  # cancel in connect, head wait or mid-body
                    if rng.random() < 0.5:
                        for _ in range(rng.randrange(8)):  # a few loop turns: mid-connect
                            await asyncio.sleep(0)
                    else:
                        await asyncio.sleep(rng.choice([0.0005, 0.001, 0.003, 0.01]))
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                    await task

        async with asyncio.timeout(60):
            await asyncio.gather(*(run(n) for n in range(STRESS_REQUESTS)))
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await asyncio.sleep(0.1)
        assert up.open_now <= STRESS_POOL
        assert client.pool.live <= STRESS_POOL
        assert client.pool.idle <= client.pool.live
        # Every slot came back exactly once: the whole pool can be used again.
        results = await asyncio.gather(*(fetch(client, "GET", "/slow") for _ in range(20)))
        assert [body for _, body in results] == [b"hello"] * 20
        await client.close()
    assert over == []
    await asyncio.sleep(0.1)
    assert _open_fds() <= fds_before


async def test_an_over_long_header_line_is_refused_while_it_arrives() -> None:
    sent = 0

    async def handle(ex: Exchange) -> None:
        nonlocal sent
        await ex.read_request()
        await ex.send(b"HTTP/1.1 200 OK\r\nX-Big: ")
        for _ in range(64):
            await ex.send(b"a" * MIB)
            sent += MIB

    async with upstream(handle) as up, client_for(up.url) as client:
        with pytest.raises(UpstreamError) as caught:
            await fetch(client)
    assert type(caught.value).__name__ == "UpstreamLimitError"
    assert sent < 64 * MIB


async def test_latin1_header_bytes_and_reason_are_kept() -> None:
    answer = b"HTTP/1.1 200 Tr\xe8s bien\r\nX-File: caf\xe9.txt\r\nContent-Length: 0\r\n\r\n"
    async with upstream(canned(answer)) as up, client_for(up.url) as client:
        response, _ = await fetch(client)
    assert response.reason.encode("latin-1") == b"Tr\xe8s bien"
    name, value = response.headers[0]
    assert (name, value.encode("latin-1")) == ("X-File", b"caf\xe9.txt")


# --------------------------------------------------------------------------- idle connections


async def test_an_idle_connection_the_upstream_closed_is_never_handed_out() -> None:
    async def handle(ex: Exchange) -> None:
        await ex.read_request()
        await ex.send(OK_HELLO)  # keep-alive by default, then the upstream closes anyway

    async with upstream(handle) as up, client_for(up.url) as client:
        await fetch(client)
        await asyncio.sleep(0.05)
        assert client.pool.idle == 0  # its close was seen: out of the pool
        response = await client.request("POST", "/", [("Content-Length", "2")], Buffered(b"ok"))
        assert await response.read() == b"hello"
        response.release()
    assert up.accepted == 2


@on_virtual_time
async def test_idle_connections_expire_by_idle_timeout_or_the_keep_alive_hint() -> None:
    closed: list[int] = []

    async def handle(ex: Exchange) -> None:
        try:
            while True:
                head, _ = await ex.read_request()
                hint = b"Keep-Alive: timeout=1\r\n" if b" /hint " in head else b""
                await ex.send(b"HTTP/1.1 200 OK\r\n" + hint + b"Content-Length: 5\r\n\r\nhello")
        finally:
            closed.append(ex.number)

    async with upstream(handle) as up, client_for(up.url, idle_timeout=0.3) as client:
        await fetch(client)
        await asyncio.sleep(0.5)  # past idle_timeout: closed by keygate, unasked
        assert closed == [1]
        assert client.pool.live == 0
        await fetch(client)
        assert up.accepted == 2
    async with upstream(handle) as up, client_for(up.url, idle_timeout=30) as client:
        await fetch(client, "GET", "/hint")  # timeout=1: kept 0.5 s, less than the upstream
        await asyncio.sleep(0.2)
        await fetch(client)
        assert up.accepted == 1
        await asyncio.sleep(0.7)
        await fetch(client)
        assert up.accepted == 2


# --------------------------------------------------------------------------- tls (trustme)


@dataclass
class TLSUpstream:
    """An HTTPS upstream on loopback, with the CA that issued its certificate."""

    url: str
    ca: trustme.CA
    up: Upstream


@contextlib.asynccontextmanager
async def tls_upstream(
    tmp_path: Path, *, names: tuple[str, ...] = ("127.0.0.1",), client_ca: trustme.CA | None = None
) -> AsyncIterator[TLSUpstream]:
    """An HTTPS upstream whose certificate names `names`; `client_ca` makes it demand mTLS."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(server_context)
    if client_ca is not None:
        server_context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(server_context)
    up = Upstream(keep_answering(OK_HELLO))
    server = await asyncio.start_server(up._serve, "127.0.0.1", 0, ssl=server_context)
    try:
        port = server.sockets[0].getsockname()[1]
        yield TLSUpstream(f"https://127.0.0.1:{port}", ca, up)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def settings_for(url: str, tls: UpstreamTLS) -> UpstreamSettings:
    """Upstream settings as the config would give them (short bounds for tests)."""
    return UpstreamSettings(url=url, timeout=5, connect_timeout=2, headers={}, pool_size=4, tls=tls)


async def test_https_upstream_verified_with_a_configured_ca(tmp_path: Path) -> None:
    async with tls_upstream(tmp_path) as https:
        ca_file = tmp_path / "ca.pem"
        https.ca.cert_pem.write_to_path(str(ca_file))
        client = create_upstream_client(settings_for(https.url, UpstreamTLS(ca_file=str(ca_file))))
        try:
            for _ in range(3):
                response, body = await fetch(client)
                assert (response.status, body) == (200, b"hello")
        finally:
            await client.close()
        assert https.up.accepted == 1
        # Verification is on by default: the system's CAs do not know this one.
        strict = create_upstream_client(settings_for(https.url, UpstreamTLS()))
        try:
            with pytest.raises(UpstreamClosed, match="CERTIFICATE_VERIFY_FAILED"):
                await fetch(strict)
        finally:
            await strict.close()


async def test_https_upstream_server_name(tmp_path: Path) -> None:
    async with tls_upstream(tmp_path, names=("backend.internal",)) as https:
        ca_file = tmp_path / "ca.pem"
        https.ca.cert_pem.write_to_path(str(ca_file))
        named = UpstreamTLS(ca_file=str(ca_file), server_name="backend.internal")
        client = create_upstream_client(settings_for(https.url, named))
        try:
            response, _ = await fetch(client)
            assert response.status == 200
        finally:
            await client.close()
        unnamed = create_upstream_client(settings_for(https.url, UpstreamTLS(ca_file=str(ca_file))))
        try:
            with pytest.raises(UpstreamClosed):  # the certificate does not name 127.0.0.1
                await fetch(unnamed)
        finally:
            await unnamed.close()


async def test_https_upstream_with_a_client_certificate(tmp_path: Path) -> None:
    client_ca = trustme.CA()
    async with tls_upstream(tmp_path, client_ca=client_ca) as https:
        ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem"
        https.ca.cert_pem.write_to_path(str(ca_file))
        issued = client_ca.issue_cert("keygate.client")
        issued.cert_chain_pems[0].write_to_path(str(cert_file))
        issued.private_key_pem.write_to_path(str(key_file))
        mtls = UpstreamTLS(ca_file=str(ca_file), cert_file=str(cert_file), key_file=str(key_file))
        client = create_upstream_client(settings_for(https.url, mtls))
        try:
            response, body = await fetch(client)
            assert (response.status, body) == (200, b"hello")
        finally:
            await client.close()
        anonymous = create_upstream_client(
            settings_for(https.url, UpstreamTLS(ca_file=str(ca_file)))
        )
        try:
            with pytest.raises(UpstreamError):  # TLS 1.3: refused at the first read
                await fetch(anonymous)
        finally:
            await anonymous.close()


async def test_an_over_long_header_line_is_refused_when_its_body_fills_the_packet() -> None:
    # The whole answer in one write: the head fits the head budget, the packet does not.
    answer = (
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200 + b"\r\nContent-Length: 1000\r\n\r\n"
    ) + b"b" * 1000

    async with (
        upstream(keep_answering(answer)) as up,
        client_for(up.url, max_line_size=100, max_headers=2) as client,
    ):
        with pytest.raises(UpstreamError) as caught:
            await fetch(client)
    assert type(caught.value).__name__ == "UpstreamLimitError"


async def test_a_flood_of_trailer_fields_is_refused_while_it_arrives() -> None:
    sent = 0

    async def handle(ex: Exchange) -> None:
        nonlocal sent
        await ex.read_request()
        await ex.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n")
        for _ in range(64):
            await ex.send(b"X-T: a\r\n" * (MIB // 8))
            sent += MIB

    async with upstream(handle) as up, client_for(up.url) as client:
        with pytest.raises(UpstreamError) as caught:
            await fetch(client)
    assert type(caught.value).__name__ == "UpstreamLimitError"
    assert sent < 64 * MIB


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_body_longer_than_its_content_length_never_reaches_the_upstream(
    streamed: bool,
) -> None:
    # The bytes past the declared length would be read upstream as a second request.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    heads: list[bytes] = []
    body = Source(1, b"hello" + smuggled) if streamed else Buffered(b"hello" + smuggled)
    async with upstream(echo_digest(heads)) as up, client_for(up.url) as client:
        with pytest.raises(RequestBodyError):
            async with asyncio.timeout(TEST_TIMEOUT):
                response = await client.request("POST", "/", [("Content-Length", "5")], body)
                response.release()
        await asyncio.sleep(0.2)
    assert not any(b"/smuggled" in head for head in heads)
