"""Requests abandoned at random points leave nothing behind: no reference cycles, no growth.

Clients that leave mid-upload (Content-Length and chunked) or mid-download are the normal
traffic of an exposed gateway; each must be freed by reference counting alone, or memory
grows until a full collection that may never come in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvloop
from support.config import ALL_ROLE, REST, add_key, create_key, write_config
from support.processes import free_port, reaped, rss_bytes, start_serve, wait_for_port
from support.upstreams import Backend

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

ROUNDS = 600  # abandoned requests per kind
OBJECT_SLACK = 3000  # live objects tolerated after the storm (caches, pools, logging)


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Reference counting only: what a cycle keeps alive stays visible to gc.get_objects()."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Sink(asyncio.Protocol):
    """A bare upstream: uploads are read and dropped, GET /_blob answers `size` bytes.

    Not aiohttp, so the only Python objects of an exchange in this process are keygate's.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.left = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.left >= 0:
            self.left -= len(data)
            return
        self.head += data
        head, found, rest = self.head.partition(b"\r\n\r\n")
        if not found:
            return
        assert self.transport is not None
        if head.startswith(b"GET"):
            size = int(head.split(b"size=", 1)[1].split(b" ", 1)[0])
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            self.transport.write(b"b" * size)
        else:
            self.left = 1 << 62  # read and drop the body until the gateway gives up
            self.data_received(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


@contextlib.asynccontextmanager
async def quiet_gateway(directory: Path) -> AsyncIterator[RunningGateway]:
    """A gateway in front of the sink, logging only warnings."""
    loop = asyncio.get_running_loop()
    sink = await loop.create_server(_Sink, "127.0.0.1", 0)
    upstream = f"http://127.0.0.1:{sink.sockets[0].getsockname()[1]}"
    config = write_config(directory, upstream, extra={"log": {"level": "warning"}})
    try:
        async with running_gateway(load_settings(config)) as running:
            yield running
    finally:
        sink.close()


async def _abandon(port: int, key: str, kind: str, rng: random.Random) -> None:
    """Start one request of `kind` and leave at a random point."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if kind == "download":
            size = 4 * 1024 * 1024
            target = f"{REST}/_blob?size={size}"
            writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
            await reader.readexactly(rng.randrange(1, 256 * 1024))
        else:
            total = 2 * 1024 * 1024
            framing = (
                f"Content-Length: {total}" if kind == "length" else "Transfer-Encoding: chunked"
            )
            head = f"PUT {REST}/_echo/up HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n{framing}"
            writer.write(f"{head}\r\n\r\n".encode())
            sent = rng.randrange(1, 512 * 1024)
            block = b"a" * sent
            writer.write(block if kind == "length" else b"%x\r\n%b\r\n" % (sent, block))
            await writer.drain()
            await asyncio.sleep(rng.random() * 0.005)
    finally:
        writer.transport.abort()


async def _settle() -> None:
    """Give the gateway time to notice every abandoned connection."""
    for _ in range(20):
        await asyncio.sleep(0.05)


@pytest.mark.slow
def test_abandoned_uploads_and_downloads_leave_no_cycles(
    tmp_path: Path, collector_off: None
) -> None:
    # uvloop, as `keygate serve` runs (its C transports hold no Python reference cycles).
    before, after = uvloop.run(_storm(tmp_path / "abandon"))
    print(f"live objects before {before}, after {ROUNDS * 3} abandoned requests {after}")
    assert after - before < OBJECT_SLACK, (before, after)


async def _storm(directory: Path) -> tuple[int, int]:
    """Abandon ROUNDS requests of each kind; return the live object counts before and after."""
    async with quiet_gateway(directory) as gateway:
        key = await add_key(gateway, "abandoner", [ALL_ROLE])
        rng = random.Random(7)
        port = gateway.proxy_port
        for kind in ("length", "chunked", "download"):  # warm every path and pool first
            for _ in range(20):
                await _abandon(port, key, kind, rng)
        await _settle()
        before = len(gc.get_objects())
        for kind in ("length", "chunked", "download"):
            for _ in range(ROUNDS // 20):
                await asyncio.gather(*(_abandon(port, key, kind, rng) for _ in range(20)))
        await _settle()
        return before, len(gc.get_objects())


RSS_SLACK = 8 * 1024 * 1024  # bytes of RSS growth tolerated after the warm-up storm


@pytest.mark.slow
async def test_a_serve_process_rss_returns_to_its_plateau(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "rss",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"log": {"level": "warning"}},
    )
    key = await create_key(config, "abandoner", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "rss.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        rng = random.Random(11)
        readings = []
        for _ in range(3):  # the first storm sets the allocator's plateau; the rest must not grow
            for kind in ("length", "chunked", "download"):
                for _ in range(ROUNDS // 20):
                    await asyncio.gather(*(_abandon(port, key, kind, rng) for _ in range(20)))
            await _settle()
            readings.append(rss_bytes(serve.process.pid))
        print(
            "RSS after each storm of 1,800 abandoned requests (MiB):", [r >> 20 for r in readings]
        )
        assert readings[-1] - readings[0] < RSS_SLACK, readings
        assert serve.stop() == 0, serve.log_text()
