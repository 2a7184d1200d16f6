"""The test upstream (tests/support/upstreams.py): the demo backend plus diagnostics routes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.upstreams import (
    BLOB_MODULUS,
    STREAM_CHUNK_SIZE,
    blob_chunk,
    create_test_upstream_app,
)

from gateway.demo.backend import create_demo_backend_app

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

REST = "/1Integrate/rest"
ALICE = {"X-Acting-User": "alice"}


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(create_test_upstream_app())


async def json_of(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


@pytest.mark.parametrize(
    "target", [f"{REST}/_echo/x", f"{REST}/_blob?size=1", f"{REST}/_slow?delay=0"]
)
async def test_the_demo_backend_itself_serves_no_diagnostics_route(
    aiohttp_client: ClientFactory, target: str
) -> None:
    demo = await aiohttp_client(create_demo_backend_app())
    assert (await json_of(await demo.get(target, headers=ALICE), 404))["error"] == "not_found"
    assert (await json_of(await demo.get(target), 401))["error"] == "unauthenticated"


async def test_the_demo_routes_still_ask_for_a_user_beside_the_public_diagnostics(
    client: Client,
) -> None:
    assert (await client.get(f"{REST}/rules")).status == 401
    assert (await client.get(f"{REST}/rules", headers=ALICE)).status == 200
    assert (await client.get(f"{REST}/_echo/x")).status == 200


async def test_echo_reports_raw_path_and_duplicate_headers_as_received(client: Client) -> None:
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    raw_path = f"{REST}/_echo/a%20b/%7E/x%2Fy?q=1&q=%41"
    request = (
        f"POST {raw_path} HTTP/1.1\r\n"
        "Host: backend\r\n"
        "X-Dup: one\r\n"
        "x-dup: two\r\n"
        "X-Acting-User: alice\r\n"
        "Content-Length: 5\r\n"
        "Connection: close\r\n"
        "\r\n"
        "hello"
    )
    writer.write(request.encode("ascii"))
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()

    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    body = json.loads(payload)
    assert body["method"] == "POST"
    assert body["path"] == raw_path
    assert body["headers"] == [
        ["Host", "backend"],
        ["X-Dup", "one"],
        ["x-dup", "two"],
        ["X-Acting-User", "alice"],
        ["Content-Length", "5"],
        ["Connection", "close"],
    ]
    assert body["body_length"] == 5
    assert body["body_sha256"] == hashlib.sha256(b"hello").hexdigest()


async def test_echo_streams_bodies_larger_than_the_request_size_limit(client: Client) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    count = 48  # 3 MiB in all, over aiohttp's 1 MiB limit for bodies read whole

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    resp = await client.put(f"{REST}/_echo/upload", data=upload())
    body = await json_of(resp, 200)
    assert body["body_length"] == len(chunk) * count
    assert body["body_sha256"] == hashlib.sha256(chunk * count).hexdigest()


@pytest.mark.parametrize("size", [0, 1, STREAM_CHUNK_SIZE, 3 * STREAM_CHUNK_SIZE + 17])
async def test_blob_streams_exactly_size_bytes_of_the_pattern(client: Client, size: int) -> None:
    resp = await client.get(f"{REST}/_blob?size={size}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)
    data = await resp.read()
    assert len(data) == size
    assert data == blob_chunk(0, size)
    assert data == bytes(i % BLOB_MODULUS for i in range(size))


def test_blob_chunks_join_up_at_any_offset() -> None:
    size = STREAM_CHUNK_SIZE
    whole = blob_chunk(0, 3 * size)
    assert blob_chunk(0, 1000) + blob_chunk(1000, 300_000) == blob_chunk(0, 301_000)
    assert blob_chunk(size, size) == whole[size : 2 * size]


async def test_blob_head_has_length_and_no_body(client: Client) -> None:
    resp = await client.head(f"{REST}/_blob?size=1000")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "1000"
    assert await resp.read() == b""


@pytest.mark.parametrize("query", ["", "?size=-1", "?size=abc", "?size=99999999999999"])
async def test_blob_with_bad_size_is_400(client: Client, query: str) -> None:
    resp = await client.get(f"{REST}/_blob{query}")
    assert (await json_of(resp, 400))["error"] == "invalid_request"


async def test_slow_answers_after_the_delay(client: Client) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = await json_of(await client.get(f"{REST}/_slow?delay=0.2"), 200)
    assert body == {"slept": 0.2}
    assert loop.time() - started >= 0.2


@pytest.mark.parametrize("delay", ["31", "-1", "nan", "soon", ""])
async def test_slow_with_bad_delay_is_400(client: Client, delay: str) -> None:
    resp = await client.get(f"{REST}/_slow?delay={delay}")
    assert (await json_of(resp, 400))["error"] == "invalid_request"
