"""The aiohttp internals gateway/proxy/web_internals.py relies on are still there and still behave.

These fail first when an aiohttp release changes them; pyproject pins aiohttp below the next
minor release so that such a release is taken deliberately, after this module passes.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from gateway.proxy.web_internals import (
    BodilessAnswer,
    JsonErrorRequestHandler,
    JsonErrorServer,
    RelayedResponse,
    RelayedWholeResponse,
    header_lines,
)


def test_aiohttp_is_the_pinned_minor_release() -> None:
    assert aiohttp.__version__.startswith("3.14."), aiohttp.__version__


def test_response_internals_exist() -> None:
    assert inspect.iscoroutinefunction(web.StreamResponse._prepare_headers)
    assert web.StreamResponse._send_headers_immediately is True
    assert web.Response._send_headers_immediately is False
    assert RelayedWholeResponse._send_headers_immediately is False
    assert RelayedResponse._send_headers_immediately is True


def test_request_handler_hooks_exist() -> None:
    parameters = list(inspect.signature(RequestHandler.handle_error).parameters)
    assert parameters == ["self", "request", "status", "exc", "message"]
    # The head clock starts with the first byte after an idle wait; aiohttp's keep-alive
    # timer (set by keepalive_timeout) bounds that wait.
    assert list(inspect.signature(RequestHandler.data_received).parameters) == ["self", "data"]
    assert callable(RequestHandler._process_keepalive)
    init = inspect.signature(RequestHandler.__init__).parameters
    for name in (
        "manager",
        "loop",
        "access_log_class",
        "access_log",
        "max_line_size",
        "auto_decompress",
    ):
        assert name in init, name


async def test_parsed_requests_are_queued_where_they_are_screened() -> None:
    # Every parsed request (from the socket, or re-parsed after a declined upgrade) goes
    # through `_messages.append`; a refusal is queued as aiohttp queues its parser errors.
    source = inspect.getsource(RequestHandler)
    assert source.count("self._messages.append((msg, payload))") == 2
    assert "isinstance(message, _ErrInfo)" in source
    assert list(inspect.signature(_ErrInfo).parameters) == ["status", "exc", "message"]
    loop = asyncio.get_running_loop()
    handler = JsonErrorRequestHandler(web.Server(lambda request: web.Response()), loop=loop)
    assert isinstance(handler._messages, collections.deque)
    assert type(handler._messages) is not collections.deque


async def test_a_request_handler_keeps_its_loop() -> None:
    # JsonErrorRequestHandler's head clock reads it once per request (get_running_loop costs
    # several times more).
    loop = asyncio.get_running_loop()
    handler = RequestHandler(web.Server(lambda request: web.Response()), loop=loop)
    assert handler._loop is loop


@pytest.fixture
async def relay_server() -> AsyncIterator[int]:
    """A low-level server answering /stream, /whole (no Content-Type) and raising on /boom."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        kind = RelayedWholeResponse if request.path == "/whole" else RelayedResponse
        response = kind(status=200)
        response.headers["X-Relayed"] = "yes"
        response.content_length = 4
        await response.prepare(request)
        await response.write_eof(b"body")
        return response

    server = JsonErrorServer(handler, max_line_size=8190)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/stream", "/whole"])
