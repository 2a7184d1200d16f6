"""The proxy listener's request flow against a real upstream: forwarding, refusals, errors."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from support.config import (
    ALL_ROLE,
    REST,
    WRITER_ROLE,
    add_key,
    create_key,
    policy_data,
    write_config,
)
from support.http import RawResponse, http_request, raw_request
from support.processes import free_port
from support.upstreams import Backend, blob_chunk

from gateway.keys import keyformat as keys
from gateway.proxy.refusals import WWW_AUTHENTICATE_VALUE
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

ECHO = f"{REST}/_echo"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@contextlib.asynccontextmanager
async def gateway_for(config: Path) -> AsyncIterator[RunningGateway]:
    """Run an in-process gateway (proxy listener only) for `config`."""
    async with running_gateway(load_settings(config), serve_admin=False) as running:
        yield running


def base(gateway: RunningGateway) -> str:
    """The proxy listener's base URL."""
    return f"http://127.0.0.1:{gateway.proxy_port}"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session (no cookies kept)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
async def all_key(gateway: RunningGateway) -> str:
    """A key holding the role that allows every method on every path."""
    return await add_key(gateway, "everything-bot", [ALL_ROLE])


async def json_error(response: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Assert a JSON error response with `status` and error `code`; return the body."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def raw_error(response: RawResponse, status: int, code: str) -> None:
    """Assert a raw JSON error response with `status` and error `code`."""
    assert response.status == status, response.body
    assert response.header_values("Content-Type")[0].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert body["message"]


# --------------------------------------------------------------------------- forwarding


@pytest.mark.parametrize("method", METHODS)
async def test_every_method_is_forwarded(
    gateway: RunningGateway, all_key: str, client: aiohttp.ClientSession, method: str
) -> None:
    async with client.request(
        method, f"{base(gateway)}{ECHO}/m", headers={"X-API-Key": all_key}
    ) as response:
        assert response.status == 200
        if method == "HEAD":
            assert await response.read() == b""
            return
        echoed = await response.json()
    assert echoed["method"] == method
    assert echoed["path"] == f"{ECHO}/m"


@pytest.mark.parametrize(
    "target",
    [
        f"{ECHO}/a%20b/c?x=1&y=%2F&z",
        f"{ECHO}/%7Euser/%E2%82%AC/%41?q=a+b&q=%26&empty=&=v",
        f"{ECHO}/A-Z_~!$&'()*+,=:@/x?a=%2f&b=?/&c=%3F#".rstrip("#"),
        f"{ECHO}/trailing/",
        f"{ECHO}/q?=",
        f"{ECHO}/bare-question-mark?",
    ],
)
async def test_path_and_query_arrive_byte_exact(
    gateway: RunningGateway, all_key: str, target: str
) -> None:
    response = await raw_request(
        gateway.proxy_port, http_request("GET", target, [("X-API-Key", all_key)])
    )
    assert response.status == 200, response.body
    assert response.json()["path"] == target


async def test_request_body_arrives_intact(
    gateway: RunningGateway, all_key: str, client: aiohttp.ClientSession
) -> None:
    body = os.urandom(700 * 1024)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        async with client.request(
            method, f"{base(gateway)}{ECHO}/body", data=body, headers={"X-API-Key": all_key}
        ) as response:
            echoed = await response.json()
        assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert echoed["body_length"] == len(body)


async def test_chunked_request_body_arrives_intact(
    gateway: RunningGateway, all_key: str, client: aiohttp.ClientSession
) -> None:
    parts = [os.urandom(size) for size in (1, 70_000, 3, 250_000)]

    async def generate() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with client.post(
        f"{base(gateway)}{ECHO}/chunked", data=generate(), headers={"X-API-Key": all_key}
    ) as response:
        echoed = await response.json()
    assert echoed["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    chunked = [v for n, v in echoed["headers"] if n.lower() == "transfer-encoding"]
    assert chunked == ["chunked"]


@pytest.mark.parametrize("size", [0, 1, 1000, 256 * 1024, 256 * 1024 + 1, 3 * 1024 * 1024 + 7])
async def test_response_body_arrives_intact(
    gateway: RunningGateway, all_key: str, client: aiohttp.ClientSession, size: int
) -> None:
    async with client.get(
        f"{base(gateway)}{REST}/_blob?size={size}", headers={"X-API-Key": all_key}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        assert response.headers["Content-Type"] == "application/octet-stream"
        data = await response.read()
    assert hashlib.sha256(data).digest() == hashlib.sha256(blob_chunk(0, size)).digest()


async def test_head_keeps_the_upstream_content_length(
    gateway: RunningGateway, all_key: str
) -> None:
    response = await raw_request(
        gateway.proxy_port,
        http_request("HEAD", f"{REST}/_blob?size=12345", [("X-API-Key", all_key)]),
        head=True,
    )
    assert response.status == 200
    assert response.header_values("Content-Length") == ["12345"]


# --------------------------------------------------------------------------- response shape


@dataclass
class ShapeUpstream:
    """A raw-socket upstream that answers canned responses byte for byte."""

    url: str
    requests: list[bytes]


SHAPES: dict[str, bytes] = {
    "/shape/headers": (
        b"HTTP/1.1 299 Custom Reason\r\n"
        b"Content-Type: text/plain\r\n"
        b"Set-Cookie: a=1; Path=/\r\n"
        b"Set-Cookie: b=2; HttpOnly\r\n"
        b"X-Custom: one\r\n"
        b"X-Custom: two\r\n"
        b"X-Backend-Thing: value with  spaces\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: hop secret\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
        b"hello"
    ),
    "/shape/untyped": b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nraw bytes",
    "/shape/untyped-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nraw \r\n5\r\nbytes\r\n0\r\n\r\n"
    ),
    "/shape/no-content": b"HTTP/1.1 204 No Content\r\nX-Custom: nothing\r\n\r\n",
    "/shape/not-found": (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/problem+json\r\n"
        b'Content-Length: 17\r\n\r\n{"title":"gone"}\n'
    ),
    # The upstream promises more than it sends, then closes the connection.
    "/shape/truncated-small": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    ),
    "/shape/truncated-large": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n"
        + b"x" * 300_000
    ),
}
GZIPPED = gzip.compress(b"compressed by the upstream " * 100)
SHAPES["/shape/gzip"] = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n"
    + f"Content-Length: {len(GZIPPED)}\r\n\r\n".encode()
    + GZIPPED
)
# Canned responses after which the upstream closes its side of the connection.
CLOSE_AFTER = frozenset({"/shape/truncated-small", "/shape/truncated-large"})


