"""Writes per exchange: a small answer leaves in one write, a small request goes up in one."""

from __future__ import annotations

import asyncio
from asyncio import selector_events
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from support.config import ALL_ROLE, REST, add_key
from support.http import http_request, raw_request
from support.upstreams import Backend

from gateway.serve.wiring import RunningGateway

# The test loop is asyncio's own (not uvloop): its socket transport is a Python class.
Transport = selector_events._SelectorSocketTransport


@dataclass
class WriteLog:
    """Every transport write of this process: (local port, peer port, bytes)."""

    writes: list[tuple[int, int, bytes]] = field(default_factory=list)

    def from_port(self, port: int) -> list[bytes]:
        """The writes made on sockets bound to `port` (a listener's accepted connections)."""
        return [data for local, _, data in self.writes if local == port]

    def to_port(self, port: int) -> list[bytes]:
        """The writes made on connections to `port` (a client of that listener)."""
        return [data for _, peer, data in self.writes if peer == port]


@pytest.fixture
def write_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteLog]:
    """Record every socket write of the event loop's transports (then do it as usual)."""
    log = WriteLog()
    original = Transport.write

    def recording_write(self: asyncio.Transport, data: bytes | bytearray | memoryview) -> None:
        local = self.get_extra_info("sockname")
        peer = self.get_extra_info("peername")
        log.writes.append((local[1], peer[1], bytes(data)))
        original(self, data)

    monkeypatch.setattr(Transport, "write", recording_write)
    yield log


async def test_a_small_answer_goes_to_the_client_in_one_write(
    gateway: RunningGateway, backend: Backend, write_log: WriteLog
) -> None:
    assert isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)  # not uvloop here
    key = await add_key(gateway, "writes", [ALL_ROLE])
    answer = await raw_request(
        gateway.proxy_port, http_request("GET", f"{REST}/_echo/one", [("X-API-Key", key)])
    )
    assert answer.status == 200 and answer.body
    to_client = write_log.from_port(gateway.proxy_port)
    assert len(to_client) == 1, [w[:40] for w in to_client]
    assert to_client[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert to_client[0].endswith(answer.body)


async def test_a_small_request_goes_upstream_in_one_write(
    gateway: RunningGateway, backend: Backend, write_log: WriteLog
) -> None:
    key = await add_key(gateway, "writes", [ALL_ROLE])
    body = b'{"name": "job", "rules": [1, 2, 3]}'
    headers = [("X-API-Key", key), ("Content-Type", "application/json")]
    answer = await raw_request(
        gateway.proxy_port, http_request("POST", f"{REST}/_echo/up", headers, body)
    )
    assert answer.status == 200
    to_upstream = write_log.to_port(backend.port)
    assert len(to_upstream) == 1, [w[:40] for w in to_upstream]
    assert to_upstream[0].startswith(f"POST {REST}/_echo/up HTTP/1.1\r\n".encode())
    assert to_upstream[0].endswith(b"\r\n\r\n" + body)
