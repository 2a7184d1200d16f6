"""Protocol versions, transfer codings and cut answers, over raw sockets through a real gateway.

The upstream here is a raw-socket server that records every request head it receives, so
"never forwarded" means the upstream saw nothing, not merely that the answer was an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.config import ALL_ROLE, add_key, write_config

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

# Seconds a raw exchange may take before the test fails (nothing here should wait).
EXCHANGE_TIMEOUT = 10.0
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class RecordingUpstream:
    """A raw upstream: records each request head, answers `answers[target]` (default OK)."""

    url: str = ""
    heads: list[bytes] = field(default_factory=list)
    answers: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    """Start the recording upstream on a loopback port."""
    recorded = RecordingUpstream()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                recorded.heads.append(head)
                lowered = head.lower()
                if b"transfer-encoding: chunked" in lowered:
                    await reader.readuntil(b"\r\n0\r\n\r\n")  # the tests' bodies: one chunk
                elif b"content-length: " in lowered:
                    length = lowered.split(b"content-length: ")[1].split(b"\r\n")[0]
                    await reader.readexactly(int(length))
                target = head.split(b" ", 2)[1].decode()
                answer = recorded.answers.get(target, OK)
                writer.write(answer)
                await writer.drain()
                if answer is not OK:
                    await asyncio.sleep(0.2)  # let the gateway read it all, then hang up
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    recorded.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield recorded
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def gateway(tmp_path: Path, upstream: RecordingUpstream) -> AsyncIterator[RunningGateway]:
    """A gateway (proxy and admin listeners) in front of the recording upstream."""
    async with running_gateway(load_settings(write_config(tmp_path / "c", upstream.url))) as gw:
        yield gw


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes and return everything the gateway sends until it closes the connection."""

    async def run() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read()  # to EOF: every refusal here closes the connection
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.wait_for(run(), EXCHANGE_TIMEOUT)


