"""Forwarding against misbehaving upstreams: replays, bounds, limits, byte transparency."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.config import write_config

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

TEST_TIMEOUT = 10.0  # seconds any one exchange in these tests may take
OK_HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class Conn:
    """One connection accepted by a misbehaving upstream."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    number: int
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def request(self) -> tuple[bytes, bytes]:
        """Read one request: (head, body), a chunked body de-chunked."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        lowered = head.lower()
        if b"\r\ntransfer-encoding: chunked\r\n" in lowered:
            body = bytearray()
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            await self.reader.readuntil(b"\r\n")
            return head, bytes(body)
        for line in lowered.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                return head, await self.reader.readexactly(int(line.split(b":")[1]))
        return head, b""

    async def send(self, data: bytes) -> None:
        """Write and drain."""
        self.writer.write(data)
        await self.writer.drain()


@dataclass
class Misbehaving:
    """A loopback upstream running `handler` per connection; records what it saw."""

    handler: Handler
    port: int = 0
    conns: list[Conn] = field(default_factory=list)
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The upstream's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def open_now(self) -> int:
        """Connections not yet closed."""
        return sum(not conn.closed.is_set() for conn in self.conns)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader, writer, len(self.conns) + 1)
        self.conns.append(conn)
        try:
            await self.handler(conn)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            conn.closed.set()


@contextlib.asynccontextmanager
async def misbehaving(handler: Handler) -> AsyncIterator[Misbehaving]:
    """Run a misbehaving upstream on a loopback port."""
    up = Misbehaving(handler)
    server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()
        for conn in up.conns:
            conn.writer.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


@contextlib.asynccontextmanager
async def gateway_in_front(
    tmp_path: Path, up: Misbehaving, **upstream: Any
) -> AsyncIterator[RunningGateway]:
    """An in-process gateway (anonymous passthrough) in front of `up`."""
    config = write_config(tmp_path / "gw", up.url, extra={"upstream": upstream})
    async with running_gateway(load_settings(config), serve_admin=False) as running:
        yield running


@dataclass
class Answer:
    """A response as the client's socket received it."""

    head: bytes
    body: bytes

    @property
    def status(self) -> int:
        """The status code."""
        return int(self.head.split(b" ", 2)[1])

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def dechunk(data: bytes) -> bytes:
    """Decode a complete chunked body (trailers ignored)."""
    body = bytearray()
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if not size:
            return bytes(body)
        body += data[:size]
        data = data[size + 2 :]


