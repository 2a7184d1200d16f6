"""A request the client abandons still leaves one access line, saying how it ended, and a count.

aiohttp writes its access line only once a response went out; a client that closes mid-upload
or mid-download cancels the handler first, so without the proxy's own line such a request
(authenticated, forwarded) would vanish from the log and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from support.config import ALL_ROLE, REST, add_key, create_key, write_config
from support.processes import free_port, reaped, start_serve, wait_for_port

from gateway.serve.wiring import RunningGateway

CLIENTS = 10  # clients abandoning an upload at once
DECLARED = 1_000_000  # the Content-Length they announce, in bytes
SENT = b"abcdefgh"  # the body bytes they actually send before closing
DRIP = 1000  # body bytes the slow upstream sends before stalling
SETTLE = 10.0  # seconds to wait for the lines to be written (the writer flushes every 0.2 s)


class _StallingUpstream:
    """An upstream that reads uploads without ever answering, and drips GET /drip then stalls."""

    def __init__(self) -> None:
        self.uploads = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % DECLARED)
                writer.write(b"d" * DRIP)
                await writer.drain()
            else:
                self.uploads += 1
            while await reader.read(65536):  # until the gateway gives up on the exchange
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def stalling_upstream() -> AsyncIterator[_StallingUpstream]:
    upstream = _StallingUpstream()
    upstream.server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    try:
        yield upstream
    finally:
        upstream.server.close()


async def _abandon_upload(port: int, key: str) -> None:
    """Send a head announcing DECLARED bytes, a few of them, then close."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"PUT {REST}/_echo/upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n".encode()
        + SENT
    )
    await writer.drain()
    await asyncio.sleep(0.3)  # the gateway has authenticated it and is relaying the body
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _abandon_download(port: int, key: str) -> None:
    """Read the head and the DRIP bytes the upstream sent, then close while it stalls."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {REST}/_echo/drip HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    await asyncio.wait_for(reader.readexactly(DRIP), 10)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def _access_records(log: str, log_format: str) -> list[dict[str, object]]:
    """The proxy's access lines in a serve log, as records: status, bytes, key, ended, path."""
    records: list[dict[str, object]] = []
    for line in log.splitlines():
        if REST not in line:  # the admin listener's lines (GET /metrics) use the same logger
            continue
        if log_format == "json":
            if '"logger":"keygate.access"' in line:
                records.append(json.loads(line))
            continue
        if " keygate.access: " not in line:
            continue
        found = re.search(
            r'"(\S+) (\S+)" (\d+) (\d+) ([\d.]+)ms rid=\S+ key=(\S+)(?: ended=(\S+))?'
            r"(?: received=(\d+))?",
            line,
        )
        assert found, line
        method, path, status, size, ms, key, ended, received = found.groups()
        records.append(
            {
                "method": method,
                "path": path,
                "status": int(status),
                "bytes": int(size),
                "duration_ms": float(ms),
                "key": key,
                "ended": ended,
                "received": None if received is None else int(received),
            }
        )
    return records


async def _metric(admin_port: int, name: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin_port}/metrics") as response,
    ):
        text = await response.text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, text
    return float(found.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_abandoned_uploads_and_downloads_each_leave_one_line_and_a_count(
    tmp_path: Path, log_format: str
) -> None:
    port, admin_port = free_port(), free_port()
    async with stalling_upstream() as upstream:
        config = write_config(
            tmp_path / "cfg",
            upstream.url,
            listen_port=port,
            admin_port=admin_port,
            extra={"log": {"format": log_format}},
        )
        key = await create_key(config, "uploader", [ALL_ROLE])
        serve = start_serve(config, port, tmp_path / "serve.log")
        with reaped(serve):
            await wait_for_port(port, process=serve.process)
            await asyncio.gather(*(_abandon_upload(port, key) for _ in range(CLIENTS)))
            assert upstream.uploads == CLIENTS  # each was authenticated and forwarded

            async def lines_for(path_end: str, count: int) -> list[dict[str, object]]:
                for _ in range(int(SETTLE / 0.1)):
                    found = [
                        r
                        for r in _access_records(serve.log_text(), log_format)
                        if str(r["path"]).endswith(path_end)
                    ]
                    if len(found) >= count:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)  # a second line would have been written by now
                return [
                    r
                    for r in _access_records(serve.log_text(), log_format)
                    if str(r["path"]).endswith(path_end)
                ]

            uploads = await lines_for("/upload", CLIENTS)
            assert len(uploads) == CLIENTS, serve.log_text()
            for record in uploads:
                assert record["method"] == "PUT"
                assert record["status"] == 499, record
                assert record["ended"] == "client_abandoned", record
                assert record["key"] == "uploader", record
                assert record["bytes"] == 0, record  # nothing went back to the client
                assert 0 < int(str(record["received"])) <= len(SENT), record
                assert float(str(record["duration_ms"])) >= 250, record  # the client's 0.3 s
            assert await _metric(admin_port, "keygate_proxy_abandoned_total") == CLIENTS

            await _abandon_download(port, key)
            downloads = await lines_for("/drip", 1)
            assert len(downloads) == 1, serve.log_text()
            (record,) = downloads
            assert (record["status"], record["ended"], record["key"]) == (
                499,
                "client_abandoned",
                "uploader",
            ), record
            # The relayed head and the DRIP bytes went out before the client left.
            assert DRIP < int(str(record["bytes"])) < DRIP + 1000, record
            if log_format == "json":
                assert record["upstream_status"] == 200, record
            assert await _metric(admin_port, "keygate_proxy_abandoned_total") == CLIENTS + 1
            assert serve.stop() == 0, serve.log_text()


BLOB = 4 * 1024 * 1024  # bytes of a fast download the client leaves early
LEAVERS = 20  # downloads left early, one after another


async def test_a_fast_download_left_early_is_logged_once_whichever_way_the_gateway_notices(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Left mid-write (aiohttp logs the returned answer) or mid-wait (the handler's own line):
    either way one line per request, never two, and one count."""
    caplog.set_level(logging.INFO, logger="keygate.access")
    key = await add_key(gateway, "leaver", [ALL_ROLE])
    for _ in range(LEAVERS):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
        writer.write(
            f"GET {REST}/_blob?size={BLOB} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode()
        )
        await reader.readexactly(64 * 1024)
        writer.transport.abort()
    for _ in range(100):
        lines = [r.getMessage() for r in caplog.records if "/_blob" in r.getMessage()]
        if len(lines) >= LEAVERS:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a second line for any of them would be here by now
    lines = [r.getMessage() for r in caplog.records if "/_blob" in r.getMessage()]
    assert len(lines) == LEAVERS, lines
    assert len({line.split(" rid=")[1].split()[0] for line in lines}) == LEAVERS, lines
    for line in lines:
        assert '" 499 ' in line and "key=leaver ended=client_abandoned" in line, line
    assert gateway.runtime.metrics.abandoned == LEAVERS