@pytest.fixture
async def shapes() -> AsyncIterator[ShapeUpstream]:
    """Start the raw canned-response upstream on a loopback port."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head)
                target = head.split(b" ", 2)[1].decode()
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                writer.write(SHAPES[target])
                await writer.drain()
                if target in CLOSE_AFTER:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield ShapeUpstream(f"http://127.0.0.1:{port}", seen)
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def shape_gateway(tmp_path: Path, shapes: ShapeUpstream) -> AsyncIterator[RunningGateway]:
    """A gateway in front of the canned-response upstream."""
    async with gateway_for(write_config(tmp_path / "shapes", shapes.url)) as running:
        yield running


async def test_status_reason_and_headers_come_back_as_the_upstream_sent_them(
    shape_gateway: RunningGateway,
) -> None:
    key = await add_key(shape_gateway, "shape-bot", [ALL_ROLE])
    response = await raw_request(
        shape_gateway.proxy_port, http_request("GET", "/shape/headers", [("X-API-Key", key)])
    )
    assert response.status == 299
    assert response.header_values("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    assert response.header_values("X-Custom") == ["one", "two"]
    assert response.header_values("X-Backend-Thing") == ["value with  spaces"]
    assert response.header_values("Content-Type") == ["text/plain"]
    assert response.body == b"hello"
    # Hop-by-hop headers of the upstream's connection stay on that connection.
    for hop in ("Keep-Alive", "X-Hop", "Proxy-Authenticate", "Trailer"):
        assert response.header_values(hop) == [], hop
    assert response.header_values("Connection") == ["close"]  # the client's own connection


async def test_status_line_reason_is_relayed(shape_gateway: RunningGateway) -> None:
    key = await add_key(shape_gateway, "shape-bot", [ALL_ROLE])
    request = http_request("GET", "/shape/headers", [("X-API-Key", key)])
    reader, writer = await asyncio.open_connection("127.0.0.1", shape_gateway.proxy_port)
    try:
        writer.write(request)
        status_line = await reader.readuntil(b"\r\n")
        await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    assert status_line == b"HTTP/1.1 299 Custom Reason\r\n"


@pytest.mark.parametrize("path", ["/shape/untyped", "/shape/untyped-chunked"])
async def test_no_content_type_is_added(shape_gateway: RunningGateway, path: str) -> None:
    key = await add_key(shape_gateway, "shape-bot", [ALL_ROLE])
    response = await raw_request(
        shape_gateway.proxy_port, http_request("GET", path, [("X-API-Key", key)])
    )
    assert response.status == 200
    assert response.body == b"raw bytes"
    assert response.header_values("Content-Type") == []


async def test_encoded_bodies_pass_through_undecoded(
    shape_gateway: RunningGateway, gateway: RunningGateway, all_key: str
) -> None:
    key = await add_key(shape_gateway, "shape-bot", [ALL_ROLE])
    down = await raw_request(
        shape_gateway.proxy_port,
        http_request("GET", "/shape/gzip", [("X-API-Key", key), ("Accept-Encoding", "gzip")]),
    )
    assert down.header_values("Content-Encoding") == ["gzip"]
    assert down.body == GZIPPED
    up = await raw_request(
        gateway.proxy_port,
        http_request(
            "POST", f"{ECHO}/gz", [("X-API-Key", all_key), ("Content-Encoding", "gzip")], GZIPPED
        ),
    )
    echoed = up.json()
    # The demo backend itself decodes request bodies, so it reports the plain text's hash;
    # what it was sent is the gzip stream, framed and labelled as the client sent it.
    assert echoed["body_sha256"] == hashlib.sha256(gzip.decompress(GZIPPED)).hexdigest()
    received = {name.lower(): value for name, value in echoed["headers"]}
    assert received["content-encoding"] == "gzip"
    assert received["content-length"] == str(len(GZIPPED))


async def test_204_and_404_come_back_unchanged(shape_gateway: RunningGateway) -> None:
    key = await add_key(shape_gateway, "shape-bot", [ALL_ROLE])
    empty = await raw_request(
        shape_gateway.proxy_port, http_request("GET", "/shape/no-content", [("X-API-Key", key)])
    )
    assert empty.status == 204
    assert empty.header_values("X-Custom") == ["nothing"]
    assert empty.header_values("Content-Type") == []
    missing = await raw_request(
        shape_gateway.proxy_port, http_request("GET", "/shape/not-found", [("X-API-Key", key)])
    )
    assert missing.status == 404
    assert missing.header_values("Content-Type") == ["application/problem+json"]
    assert missing.body == b'{"title":"gone"}\n'


async def test_upstream_dying_before_a_small_body_ends_is_502(
    shape_gateway: RunningGateway,
) -> None:
    key = await add_key(shape_gateway, "shape-bot", [ALL_ROLE])
    response = await raw_request(
        shape_gateway.proxy_port,
        http_request("GET", "/shape/truncated-small", [("X-API-Key", key)]),
    )
    raw_error(response, 502, "upstream_unavailable")


async def test_upstream_dying_mid_stream_cuts_the_client_connection(
    shape_gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """Headers already went out: the client must see a short body, never a clean end."""
    caplog.set_level(logging.INFO, logger="keygate.access")
    key = await add_key(shape_gateway, "shape-bot", [ALL_ROLE])
    request = http_request("GET", "/shape/truncated-large", [("X-API-Key", key)])
    reader, writer = await asyncio.open_connection("127.0.0.1", shape_gateway.proxy_port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        body = await asyncio.wait_for(reader.read(), 10)  # until the gateway closes
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 1000000\r\n" in head
    assert len(body) < 1_000_000
    # ...and the access log never passes the cut answer off as complete.
    lines = [r.getMessage() for r in caplog.records if r.name == "keygate.access"]
    assert any("/shape/truncated-large" in line for line in lines), lines
    for line in lines:
        if "/shape/truncated-large" in line:
            assert line.endswith(" incomplete"), line


async def test_expect_100_continue_is_answered_after_the_checks(
    gateway: RunningGateway, all_key: str
) -> None:
    """An allowed request is asked for its body; a refused one gets its answer without it."""

    async def send(key: str, path: str) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
        try:
            writer.write(
                f"PUT {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
                "Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n".encode()
            )
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            if first.startswith(b"HTTP/1.1 100 "):
                writer.write(b"hello")
                return first, await asyncio.wait_for(reader.read(), 5)
            return first, b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    interim, final = await send(all_key, f"{ECHO}/expect")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 ")
    echoed = json.loads(final.split(b"\r\n\r\n", 1)[1])
    assert echoed["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert "expect" not in {name.lower() for name, _ in echoed["headers"]}
    refused, _ = await send(keys.generate_key(), f"{ECHO}/expect")
    assert refused.startswith(b"HTTP/1.1 401 ")
    reader_only = await add_key(gateway, "expect-reader", ["1int-rules-read"])
    denied, _ = await send(reader_only, f"{REST}/rules/x")
    assert denied.startswith(b"HTTP/1.1 403 ")


async def test_client_abort_mid_download_releases_the_upstream(
    gateway: RunningGateway, all_key: str, backend: Backend, client: aiohttp.ClientSession
) -> None:
    """A client leaving mid-download closes the upstream connection (no streaming to nobody)."""
    server = backend.runner.server
    assert server is not None
    request = http_request("GET", f"{REST}/_blob?size={1024**3}", [("X-API-Key", all_key)])
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.proxy_port)
    writer.write(request)
    await reader.readexactly(1024 * 1024)
    assert len(server.connections) == 1  # the gateway's connection, streaming the blob
    writer.transport.abort()
    deadline = time.monotonic() + 5
    while server.connections:
        assert time.monotonic() < deadline, "the backend is still streaming to nobody"
        await asyncio.sleep(0.02)
    async with client.get(f"{base(gateway)}{ECHO}/after", headers={"X-API-Key": all_key}) as r:
        assert r.status == 200


async def test_hop_by_hop_request_headers_are_dropped(
    gateway: RunningGateway, all_key: str
) -> None:
    response = await raw_request(
        gateway.proxy_port,
        http_request(
            "GET",
            f"{ECHO}/hop",
            [
                ("X-API-Key", all_key),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Trailer", "X-Checksum"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Proxy-Connection", "keep-alive"),
                ("X-Named-Hop", "named"),
                ("X-Kept", "kept"),
            ],
            connection="close, X-Named-Hop",
        ),
    )
    names = {name.lower() for name, _ in response.json()["headers"]}
    for hop in (
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "x-named-hop",
    ):
        assert hop not in names
    assert "x-kept" in names


async def test_framing_headers_named_in_connection_are_kept(
    gateway: RunningGateway, all_key: str
) -> None:
    body = os.urandom(10_000)
    response = await raw_request(
        gateway.proxy_port,
        http_request(
            "POST",
            f"{ECHO}/framing",
            [("X-API-Key", all_key)],
            body,
            connection="close, Content-Length, Host",
        ),
    )
    echoed = response.json()
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert [v for n, v in echoed["headers"] if n.lower() == "content-length"] == ["10000"]


# --------------------------------------------------------------------------- upstream errors


async def test_upstream_unreachable_is_502_json(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    config = write_config(tmp_path / "down", f"http://127.0.0.1:{free_port()}")
    async with gateway_for(config) as running:
        key = await add_key(running, "down-bot", [ALL_ROLE])
        async with client.get(f"{base(running)}{ECHO}/x", headers={"X-API-Key": key}) as response:
            await json_error(response, 502, "upstream_unavailable")
        # Anonymous requests get the same answer.
        async with client.get(f"{base(running)}{ECHO}/x") as response:
            await json_error(response, 502, "upstream_unavailable")


async def test_upstream_timeout_is_504_json(
    tmp_path: Path, backend: Backend, client: aiohttp.ClientSession
) -> None:
    config = write_config(tmp_path / "slow", backend.url, extra={"upstream": {"timeout": 0.3}})
    async with gateway_for(config) as running:
        key = await add_key(running, "slow-bot", [ALL_ROLE])
        started = time.monotonic()
        async with client.get(
            f"{base(running)}{REST}/_slow?delay=1.2", headers={"X-API-Key": key}
        ) as response:
            await json_error(response, 504, "upstream_timeout")
        assert time.monotonic() - started < 1.0  # the gateway's timeout, not the backend's pace
        # A fast answer from the same upstream still works afterwards.
        async with client.get(
            f"{base(running)}{REST}/_slow?delay=0", headers={"X-API-Key": key}
        ) as response:
            assert response.status == 200


# --------------------------------------------------------------------------- path hygiene

BAD_TARGETS = [
    f"{ECHO}/a%2Fb",
    f"{ECHO}/a%2fb",
    f"{ECHO}/a%5Cb",
    f"{ECHO}/a\\b",
    f"{ECHO}/../apikeys",
    f"{ECHO}/./x",
    f"{ECHO}/%2e%2e/apikeys",
    f"{ECHO}/%2E/x",
    f"{ECHO}/a%00b",
    f"{ECHO}/a;jsessionid=1",
    f"{REST}//apikeys",
    f"{ECHO}/a%252Fb",
    f"{REST}/apikeys%20",
    f"{REST}/apikeys%09/1",
    f"{ECHO}/a%0Ab",
    f"{ECHO}/x?a=%00",
    "http://evil.example/1Integrate/rest/_echo/x",
    f"{ECHO}/" + "a" * 5000,
]


@pytest.mark.parametrize("target", BAD_TARGETS)
async def test_ambiguous_targets_are_400_before_auth(
    gateway: RunningGateway, all_key: str, target: str
) -> None:
    for headers in (
        [("X-API-Key", "kg_this-is-not-a-valid-key")],  # an invalid key: still 400, not 401
        [("X-API-Key", all_key)],
        [],
    ):
        response = await raw_request(gateway.proxy_port, http_request("GET", target, headers))
        raw_error(response, 400, "bad_target")


@pytest.mark.parametrize("target", ["*", f"{ECHO}/" + "a" * 9000])
async def test_targets_the_http_parser_refuses_are_400_and_never_forwarded(
    gateway: RunningGateway, all_key: str, backend: Backend, target: str
) -> None:
    """Asterisk-form and over-long request lines die in aiohttp's parser: JSON 400."""
    server = backend.runner.server
    assert server is not None
    before = len(server.connections)
    response = await raw_request(
        gateway.proxy_port, http_request("GET", target, [("X-API-Key", "kg_bad")])
    )
    raw_error(response, 400, "bad_request")
    assert len(server.connections) == before