def json_error(answer: bytes) -> tuple[int, str]:
    """Return the status and error code of one JSON error answer (and nothing after it)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1."), answer
    assert "content-type: application/json" in [f.lower() for f in fields], answer
    return int(status_line.split(" ")[1]), json.loads(body)["error"]


ECHO = "/1Integrate/rest/_echo/x"
WRONG_VERSIONS = [
    pytest.param(f"GET {ECHO}\r\n\r\n", 400, "bad_request", id="HTTP/0.9"),
    pytest.param(f"GET {ECHO} HTTP/2.0\r\nHost: a\r\n\r\n", 505, "http_version_not_supported",
                 id="HTTP/2.0"),
    pytest.param(f"GET {ECHO} HTTP/1.2\r\nHost: a\r\n\r\n", 400, "bad_request", id="HTTP/1.2"),
    pytest.param(f"GET {ECHO} HTTP/3.0\r\nHost: a\r\n\r\n", 400, "bad_request", id="HTTP/3.0"),
    pytest.param(f"POST {ECHO} HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "3\r\nabc\r\n0\r\n\r\n", 400, "bad_request", id="HTTP/1.0 chunked"),
]  # fmt: skip
CHUNKED_BODY = "3\r\nabc\r\n0\r\n\r\n"
WRONG_CODINGS = [
    # RFC 9112 section 6.1: a coding keygate does not implement before the final chunked.
    pytest.param("gzip, chunked", 501, "transfer_coding_not_implemented", id="gzip,chunked"),
    pytest.param("deflate,chunked", 501, "transfer_coding_not_implemented", id="deflate,chunked"),
    pytest.param("identity, chunked", 501, "transfer_coding_not_implemented",
                 id="identity,chunked"),
    pytest.param("chunked;x=1", 400, "bad_request", id="chunked;param"),
    # RFC 9112 section 6.3: chunked not last, or not there, leaves the length unknown: 400.
    pytest.param("chunked, gzip", 400, "bad_request", id="chunked,gzip"),
    pytest.param("identity", 400, "bad_request", id="identity"),
    pytest.param("gzip", 400, "bad_request", id="gzip"),
    pytest.param("chunked, chunked", 400, "bad_request", id="chunked,chunked"),
]  # fmt: skip


@pytest.mark.parametrize(("request_text", "status", "code"), WRONG_VERSIONS)
async def test_requests_in_another_http_version_are_refused_and_never_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream, request_text: str, status: int, code: str
) -> None:
    key = await add_key(gateway, "version-bot", [ALL_ROLE])
    request = request_text.replace("\r\n\r\n", f"\r\nX-API-Key: {key}\r\n\r\n", 1)
    if request_text.startswith(f"GET {ECHO}\r\n"):
        request = request_text  # HTTP/0.9 has no header section at all
    for port in (gateway.proxy_port, gateway.admin_port):
        assert port is not None
        assert json_error(await exchange(port, request.encode())) == (status, code)
    assert upstream.heads == []


@pytest.mark.parametrize(("coding", "status", "code"), WRONG_CODINGS)
async def test_request_transfer_codings_besides_chunked_are_refused_and_never_forwarded(
    gateway: RunningGateway, upstream: RecordingUpstream, coding: str, status: int, code: str
) -> None:
    key = await add_key(gateway, "coding-bot", [ALL_ROLE])
    request = (
        f"POST {ECHO} HTTP/1.1\r\nHost: a\r\nX-API-Key: {key}\r\n"
        f"Transfer-Encoding: {coding}\r\n\r\n{CHUNKED_BODY}"
    ).encode()
    for port in (gateway.proxy_port, gateway.admin_port):
        assert port is not None
        assert json_error(await exchange(port, request)) == (status, code)
    assert upstream.heads == []


async def test_plain_chunked_and_http_10_requests_still_go_through(
    gateway: RunningGateway, upstream: RecordingUpstream
) -> None:
    key = await add_key(gateway, "plain-bot", [ALL_ROLE])
    chunked = (
        f"POST {ECHO} HTTP/1.1\r\nHost: a\r\nX-API-Key: {key}\r\n"
        f"Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n{CHUNKED_BODY}"
    )
    http_10 = f"GET {ECHO} HTTP/1.0\r\nHost: a\r\nX-API-Key: {key}\r\n\r\n"
    for request in (chunked, http_10):
        answer = await exchange(gateway.proxy_port, request.encode())
        assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"200", answer
        assert answer.endswith(b"\r\n\r\nok")
    assert len(upstream.heads) == 2


# Upstreams that send a head, then break the body: the answer already began when it fails.
BROKEN_AFTER_HEAD = {
    "/cut/chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n",
    "/cut/trailer": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: a\x01b\r\n\r\n"
    ),
    "/cut/short": b"HTTP/1.1 200 OK\r\nContent-Length: 400000\r\n\r\nabc",
}


@pytest.mark.parametrize("target", sorted(BROKEN_AFTER_HEAD))
async def test_an_answer_broken_after_its_head_ends_in_a_closed_connection(
    gateway: RunningGateway,
    upstream: RecordingUpstream,
    caplog: pytest.LogCaptureFixture,
    target: str,
) -> None:
    """One status line only, then the connection closes: never a second head in the body."""
    caplog.set_level(logging.INFO)
    upstream.answers = BROKEN_AFTER_HEAD
    key = await add_key(gateway, "cut-bot", [ALL_ROLE])
    # Keep-alive asked for: only the gateway closing the connection ends the read.
    answer = await exchange(
        gateway.proxy_port, f"GET {target} HTTP/1.1\r\nHost: a\r\nX-API-Key: {key}\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
    assert answer.count(b"HTTP/1.") == 1, answer
    assert b"internal_error" not in answer
    access = [r.getMessage() for r in caplog.records if r.name == "keygate.access"]
    assert len(access) == 1 and access[0].endswith(" incomplete"), access
    problems = [r for r in caplog.records if r.name == "keygate.proxy" and r.levelno >= 30]
    assert len(problems) == 1, [r.getMessage() for r in problems]
