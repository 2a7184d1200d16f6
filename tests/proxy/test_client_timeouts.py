"""The proxy listener's client timeouts on raw sockets: idle keep-alive versus request heads.

`keepalive_timeout` bounds the idle wait between requests on a kept connection;
`head_timeout` bounds a request head from connection open, or from its first byte on a kept
connection, to its end. The tests run on virtual time (support/virtual_time.py: the loop's
clock jumps over idle waits), so waiting out a timeout costs nothing; lower bounds are exact
(timers never fire early); upper bounds leave slack for a busy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from support.config import REST, write_config
from support.http import http_request
from support.upstreams import start_backend
from support.virtual_time import on_virtual_time

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

HEAD_TIMEOUT = 0.3  # seconds: client.head_timeout in these tests
KEEPALIVE_TIMEOUT = 2.0  # seconds: client.keepalive_timeout, well apart from the head timeout
SLACK = 3.0  # seconds a close may come late on a loaded machine
DRIP = 0.05  # seconds between the bytes of a slow head
ECHO = f"{REST}/_echo/x"


@contextlib.asynccontextmanager
async def gateway_with_timeouts(tmp_path: Path) -> AsyncIterator[int]:
    """An in-process gateway (anonymous passthrough) with small client timeouts; its port.

    The test upstream starts here, on the test's own (virtual-time) loop.
    """
    backend = await start_backend()
    config = write_config(
        tmp_path,
        backend.url,
        extra={"client": {"head_timeout": HEAD_TIMEOUT, "keepalive_timeout": KEEPALIVE_TIMEOUT}},
    )
    running: RunningGateway
    try:
        async with running_gateway(load_settings(config), serve_admin=False) as running:
            yield running.proxy_port
    finally:
        await backend.runner.cleanup()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive GET on an open connection; return the response head."""
    writer.write(http_request("GET", ECHO, connection="keep-alive"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SLACK)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), SLACK)
    return head


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the server closes the connection (EOF), reading and dropping bytes."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(limit):
        while await reader.read(65536):
            pass
    return loop.time() - started


async def drip_head(writer: asyncio.StreamWriter) -> None:
    """Send a request head that never ends, a byte at a time."""
    writer.write(f"GET {ECHO} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
    with contextlib.suppress(ConnectionError):
        while not writer.is_closing():
            await asyncio.sleep(DRIP)
            writer.write(b"a")


@on_virtual_time
async def test_an_idle_keep_alive_connection_lasts_keepalive_timeout_not_head_timeout(
    tmp_path: Path,
) -> None:
    async with gateway_with_timeouts(tmp_path) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert (await exchange(reader, writer)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(HEAD_TIMEOUT * 3)  # idle well past the head timeout: still open
            assert (await exchange(reader, writer)).startswith(b"HTTP/1.1 200")
            idle = await closed_after(reader, KEEPALIVE_TIMEOUT + SLACK)
        finally:
            writer.close()
    assert KEEPALIVE_TIMEOUT - 0.1 <= idle < KEEPALIVE_TIMEOUT + SLACK


@on_virtual_time
async def test_a_slow_first_head_is_cut_at_head_timeout(tmp_path: Path) -> None:
    async with gateway_with_timeouts(tmp_path) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dripping = asyncio.create_task(drip_head(writer))
        try:
            lasted = await closed_after(reader, KEEPALIVE_TIMEOUT + SLACK)
        finally:
            dripping.cancel()
            writer.close()
    # From connection open; cut long before the keep-alive timeout could have done it.
    assert HEAD_TIMEOUT - 0.05 <= lasted < KEEPALIVE_TIMEOUT - 0.5


@on_virtual_time
async def test_a_silent_new_connection_is_cut_at_head_timeout(
    tmp_path: Path,
) -> None:
    async with gateway_with_timeouts(tmp_path) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            lasted = await closed_after(reader, KEEPALIVE_TIMEOUT + SLACK)
        finally:
            writer.close()
    assert HEAD_TIMEOUT - 0.05 <= lasted < KEEPALIVE_TIMEOUT - 0.5


@on_virtual_time
async def test_a_slow_head_on_a_kept_connection_is_cut_at_head_timeout_from_its_first_byte(
    tmp_path: Path,
) -> None:
    async with gateway_with_timeouts(tmp_path) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dripping: asyncio.Task[None] | None = None
        try:
            assert (await exchange(reader, writer)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(HEAD_TIMEOUT * 2)  # idle past the head timeout, then dribble
            dripping = asyncio.create_task(drip_head(writer))
            lasted = await closed_after(reader, KEEPALIVE_TIMEOUT + SLACK)
        finally:
            if dripping is not None:
                dripping.cancel()
            writer.close()
    # The head's clock starts with its first byte, and the keep-alive timer (due about
    # KEEPALIVE_TIMEOUT - 2 * HEAD_TIMEOUT from now) is not what cuts it.
    assert HEAD_TIMEOUT - 0.05 <= lasted < KEEPALIVE_TIMEOUT - 2 * HEAD_TIMEOUT - 0.3