@pytest.mark.parametrize(
    "head",
    [
        b"POST /1Integrate/rest/_echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /1Integrate/rest/_echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        b"POST /1Integrate/rest/_echo/x HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
)
async def test_smuggling_shaped_requests_are_json_400_and_never_forwarded(
    gateway: RunningGateway, backend: Backend, head: bytes
) -> None:
    server = backend.runner.server
    assert server is not None
    before = len(server.connections)
    response = await raw_request(gateway.proxy_port, head)
    raw_error(response, 400, "bad_request")
    assert len(server.connections) == before


# --------------------------------------------------------------------------- credentials


async def acting_user_of(response: aiohttp.ClientResponse) -> list[str]:
    """The X-Acting-User values the echo endpoint received."""
    assert response.status == 200, await response.text()
    echoed = await response.json()
    return [v for n, v in echoed["headers"] if n.lower() == "x-acting-user"]


@pytest.mark.parametrize(
    "header",
    [
        ("X-API-Key", "{key}"),
        ("x-api-key", "  {key}  "),
        ("Authorization", "Bearer {key}"),
        ("Authorization", "bearer {key}"),
        ("Authorization", "ApiKey {key}"),
        ("Authorization", "APIKEY {key}"),
    ],
)
async def test_each_credential_form_works(
    gateway: RunningGateway, client: aiohttp.ClientSession, header: tuple[str, str]
) -> None:
    key = await add_key(gateway, "form-bot", [ALL_ROLE])
    async with client.get(
        f"{base(gateway)}{ECHO}/cred", headers={header[0]: header[1].format(key=key)}
    ) as response:
        assert await acting_user_of(response) == ["form-bot"]


@pytest.mark.parametrize(
    "value",
    [
        "not-a-key",
        "kg_",
        "kg_short",
        "KG_" + "A" * 36,
        "kg_" + "A" * 37,
        "kg_" + "A" * 30 + "!!!!!!",
    ],
)
async def test_malformed_key_is_401_key_malformed(
    gateway: RunningGateway, client: aiohttp.ClientSession, value: str
) -> None:
    async with client.get(f"{base(gateway)}{ECHO}/x", headers={"X-API-Key": value}) as response:
        await json_error(response, 401, "key_malformed")
        assert response.headers["WWW-Authenticate"] == WWW_AUTHENTICATE_VALUE


async def test_key_with_a_wrong_checksum_is_malformed(
    gateway: RunningGateway, client: aiohttp.ClientSession, all_key: str
) -> None:
    last = all_key[-1]
    typo = all_key[:-1] + ("a" if last != "a" else "b")
    truncated = all_key[:-1]
    for value in (typo, truncated, f"ApiKey {typo}"):
        headers = {"Authorization": value} if " " in value else {"X-API-Key": value}
        async with client.get(f"{base(gateway)}{ECHO}/x", headers=headers) as response:
            await json_error(response, 401, "key_malformed")


async def test_unknown_key_is_401_key_unknown(
    gateway: RunningGateway, client: aiohttp.ClientSession
) -> None:
    stranger = keys.generate_key()
    for headers in ({"X-API-Key": stranger}, {"Authorization": f"Bearer {stranger}"}):
        async with client.get(f"{base(gateway)}{ECHO}/x", headers=headers) as response:
            await json_error(response, 401, "key_unknown")
            assert response.headers["WWW-Authenticate"] == WWW_AUTHENTICATE_VALUE


async def test_revoked_key_is_401_and_reinstated_key_works_again(
    gateway: RunningGateway, client: aiohttp.ClientSession
) -> None:
    key = await add_key(gateway, "revoke-me", [ALL_ROLE])
    store = gateway.runtime.store
    row = await store.get_key_by_name("revoke-me")
    assert row is not None
    await store.set_revoked(row.id, True, "test")
    await gateway.runtime.apply_own_writes()
    async with client.get(f"{base(gateway)}{ECHO}/x", headers={"X-API-Key": key}) as response:
        await json_error(response, 401, "key_revoked")
        assert response.headers["WWW-Authenticate"] == WWW_AUTHENTICATE_VALUE
    await store.set_revoked(row.id, False, "test")
    await gateway.runtime.apply_own_writes()
    async with client.get(f"{base(gateway)}{ECHO}/x", headers={"X-API-Key": key}) as response:
        assert await acting_user_of(response) == ["revoke-me"]
    await store.delete_key(row.id, "test")
    await gateway.runtime.apply_own_writes()
    async with client.get(f"{base(gateway)}{ECHO}/x", headers={"X-API-Key": key}) as response:
        await json_error(response, 401, "key_unknown")


async def test_expired_key_is_401_key_expired(
    gateway: RunningGateway, client: aiohttp.ClientSession
) -> None:
    # Minted through the real lifecycle as of an hour ago, expiring a minute ago.
    key = await add_key(
        gateway,
        "expired-bot",
        [ALL_ROLE],
        expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60)),
        now=time.time() - 3600,
    )
    async with client.get(f"{base(gateway)}{ECHO}/x", headers={"X-API-Key": key}) as response:
        await json_error(response, 401, "key_expired")
        assert response.headers["WWW-Authenticate"] == WWW_AUTHENTICATE_VALUE


