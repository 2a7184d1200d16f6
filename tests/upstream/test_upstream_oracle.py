"""The upstream client against h11 as an oracle: same bytes in, same status, headers, body, reuse.

Hypothesis generates upstream responses in every framing (Content-Length, chunked with
extensions and trailers, close-delimited, HEAD, 1xx interim answers, 204, 304,
`Connection: close`, HTTP/1.0), split into random packets. keygate's client reads them from a
real loopback socket; h11 reads the same bytes; both must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.examples import scaled

from gateway.upstream import UpstreamClient

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: name.strip("-") == name
)
# Field values: visible ASCII, spaces inside, obs-text bytes too (latin-1 round trip).
VALUE = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=20,
).map(lambda v: v.replace("\x85", "x"))
FRAMINGS = ("length", "chunked", "close", "none")
RESERVED = {"content-length", "transfer-encoding", "connection", "keep-alive", "trailer"}


@dataclass
class Case:
    """One generated exchange: the request method and the raw response bytes in packets."""

    method: str
    raw: bytes
    packets: list[bytes]


@st.composite
def responses(draw: st.DrawFn) -> Case:
    """A valid HTTP/1.x response in any framing, preceded by 0-2 interim answers."""
    method = draw(st.sampled_from(["GET", "HEAD"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    status = draw(st.sampled_from([200, 201, 204, 299, 304, 404, 500]))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b"Tr\xe8s bien"]))
    framing = draw(st.sampled_from(FRAMINGS))
    if version == b"1.0" and framing == "chunked":
        framing = "length"
    body = draw(st.binary(max_size=300)) if method == "GET" and status not in (204, 304) else b""
    headers = [
        (name.encode(), value.strip().encode("latin-1"))
        for name, value in draw(st.lists(st.tuples(TOKEN, VALUE), max_size=6))
        if name not in RESERVED
    ]
    if draw(st.booleans()):
        headers.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif framing == "none":
        body = b""
    head = b"HTTP/%b %d %b\r\n" % (version, status, reason)
    head += b"".join(b"%b: %b\r\n" % pair for pair in headers) + b"\r\n"
    interim = b""
    if version == b"1.1":
        for code in draw(st.lists(st.sampled_from([100, 103]), max_size=2)):
            interim += b"HTTP/1.1 %d Info\r\nLink: </x>\r\n\r\n" % code
    wire_body = b"" if method == "HEAD" or status in (204, 304) else body
    if framing == "chunked" and method != "HEAD" and status not in (204, 304):
        sizes = draw(st.lists(st.integers(1, 64), max_size=6))
        parts, rest = [], body
        for size in sizes:
            if rest:
                parts.append(rest[:size])
                rest = rest[size:]
        if rest:
            parts.append(rest)
        ext = draw(st.sampled_from([b"", b";name=value", b';q="x y"']))
        wire_body = b"".join(b"%x%b\r\n%b\r\n" % (len(p), ext, p) for p in parts)
        trailers = draw(st.sampled_from([b"", b"X-Checksum: 1\r\n"]))
        wire_body += b"0\r\n" + trailers + b"\r\n"
    raw = interim + head + wire_body
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=4)))
    packets = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    return Case(method, raw, [p for p in packets if p])


@dataclass
class Reading:
    """What a reader made of a response."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reusable: bool


def h11_reading(case: Case) -> Reading:
    """h11's reading of the response bytes; EOF is fed only if the body needs it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=case.method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(case.raw)
    response: h11.Response | None = None
    body = b""
    needed_eof = False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            needed_eof = True
            conn.receive_data(b"")  # EOF: ends a close-delimited body
            continue
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
    assert response is not None
    # h11 marks a connection it will not reuse MUST_CLOSE; one whose body ran to EOF is gone.
    reusable = not needed_eof and conn.our_state is h11.DONE and conn.their_state is h11.DONE
    headers = [(name.lower(), value) for name, value in response.headers.raw_items()]
    return Reading(response.status_code, response.reason, headers, body, reusable)


async def keygate_reading(case: Case) -> Reading:
    """keygate's client reading the same bytes from a loopback upstream, sent in packets."""

    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            for packet in case.packets:
                writer.write(packet)
                await writer.drain()
                await asyncio.sleep(0)
            await asyncio.sleep(0.01)
        finally:
            writer.close()  # ends a close-delimited body; a reusable connection sees it later
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(f"http://127.0.0.1:{port}", pool_size=1, timeout=5, read_timeout=5)
    try:
        async with asyncio.timeout(10):
            response = await client.request(case.method, "/", [])
            body = await response.read()
            response.release()
        reusable = client.pool.idle == 1
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response.headers]
        return Reading(response.status, response.reason.encode("latin-1"), headers, body, reusable)
    finally:
        await client.close()
        await asyncio.wait_for(served.wait(), 5)
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


@settings(
    max_examples=scaled(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(responses())
def test_keygate_reads_every_framing_as_h11_does(case: Case) -> None:
    expected = h11_reading(case)
    got = asyncio.run(keygate_reading(case))
    # h11 lower-cases names; keygate keeps them as sent (byte transparency).
    assert (got.status, got.reason, got.body) == (expected.status, expected.reason, expected.body)
    assert [(n.lower(), v) for n, v in got.headers] == expected.headers
    assert got.reusable == expected.reusable, case.raw
