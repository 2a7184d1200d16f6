"""Every upstream error's answer (status, code, message): one table, pinned on the old ladder."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from test_forwarding import Conn, exchange, gateway_in_front, get, misbehaving

from gateway.policy.rules import policy_from_data
from gateway.proxy.handler import Proxy
from gateway.runtime.context import Runtime
from gateway.settings import settings_from_data
from gateway.store.sqlite import SqliteKeyStore
from gateway.upstream import (
    ClientBodyTimeout,
    RequestBodyError,
    UpstreamClient,
    UpstreamClosed,
    UpstreamError,
    UpstreamLimitError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

# (error, status, code, message, closes the client's connection) before the head is relayed.
BEFORE_HEAD: list[tuple[UpstreamError, int, str, str, bool]] = [
    (UpstreamError("x"), 502, "upstream_unavailable", "the upstream could not be reached", False),
    (UpstreamClosed("x"), 502, "upstream_unavailable", "the upstream could not be reached", False),
    (UpstreamTimeout("x"), 504, "upstream_timeout", "the upstream did not answer in time", False),
    (
        UpstreamProtocolError("x"),
        502,
        "upstream_bad_response",
        "the upstream's answer is invalid",
        False,
    ),
    (
        UpstreamLimitError("x"),
        502,
        "upstream_head_too_large",
        "the upstream's head is too large",
        False,
    ),
    (
        RequestBodyError("x"),
        502,
        "upstream_unavailable",
        "the request could not be forwarded",
        False,
    ),
    (ClientBodyTimeout("x"), 408, "client_body_timeout", "the request body stalled", True),
]


@pytest.fixture
def proxy(tmp_path: Path) -> Proxy:
    settings = settings_from_data(
        {"upstream": {"url": "http://127.0.0.1:9"}, "store": {"url": "sqlite:///keygate.db"}},
        tmp_path / "gateway.yaml",
        environ={},
    )
    policy = policy_from_data({"roles": {"r": {"description": "r", "allow": ["GET /a"]}}}, "p")
    runtime = Runtime(settings=settings, store=SqliteKeyStore(tmp_path / "k.db"), policy=policy)
    return Proxy(runtime, UpstreamClient("http://127.0.0.1:9"))


@pytest.mark.parametrize(
    ("error", "status", "code", "message", "closes"),
    BEFORE_HEAD,
    ids=[type(row[0]).__name__ for row in BEFORE_HEAD],
)
def test_each_upstream_error_answers_its_status_code_and_message(
    proxy: Proxy, error: UpstreamError, status: int, code: str, message: str, closes: bool
) -> None:
    assert (error.status, error.code, error.message) == (status, code, message)
    assert error.closes_client is closes
    response = proxy._upstream_failed(error)
    assert response.status == status
    assert response.body == json.dumps({"error": code, "message": message}).encode()
    assert response.content_type == "application/json"
    assert response.headers["Server"] == "keygate"
    assert response.keep_alive is (False if closes else None)


async def test_an_upstream_that_closes_mid_body_is_502_before_anything_is_relayed(
    tmp_path: Path,
) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    async with misbehaving(handle) as up, gateway_in_front(tmp_path, up) as gw:
        answer = await exchange(gw.proxy_port, get())
    assert answer.status == 502
    expected = {"error": "upstream_unavailable", "message": "the upstream failed mid-answer"}
    assert answer.json() == expected


async def test_an_upstream_that_stalls_mid_body_is_504_before_anything_is_relayed(
    tmp_path: Path,
) -> None:
    async def handle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(5)

    async with (
        misbehaving(handle) as up,
        gateway_in_front(tmp_path, up, read_timeout=0.2) as gw,
    ):
        answer = await exchange(gw.proxy_port, get())
    assert answer.status == 504
    assert answer.json() == {"error": "upstream_timeout", "message": "the upstream timed out"}