async def test_key_not_yet_expired_works(
    gateway: RunningGateway, client: aiohttp.ClientSession
) -> None:
    key = await add_key(gateway, "future-bot", [ALL_ROLE], expires_at="2999-01-01T00:00:00Z")
    async with client.get(f"{base(gateway)}{ECHO}/x", headers={"X-API-Key": key}) as response:
        assert await acting_user_of(response) == ["future-bot"]


async def test_two_different_credentials_are_400(gateway: RunningGateway) -> None:
    first = await add_key(gateway, "first-bot", [ALL_ROLE])
    second = await add_key(gateway, "second-bot", [ALL_ROLE])
    conflicts = [
        [("X-API-Key", first), ("X-API-Key", second)],
        [("X-API-Key", first), ("Authorization", f"Bearer {second}")],
        [("X-API-Key", first), ("Authorization", f"ApiKey {second}")],
        [("X-API-Key", first), ("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")],
        [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")],
        [("X-API-Key", first), ("X-API-Key", "kg_garbage")],
    ]
    for headers in conflicts:
        response = await raw_request(gateway.proxy_port, http_request("GET", f"{ECHO}/x", headers))
        raw_error(response, 400, "credential_conflict")


async def test_the_same_key_twice_is_one_credential(gateway: RunningGateway) -> None:
    key = await add_key(gateway, "twice-bot", [ALL_ROLE])
    for headers in (
        [("X-API-Key", key), ("X-API-Key", key)],
        [("X-API-Key", key), ("Authorization", f"Bearer {key}")],
    ):
        response = await raw_request(gateway.proxy_port, http_request("GET", f"{ECHO}/x", headers))
        assert response.status == 200
        echoed = response.json()["headers"]
        assert [v for n, v in echoed if n.lower() == "x-acting-user"] == ["twice-bot"]


# --------------------------------------------------------------------------- anonymous


async def test_anonymous_passthrough_strips_identity_and_backend_login_works(
    gateway: RunningGateway, client: aiohttp.ClientSession
) -> None:
    url = base(gateway)
    # A client posing as a user gets nowhere: the header is stripped, the backend says 401.
    async with client.get(
        f"{url}{REST}/rules/", headers={"X-Acting-User": "admin", "X-Remote-User": "admin"}
    ) as response:
        assert response.status == 401
        assert (await response.json())["error"] == "unauthenticated"
    async with client.get(f"{url}{ECHO}/anon", headers={"X-Acting-User": "admin"}) as response:
        assert await acting_user_of(response) == []
    # The backend's own users log in through the gateway and use their JWT.
    async with client.post(
        f"{url}{REST}/token", json={"username": "admin", "password": "admin"}
    ) as response:
        assert response.status == 200
        token = (await response.json())["token"]
    assert not token.startswith("kg_")
    jwt = {"Authorization": f"Bearer {token}"}
    async with client.put(f"{url}{REST}/rules/jwt/r1", json={"x": 1}, headers=jwt) as response:
        assert response.status == 201
        assert (await response.json())["createdBy"] == "admin"
    async with client.get(f"{url}{ECHO}/jwt", headers=jwt) as response:
        echoed = await response.json()
    assert ["Authorization", f"Bearer {token}"] in echoed["headers"]
    async with client.get(
        f"{url}{REST}/rules/", headers={"Authorization": "Bearer eyJ.not.valid"}
    ) as response:
        assert (await response.json())["error"] == "invalid_token"


async def test_anonymous_deny_is_401_key_missing(
    tmp_path: Path, backend: Backend, client: aiohttp.ClientSession
) -> None:
    config = write_config(tmp_path / "deny", backend.url, extra={"anonymous": "deny"})
    async with gateway_for(config) as running:
        for headers in (
            {},
            {"X-Acting-User": "admin"},
            {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"},
            {"Authorization": "Basic YWRtaW46YWRtaW4="},
        ):
            async with client.get(f"{base(running)}{ECHO}/x", headers=headers) as response:
                await json_error(response, 401, "key_missing")
                assert response.headers["WWW-Authenticate"] == WWW_AUTHENTICATE_VALUE
        key = await add_key(running, "deny-bot", [ALL_ROLE])
        async with client.get(f"{base(running)}{ECHO}/x", headers={"X-API-Key": key}) as response:
            assert await acting_user_of(response) == ["deny-bot"]


# --------------------------------------------------------------------------- authorization

PROTECTED_TARGETS = [
    ("GET", f"{REST}/apikeys"),
    ("GET", f"{REST}/apikeys/"),
    ("POST", f"{REST}/apikeys"),
    ("GET", f"{REST}/apikeys/1"),
    ("DELETE", f"{REST}/apikeys/1"),
    ("GET", f"{REST}/APIKEYS"),
    ("GET", f"{REST}/ApiKeys/1"),
    ("GET", "/1integrate/REST/apikeys"),
    ("GET", f"{REST}/%61pikeys"),
    ("GET", f"{REST}/%41PIKEYS/1"),
    ("POST", f"{REST}/api%6Beys"),
    ("GET", "/%31Integrate/rest/apikeys"),
    ("GET", f"{REST}/apikeys?x=1"),
    ("GET", "/api/v1/keys"),
    ("POST", "/api/v1/keys/1/revoke"),
    ("GET", "/api/v1/audit"),
]


@pytest.mark.parametrize(("method", "target"), PROTECTED_TARGETS)
async def test_protected_paths_are_403_even_with_every_role(
    gateway: RunningGateway, all_key: str, method: str, target: str
) -> None:
    response = await raw_request(
        gateway.proxy_port, http_request(method, target, [("X-API-Key", all_key)])
    )
    raw_error(response, 403, "forbidden_protected")


async def test_policy_denies_what_no_role_allows(
    gateway: RunningGateway, client: aiohttp.ClientSession
) -> None:
    key = await add_key(gateway, "reader-bot", ["1int-rules-read"])
    headers = {"X-API-Key": key}
    url = base(gateway)
    async with client.get(f"{url}{REST}/rules/", headers=headers) as response:
        assert response.status == 200
    async with client.head(f"{url}{REST}/rules/", headers=headers) as response:
        assert response.status == 200  # GET allows HEAD
    for method, path in (
        ("PUT", f"{REST}/rules/x"),
        ("POST", f"{REST}/rules/folder"),
        ("DELETE", f"{REST}/rules/x"),
        ("GET", f"{REST}/sessions/"),
        ("GET", f"{ECHO}/x"),
        ("GET", f"{REST}/Rules/"),  # policy paths are case-sensitive
        ("GET", "/elsewhere"),
    ):
        async with client.request(method, f"{url}{path}", headers=headers) as response:
            await json_error(response, 403, "forbidden")


async def test_unknown_roles_on_a_key_grant_nothing(
    tmp_path: Path, backend: Backend, client: aiohttp.ClientSession
) -> None:
    policy = policy_data()
    policy["roles"]["retired-role"] = {"allow": ["* /**"]}
    config = write_config(tmp_path / "retired", backend.url, policy=policy)
    only_retired = await create_key(config, "retired-only", ["retired-role"])
    mixed = await create_key(config, "retired-mixed", ["retired-role", "1int-rules-read"])
    # The role disappears from the policy; the keys still carry it.
    del policy["roles"]["retired-role"]
    (config.parent / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    async with gateway_for(config) as running:
        url = base(running)
        for path in (f"{ECHO}/x", f"{REST}/rules/", f"{REST}/sessions/"):
            async with client.get(f"{url}{path}", headers={"X-API-Key": only_retired}) as r:
                await json_error(r, 403, "forbidden")
        async with client.get(f"{url}{REST}/rules/", headers={"X-API-Key": mixed}) as r:
            assert r.status == 200
        async with client.put(f"{url}{REST}/rules/x", headers={"X-API-Key": mixed}) as r:
            await json_error(r, 403, "forbidden")


# --------------------------------------------------------------------------- keep-alive


async def test_sequential_requests_reuse_upstream_connections(
    gateway: RunningGateway, all_key: str, backend: Backend, client: aiohttp.ClientSession
) -> None:
    """Count the distinct gateway-side ports the backend's live connections come from."""
    server = backend.runner.server
    assert server is not None
    peer_ports: set[int] = set()
    requests = 60
    for index in range(requests):
        async with client.get(
            f"{base(gateway)}{ECHO}/ka/{index}", headers={"X-API-Key": all_key}
        ) as response:
            assert response.status == 200
            await response.read()
        for handler in server.connections:
            transport = handler.transport
            assert transport is not None
            peer_ports.add(transport.get_extra_info("peername")[1])
    assert 1 <= len(peer_ports) <= 2, peer_ports
    # The counting sees new connections: a direct connection to the backend shows up.
    _, writer = await asyncio.open_connection("127.0.0.1", backend.port)
    local_port = writer.get_extra_info("sockname")[1]
    await asyncio.sleep(0.05)
    seen_now = {
        h.transport.get_extra_info("peername")[1] for h in server.connections if h.transport
    }
    writer.close()
    await writer.wait_closed()
    assert local_port in seen_now


# --------------------------------------------------------------------------- acting user


async def test_acting_user_is_recorded_by_the_backend(
    gateway: RunningGateway, client: aiohttp.ClientSession
) -> None:
    author = await add_key(gateway, "integration-bot", [WRITER_ROLE])
    editor = await add_key(gateway, "nightly-sync", [WRITER_ROLE])
    url = f"{base(gateway)}{REST}/rules/keygate/r1"
    async with client.put(url, json={"v": 1}, headers={"X-API-Key": author}) as response:
        assert response.status == 201
        created = await response.json()
    assert created["createdBy"] == "integration-bot"
    assert created["lastEditedBy"] == "integration-bot"
    async with client.put(
        url, json={"v": 2}, headers={"Authorization": f"ApiKey {editor}"}
    ) as response:
        assert response.status == 200
        edited = await response.json()
    assert edited["createdBy"] == "integration-bot"
    assert edited["lastEditedBy"] == "nightly-sync"
    async with client.get(url, headers={"X-API-Key": author}) as response:
        stored = await response.json()
    assert (stored["createdBy"], stored["lastEditedBy"], stored["v"]) == (
        "integration-bot",
        "nightly-sync",
        2,
    )
    # The parent folder the backend created on the way is also attributed to the key.
    async with client.get(
        f"{base(gateway)}{REST}/rules/keygate", headers={"X-API-Key": author}
    ) as r:
        assert (await r.json())["createdBy"] == "integration-bot"


async def test_metrics_count_each_outcome_on_the_admin_listener(
    gateway: RunningGateway, all_key: str, client: aiohttp.ClientSession
) -> None:
    proxy, admin = base(gateway), f"http://127.0.0.1:{gateway.admin_port}"
    calls = [
        ({"X-API-Key": all_key}, f"{ECHO}/a", 200),
        ({"X-API-Key": all_key}, f"{ECHO}/b", 200),
        # Another last character (a secret ending in "x" made "x" the same key: a 200).
        ({"X-API-Key": all_key[:-1] + ("y" if all_key.endswith("x") else "x")}, f"{ECHO}/a", 401),
        ({"X-API-Key": all_key}, "/1Integrate/rest/apikeys", 403),
    ]
    for headers, path, status in calls:
        async with client.get(proxy + path, headers=headers) as response:
            assert response.status == status
    async with client.get(admin + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'keygate_proxy_requests_total{outcome="forwarded"} 2.0' in text
    assert 'keygate_proxy_requests_total{outcome="key_malformed"} 1.0' in text
    assert 'keygate_proxy_requests_total{outcome="forbidden_protected"} 1.0' in text
    assert 'keygate_upstream_responses_total{class="2xx"} 2.0' in text