async def test_relayed_responses_invent_no_content_type(relay_server: int, path: str) -> None:
    raw = await _exchange(
        relay_server, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"x-relayed: yes" in head.lower()
    assert b"content-type" not in head.lower()
    assert body == b"body"


async def test_parser_refusals_are_answered_by_our_handler_as_json(relay_server: int) -> None:
    raw = await _exchange(relay_server, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400"
    assert json.loads(body)["error"] == "bad_request"


async def test_app_runner_internals_exist() -> None:
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(handler, access_log=None)
    assert server.request_handler is handler
    assert callable(server.request_factory)
    assert server.handler_cancellation is False
    assert server._kwargs == {"access_log": None}


def test_bodiless_answer_internals_exist() -> None:
    assert inspect.iscoroutinefunction(web.StreamResponse._start)
    assert list(inspect.signature(web.StreamResponse._start).parameters) == ["self", "request"]
    assert inspect.iscoroutinefunction(web.BaseRequest._prepare_hook)
    for name in ("_keep_alive", "_eof_sent", "_body_length", "_payload_writer", "_req"):
        assert hasattr(web.StreamResponse(), name), name
    assert "self._payload_writer = payload_writer" in inspect.getsource(web.BaseRequest.__init__)


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Acting-User", "bob\r\nX-Admin: yes")],
        [("X-Acting-User", "bob\nX-Admin: yes")],
        [("X-Acting-User", "bob\r")],
        [("X-A\r\nB", "v")],
        [("X-Ok", "fine"), ("X-Bad", "a\nb")],
    ],
)
def test_header_lines_refuse_a_line_break(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match="newline or carriage return"):
        header_lines(headers)


def test_header_lines() -> None:
    assert header_lines([]) == ""
    assert header_lines([("A", "1"), ("B-c", "x y")]) == "A: 1\r\nB-c: x y\r\n"


def _answer_kinds(plain: bool) -> Callable[[web.BaseRequest], web.StreamResponse]:
    """A handler answering an empty 200 with two headers: aiohttp's own, or BodilessAnswer."""

    fixed = header_lines([("Cache-Control", "no-store"), ("Server", "keygate")])

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response: web.StreamResponse
        if plain:
            response = web.Response(status=200)
            response.headers.extend(
                [("Cache-Control", "no-store"), ("Server", "keygate"), ("X-Acting-User", "bé")]
            )
        else:
            response = BodilessAnswer(200, fixed, header_lines([("X-Acting-User", "bé")]))
        response.headers["X-Request-Id"] = "rid-1"  # as the proxy handler adds it
        if "close" in request.path:
            response.force_close()
        return response

    return handler  # type: ignore[return-value]


async def _heads(plain: bool, requests: list[bytes]) -> tuple[list[bytes], list[int]]:
    """Send each request on its own connection to a server answering as `plain` says: the
    heads (Date left out) and the sizes the access logger saw."""
    logged: list[tuple[int, int]] = []

    class Logger(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            logged.append((response.status, response.body_length))

    server = JsonErrorServer(_answer_kinds(plain), access_log_class=Logger)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    heads = []
    try:
        for request in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(request)
                await writer.drain()
                raw = await asyncio.wait_for(reader.read(65536), 5)
                # A kept connection stays open: the next request must be answered too.
                if b"onnection: close" not in raw and b"HTTP/1.0" not in raw:
                    writer.write(request)
                    await writer.drain()
                    again = await asyncio.wait_for(reader.read(65536), 5)
                    assert again.split(b"\r\n", 1)[0] == raw.split(b"\r\n", 1)[0]
            finally:
                writer.close()
            lines = raw.split(b"\r\n")
            heads.append(b"\r\n".join(line for line in lines if not line.startswith(b"Date: ")))
            assert sum(line.startswith(b"Date: ") for line in lines) == 1
    finally:
        await runner.cleanup()
    assert {status for status, _ in logged} == {200}
    return heads, [size for _, size in logged]


async def test_a_bodiless_answer_is_written_as_aiohttp_writes_an_empty_response() -> None:
    requests = [
        b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /close HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.0\r\nHost: h\r\n\r\n",
        b"GET /x HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    ]
    expected, expected_sizes = await _heads(True, requests)
    got, sizes = await _heads(False, requests)
    assert got == expected
    assert sizes == expected_sizes and all(size > 0 for size in sizes)
    assert b"X-Acting-User: b\xc3\xa9" in got[0]
    assert b"Content-Length: 0" in got[0] and b"Content-Length" not in got[1]