async def exchange(port: int, request: bytes, *, read_all: bool = True) -> Answer:
    """Send raw bytes on a new connection; read until the gateway closes it."""
    async with asyncio.timeout(TEST_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read() if read_all else b""
        finally:
            writer.close()
    if b"\r\ntransfer-encoding: " in head.lower() and b"chunked\r\n" in head.lower():
        body = dechunk(body)
    return Answer(head, body)


def get(path: str = "/", *extra: str, version: str = "1.1") -> bytes:
    """A GET that asks the gateway to close the connection after answering."""
    lines = [f"GET {path} HTTP/{version}", "Host: x", *extra, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------- replays


async def test_a_post_the_upstream_received_is_never_sent_again(tmp_path: Path) -> None:
    """The upstream drops the pooled connection after reading a POST: 502, seen once."""

    async def handle(conn: Conn) -> None:
        while True:
            head, body = await conn.request()
            up.requests.append((head, body))
            if head.startswith(b"POST"):
                conn.writer.transport.abort()
                return
            await conn.send(OK_HELLO)

    async with misbehaving(handle) as up, gateway_in_front(tmp_path, up) as gw:
        first = await exchange(gw.proxy_port, get())
        assert first.status == 200
        post = (
            b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Connection: close\r\n\r\nstart"
        )
        answer = await exchange(gw.proxy_port, post)
    posts = [body for head, body in up.requests if head.startswith(b"POST")]
    assert posts == [b"start"]
    assert answer.status == 502
    assert answer.json()["error"] == "upstream_unavailable"


async def test_an_idempotent_request_on_a_stale_connection_is_retried_once(
    tmp_path: Path,
) -> None:
    async def handle(conn: Conn) -> None:
        while True:
            head, body = await conn.request()
            up.requests.append((head, body))
            if conn.number <= 2 and head.startswith(b"PUT"):
                conn.writer.transport.abort()  # every early connection drops PUTs
                return
            await conn.send(OK_HELLO)

    async with misbehaving(handle) as up, gateway_in_front(tmp_path, up) as gw:
        assert (await exchange(gw.proxy_port, get())).status == 200
        put = b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab"
        # Pooled connection 1 drops it, fresh connection 2 drops it too: one retry only.
        answer = await exchange(gw.proxy_port, put)
        assert answer.status == 502
        assert [body for head, body in up.requests if head.startswith(b"PUT")] == [b"ab"] * 2
        assert (await exchange(gw.proxy_port, get())).status == 200
        again = await exchange(gw.proxy_port, put)  # connection 3 answers
        assert (again.status, again.body) == (200, b"hello")


# --------------------------------------------------------------------------- bounds


async def test_a_stalled_chunked_upload_frees_its_pool_slot(tmp_path: Path) -> None:
    """Two uploads stall after one byte with pool_size 2: others are still served."""

    async def handle(conn: Conn) -> None:
        while True:
            await conn.request()
            await conn.send(OK_HELLO)

    stalled_head = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n"
    )
    async with (
        misbehaving(handle) as up,
        gateway_in_front(tmp_path, up, pool_size=2, client_body_timeout=0.5) as gw,
    ):
        stalled = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
            writer.write(stalled_head)
            stalled.append((reader, writer))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        answer = await exchange(gw.proxy_port, get())
        assert (answer.status, answer.body) == (200, b"hello")
        assert time.monotonic() - started < 3
        for reader, writer in stalled:
            async with asyncio.timeout(TEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.read()  # the gateway closes the client's side too
            writer.close()
            assert head.startswith(b"HTTP/1.1 408 ")
            assert json.loads(dechunk(body) if b"chunked" in head else body)["error"] == (
                "client_body_timeout"
            )


async def test_a_client_gone_before_the_head_frees_the_upstream_at_once(tmp_path: Path) -> None:
    async def handle(conn: Conn) -> None:
        while True:
            await conn.request()
            if conn.number == 1:
                await conn.reader.read()  # never answers; returns when the gateway closes
                return
            await conn.send(OK_HELLO)

    async with misbehaving(handle) as up, gateway_in_front(tmp_path, up, pool_size=1) as gw:
        _, writer = await asyncio.open_connection("127.0.0.1", gw.proxy_port)
        writer.write(get())
        while not up.conns:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        writer.transport.abort()
        started = time.monotonic()
        async with asyncio.timeout(3):
            await up.conns[0].closed.wait()  # the gateway closed the abandoned exchange
        assert time.monotonic() - started < 1
        answer = await exchange(gw.proxy_port, get())  # the one slot is free again
        assert (answer.status, answer.body) == (200, b"hello")
        assert len(up.conns) == 2


# --------------------------------------------------------------------------- limits


def answering_with(head: Callable[[Conn], Awaitable[None]]) -> Handler:
    """A handler that answers each request on a connection by running `head`."""

    async def handle(conn: Conn) -> None:
        while True:
            await conn.request()
            await head(conn)

    return handle


async def test_a_64_mib_response_header_value_is_refused(tmp_path: Path) -> None:
    async def huge(conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\nX-Big: ")
        block = b"a" * (1024 * 1024)
        for _ in range(64):
            await conn.send(block)
        await conn.send(b"\r\nContent-Length: 0\r\n\r\n")

    async with misbehaving(answering_with(huge)) as up, gateway_in_front(tmp_path, up) as gw:
        answer = await exchange(gw.proxy_port, get())
        assert answer.status == 502
        assert answer.json()["error"] == "upstream_head_too_large"
        assert len(answer.head) < 1024


async def test_100000_response_headers_are_refused(tmp_path: Path) -> None:
    async def many(conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\n")
        for start in range(0, 100_000, 1000):
            await conn.send(b"".join(b"X-%d: v\r\n" % n for n in range(start, start + 1000)))
        await conn.send(b"Content-Length: 0\r\n\r\n")

    async with misbehaving(answering_with(many)) as up, gateway_in_front(tmp_path, up) as gw:
        answer = await exchange(gw.proxy_port, get())
        assert answer.status == 502
        assert answer.json()["error"] == "upstream_head_too_large"


async def test_response_head_limits_are_configurable(tmp_path: Path) -> None:
    async def shaped(conn: Conn) -> None:
        await conn.send(
            b"HTTP/1.1 200 OK\r\nX-Line: "
            + b"b" * 150
            + b"\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok"
        )

    async with misbehaving(answering_with(shaped)) as up:
        async with gateway_in_front(tmp_path / "a", up) as gw:
            assert (await exchange(gw.proxy_port, get())).body == b"ok"
        async with gateway_in_front(tmp_path / "b", up, max_line_size=100) as gw:
            answer = await exchange(gw.proxy_port, get())
            assert (answer.status, answer.json()["error"]) == (502, "upstream_head_too_large")
        async with gateway_in_front(tmp_path / "c", up, max_headers=2) as gw:
            answer = await exchange(gw.proxy_port, get())
            assert (answer.status, answer.json()["error"]) == (502, "upstream_head_too_large")


# --------------------------------------------------------------------------- byte transparency


async def test_header_bytes_and_reason_reach_the_client_byte_for_byte(tmp_path: Path) -> None:
    head = (
        b"HTTP/1.1 200 Tr\xe8s Bien\r\n"
        b'Content-Disposition: attachment; filename="caf\xe9.txt"\r\n'
        b"X-Utf8: caf\xc3\xa9\r\n"
        b"X-Raw: \x80\xff\xfe end\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )

    async def send(conn: Conn) -> None:
        await conn.send(head)

    async with misbehaving(answering_with(send)) as up, gateway_in_front(tmp_path, up) as gw:
        answer = await exchange(gw.proxy_port, get())
    assert answer.head.startswith(b"HTTP/1.1 200 Tr\xe8s Bien\r\n")
    assert b'\r\nContent-Disposition: attachment; filename="caf\xe9.txt"\r\n' in answer.head
    assert b"\r\nX-Utf8: caf\xc3\xa9\r\n" in answer.head
    assert b"\r\nX-Raw: \x80\xff\xfe end\r\n" in answer.head
    assert answer.body == b"ok"


async def test_a_transfer_coding_other_than_chunked_is_relayed(tmp_path: Path) -> None:
    coded = gzip.compress(b"gzip as a transfer coding " * 50)
    chunked = b"%x\r\n%b\r\n0\r\n\r\n" % (len(coded), coded)

    async def send(conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + chunked)

    async with misbehaving(answering_with(send)) as up, gateway_in_front(tmp_path, up) as gw:
        answer = await exchange(gw.proxy_port, get())
        old_client = await exchange(gw.proxy_port, get(version="1.0"))
    assert answer.status == 200
    assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in answer.head
    assert answer.body == coded
    # An HTTP/1.0 client cannot be sent a transfer coding (RFC 9112 section 6.1): refused.
    assert old_client.status == 502
    assert old_client.json()["error"] == "upstream_bad_response"
