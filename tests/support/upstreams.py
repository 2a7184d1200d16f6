"""Upstreams for tests: the demo backend plus test-only diagnostics routes on a loopback port.

The diagnostics routes (`_echo`, `_blob`, `_slow`, `_status`) live here, not in
`gateway.demo.backend`: they exist for tests, which need to see exactly what the gateway
forwards, stream large bodies, wait on a slow backend and get a chosen status. They answer
without a token or an acting user.
`start_recording_backend` also notes every request received (the forward-auth front tests
check what reached the backend).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.demo.backend import (
    BASE_PATH,
    DEFAULT_ACTING_USER_HEADER,
    DEMO_STATE,
    ERR_INVALID_REQUEST,
    DemoError,
    create_demo_backend_app,
    runner_url,
)

# Bytes per read/write on the streaming diagnostics routes.
STREAM_CHUNK_SIZE: Final = 64 * 1024
# Largest body GET /_blob will produce, in bytes (16 GiB).
BLOB_MAX_SIZE: Final = 16 * 1024**3
# Byte i of a blob is i % BLOB_MODULUS (a prime, so chunk boundaries never line up).
BLOB_MODULUS: Final = 251
# Longest sleep GET /_slow accepts, in seconds.
SLOW_MAX_DELAY: Final = 30.0
# Seconds a stopping test upstream waits for handlers still running (a /_slow sleep a test
# has already seen cut off by the gateway) before it cancels them.
SHUTDOWN_TIMEOUT: Final = 0.1
# Names of the diagnostics routes (public: no token or acting user needed).
TEST_ROUTES: Final = frozenset({"echo", "blob", "slow", "status"})

# One period of the blob pattern, and enough periods to cut any 64 KiB chunk from.
_BLOB_PERIOD: Final = bytes(range(BLOB_MODULUS))
_BLOB_BUFFER: Final = _BLOB_PERIOD * (STREAM_CHUNK_SIZE // BLOB_MODULUS + 2)


def blob_chunk(offset: int, length: int) -> bytes:
    """Return bytes [offset, offset+length) of the deterministic /_blob pattern."""
    start = offset % BLOB_MODULUS
    if start + length <= len(_BLOB_BUFFER):
        return _BLOB_BUFFER[start : start + length]
    repeats = math.ceil((start + length) / BLOB_MODULUS)
    return (_BLOB_PERIOD * repeats)[start : start + length]


def _decode_header_bytes(raw: bytes) -> str:
    """Decode raw header bytes as UTF-8, falling back to Latin-1 (lossless)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


async def _echo(request: web.Request) -> web.Response:
    """ANY /_echo/{tail}: describe the request exactly as received (body streamed)."""
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(STREAM_CHUNK_SIZE):
        digest.update(chunk)
        length += len(chunk)
    headers = [
        [_decode_header_bytes(name), _decode_header_bytes(value)]
        for name, value in request.raw_headers
    ]
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": headers,
            "body_sha256": digest.hexdigest(),
            "body_length": length,
        }
    )


async def _blob(request: web.Request) -> web.StreamResponse:
    """GET /_blob?size=N: stream N deterministic bytes in 64 KiB writes."""
    raw = request.query.get("size")
    if raw is None or not raw.isdecimal():
        raise DemoError(400, ERR_INVALID_REQUEST, "Query parameter 'size' must be an integer")
    size = int(raw)
    if size > BLOB_MAX_SIZE:
        raise DemoError(400, ERR_INVALID_REQUEST, f"size must be at most {BLOB_MAX_SIZE}")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    if request.method != "HEAD":
        offset = 0
        while offset < size:
            length = min(STREAM_CHUNK_SIZE, size - offset)
            await response.write(blob_chunk(offset, length))
            offset += length
    await response.write_eof()
    return response


async def _slow(request: web.Request) -> web.Response:
    """GET /_slow?delay=S: answer after sleeping S seconds (at most 30)."""
    raw = request.query.get("delay", "")
    try:
        delay = float(raw)
    except ValueError:
        delay = math.nan
    if not 0 <= delay <= SLOW_MAX_DELAY:
        raise DemoError(
            400, ERR_INVALID_REQUEST, f"delay must be a number of seconds in [0, {SLOW_MAX_DELAY}]"
        )
    await asyncio.sleep(delay)
    return web.json_response({"slept": delay})


async def _status(request: web.Request) -> web.Response:
    """ANY /_status/{code}: answer with that status (200-599), e.g. an upstream 5xx."""
    code = int(request.match_info["code"])
    if not 200 <= code <= 599:
        raise DemoError(400, ERR_INVALID_REQUEST, "code must be an HTTP status in [200, 599]")
    return web.json_response({"status": code}, status=code)


def create_test_upstream_app(
    acting_user_header: str = DEFAULT_ACTING_USER_HEADER,
) -> web.Application:
    """The demo backend's application plus the public diagnostics routes."""
    app = create_demo_backend_app(acting_user_header)
    app.router.add_route("*", f"{BASE_PATH}/_echo/{{tail:.*}}", _echo, name="echo")
    app.router.add_get(f"{BASE_PATH}/_blob", _blob, name="blob")
    app.router.add_get(f"{BASE_PATH}/_slow", _slow, name="slow")
    app.router.add_route("*", f"{BASE_PATH}/_status/{{code:[0-9]{{3}}}}", _status, name="status")
    app[DEMO_STATE].public_routes.update(TEST_ROUTES)
    return app


@dataclass
class Backend:
    """A started test upstream: its runner, port and base URL."""

    runner: web.AppRunner
    port: int
    url: str


@dataclass(frozen=True)
class Received:
    """One request as the backend got it: method, raw target and raw headers in order."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]

    def values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class RecordingBackend(Backend):
    """The demo backend noting every request it receives, before it answers."""

    received: list[Received] = field(default_factory=list)


async def start_backend() -> Backend:
    """Start the test upstream on 127.0.0.1 with a free port."""
    runner = web.AppRunner(create_test_upstream_app(), shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    return Backend(runner, int(runner.addresses[0][1]), runner_url(runner))


async def start_recording_backend() -> RecordingBackend:
    """Start the test upstream on 127.0.0.1 (free port), recording each request it receives."""
    received: list[Received] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = tuple(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers
        )
        received.append(Received(request.method, request.raw_path, headers))
        return await handler(request)

    app = create_test_upstream_app()
    app.middlewares.insert(0, record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    return RecordingBackend(runner, int(runner.addresses[0][1]), runner_url(runner), received)
