"""The upstream client's pure framing and reuse rules, without a server."""

from __future__ import annotations

import pytest

from gateway.upstream import LocalProtocolError
from gateway.upstream.framing import (
    Framing,
    Limits,
    chunk,
    idle_lifetime,
    is_idempotent,
    keep_alive,
    keep_alive_timeout,
    request_head,
    response_framing,
    tokens,
    transfer_codings,
)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
def test_idempotent_methods(method: str) -> None:
    assert is_idempotent(method)


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT", "get", "PROPFIND"])
def test_other_methods_are_not_idempotent(method: str) -> None:
    assert not is_idempotent(method)


def test_request_head_is_exact_and_refuses_line_breaks() -> None:
    head = request_head("GET", "/a?b", "h:1", [("X-A", "1"), ("x-a", "2")], chunked=True)
    assert head == b"GET /a?b HTTP/1.1\r\nHost: h:1\r\nX-A: 1\r\nx-a: 2\r\n" + (
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    for bad in ([("X", "a\rb")], [("X", "a\nb")], [("X\r\nY", "1")]):
        with pytest.raises(LocalProtocolError):
            request_head("GET", "/", "h", bad, chunked=False)
    with pytest.raises(ValueError):  # LocalProtocolError is a ValueError
        request_head("GET", "/\n", "h", [], chunked=False)


def test_chunk() -> None:
    assert chunk(b"hello world!!!!!") == b"10\r\nhello world!!!!!\r\n"


@pytest.mark.parametrize(
    ("status", "head_only", "codings", "length", "framing"),
    [
        (200, True, ("chunked",), 5, Framing.NONE),
        (204, False, (), 5, Framing.NONE),
        (304, False, ("chunked",), None, Framing.NONE),
        (103, False, (), None, Framing.NONE),
        (200, False, ("gzip", "chunked"), 5, Framing.CHUNKED),
        (200, False, ("chunked", "gzip"), None, Framing.UNTIL_CLOSE),
        (200, False, ("gzip",), None, Framing.UNTIL_CLOSE),
        (200, False, (), 0, Framing.LENGTH),
        (404, False, (), None, Framing.UNTIL_CLOSE),
    ],
)
def test_response_framing(
    status: int, head_only: bool, codings: tuple[str, ...], length: int | None, framing: Framing
) -> None:
    assert response_framing(status, head_only, codings, length) is framing


@pytest.mark.parametrize(
    ("version", "connection", "framing", "reused"),
    [
        ("1.1", "", Framing.LENGTH, True),
        ("1.1", "keep-alive, Close", Framing.LENGTH, False),
        ("1.1", "", Framing.UNTIL_CLOSE, False),
        ("1.0", "keep-alive", Framing.LENGTH, False),
        ("1.1", "upgrade", Framing.CHUNKED, True),
        ("1.1", "x-closed", Framing.CHUNKED, True),
        (
            "1.1",
            None,
            Framing.LENGTH,
            True,
        ),
    ],
)
def test_keep_alive(version: str, connection: str | None, framing: Framing, reused: bool) -> None:
    assert keep_alive(version, connection, framing) is reused


def test_tokens_and_codings() -> None:
    assert tokens(" Keep-Alive ,, CLOSE") == {"keep-alive", "close"}
    assert tokens(None) == frozenset()
    assert transfer_codings("GZip , chunked") == ("gzip", "chunked")
    assert transfer_codings("") == ()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("timeout=5, max=100", 5.0),
        ("max=100,Timeout = 2.5", 2.5),
        ('timeout="7"', 7.0),
        ("timeout=abc", None),
        ("timeout=-1", None),
        ("timeout=inf", None),
        ("timeout=nan", None),
        ("max=3", None),
        (None, None),
    ],
)
def test_keep_alive_timeout_hint(value: str | None, seconds: float | None) -> None:
    assert keep_alive_timeout(value) == seconds


def test_idle_lifetime_is_the_shorter_with_a_margin_before_the_hint() -> None:
    assert idle_lifetime(15, None) == 15
    assert idle_lifetime(15, 5) == 4  # one second before the upstream closes
    assert idle_lifetime(3, 60) == 3
    assert idle_lifetime(15, 1) == 0.5  # short hints keep half
    assert idle_lifetime(15, 0) == 0


def test_limits_bound_the_whole_head() -> None:
    limits = Limits(max_line_size=100, max_headers=3)
    assert limits.max_head_size == 5 * 102
