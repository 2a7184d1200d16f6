"""The decision listener (`forward_auth.listen`): the same answers as the proxy listener's
endpoints for the whole decision corpus, and bounded against hostile clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from aiohttp import web
from support.config import add_key, write_config
from support.http import RawResponse, http_request, raw_request
from support.virtual_time import on_virtual_time
from support.workers import redis_test_url
from test_decision import METHODS, POLICY, ROLE_SETS, TARGETS

from gateway.keys import rules as key_rules
from gateway.proxy.decision_listener import (
    MAX_FIELD_SIZE,
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    MAX_LINE_SIZE,
)
from gateway.ratelimit.limiters import REDIS_KEY_PREFIX
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.verify import SIGNATURE_HEADER, verify_acting_user

SIGNING_ID = "dl1"
SIGNING_SECRET = b"decision-listener-signing-secret-0123456789"
KEYS = {SIGNING_ID: SIGNING_SECRET}
ALLOWED = f"{TARGETS[0]}"  # GET is allowed there for the reader role
READER = ["reader"]
REDIS_URL = redis_test_url()


async def catch_all(request: web.BaseRequest) -> web.StreamResponse:
    """The test upstream: never to be asked by a decision."""
    raise AssertionError(f"a decision reached the upstream: {request.raw_path}")


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **extra: Any) -> AsyncIterator[RunningGateway]:
    """A gateway with the decision listener on a free port, signing, and `extra` settings."""
    server = web.Server(catch_all)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    forward_auth = {"listen": {"host": "127.0.0.1", "port": 0}, **extra.pop("forward_auth", {})}
    settings = {
        "identity": {"signing_keys": [{"id": SIGNING_ID, "env": "DL_SIGNING"}]},
        "forward_auth": forward_auth,
        **extra,
    }
    config = write_config(tmp_path / "dl", upstream, extra=settings, policy=POLICY)
    environ = {"DL_SIGNING": SIGNING_SECRET.decode()}
    try:
        async with running_gateway(load_settings(config, environ)) as running:
            assert running.decision_port is not None
            yield running
    finally:
        await runner.cleanup()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """The gateway with its decision listener on the defaults."""
    async with serving(tmp_path) as running:
        yield running


def asks(method: str, target: str, key: str) -> dict[str, bytes]:
    """How each front proxy asks about METHOD TARGET for `key` (as test_decision asks)."""
    return {
        "nginx": http_request(
            "GET",
            "/_keygate/nginx",
            [("X-Original-Method", method), ("X-Original-URI", target), ("X-API-Key", key)],
        ),
        "forward": http_request(
            "GET",
            "/_keygate/forward",
            [("X-Forwarded-Method", method), ("X-Forwarded-Uri", target), ("X-API-Key", key)],
        ),
        "envoy": http_request(
            method,
            f"/_keygate/envoy{target}",
            [("X-API-Key", key)] + ([] if method == "PUT" else [("Content-Length", "0")]),
        ),
    }


def one(response: RawResponse, name: str) -> str | None:
    """The single value of a header, or None."""
    values = response.header_values(name)
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


def verdict(response: RawResponse, method: str, target: str) -> tuple[Any, ...]:
    """What a decision said: status, reason, acting user, key id, error body, and whether its
    signature holds for METHOD TARGET (it carries a timestamp: verified, not compared)."""
    signature = one(response, SIGNATURE_HEADER)
    user = one(response, "X-Acting-User")
    signed = None
    if signature is not None and user is not None:
        signed = verify_acting_user(signature, method, target, user, KEYS)
    error = response.json() if response.body else None
    return (
        response.status,
        one(response, "X-Keygate-Reason"),
        user,
        one(response, "X-Keygate-Key-Id"),
        signed,
        one(response, "Cache-Control"),
        error,
    )


@pytest.mark.parametrize("role_set", sorted(ROLE_SETS))
async def test_the_decision_listener_answers_exactly_as_the_proxy_listener(
    gateway: RunningGateway, role_set: str
) -> None:
    key = await add_key(gateway, f"dl-{role_set}", ROLE_SETS[role_set])
    assert gateway.decision_port is not None
    mismatches = []
    allowed = 0
    for method in METHODS:
        for target in TARGETS:
            for name, request in asks(method, target, key).items():
                there = await raw_request(gateway.proxy_port, request)
                here = await raw_request(gateway.decision_port, request)
                expected, got = verdict(there, method, target), verdict(here, method, target)
                allowed += expected[0] == 200
                if expected != got:
                    mismatches.append((target[:60], method, name, expected, got))
    assert mismatches == []
    assert allowed > 0  # the corpus has allowed answers, signed, for every role set


async def test_refusals_and_the_untrusted_are_answered_alike(tmp_path: Path) -> None:
    async with serving(tmp_path, forward_auth={"trusted_proxies": ["10.0.0.0/8"]}) as gateway:
        assert gateway.decision_port is not None
        key = await add_key(gateway, "dl-untrusted", READER)
        request = asks("GET", ALLOWED, key)["nginx"]
        here = await raw_request(gateway.decision_port, request)
        assert here.status == 403
        assert one(here, "X-Keygate-Reason") == "forward_auth_untrusted"
        there = await raw_request(gateway.proxy_port, request)
        assert verdict(here, "GET", ALLOWED) == verdict(there, "GET", ALLOWED)


async def test_a_request_id_holding_a_key_is_refused_there_too(gateway: RunningGateway) -> None:
    key = await add_key(gateway, "dl-rid", READER)
    assert gateway.decision_port is not None
    request = http_request(
        "GET",
        "/_keygate/nginx",
        [("X-Original-Method", "GET"), ("X-Original-URI", ALLOWED), ("X-Request-Id", key)],
    )
    here = await raw_request(gateway.decision_port, request)
    there = await raw_request(gateway.proxy_port, request)
    assert here.status == there.status == 400
    assert here.json() == there.json()
    assert key not in here.body.decode() and key not in str(here.headers)


async def test_each_decision_writes_the_proxy_listeners_access_line(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    key = await add_key(gateway, "dl-logged", READER)
    assert gateway.decision_port is not None
    request = asks("GET", f"{ALLOWED}?k={key}", key)["nginx"]
    with caplog.at_level(logging.INFO, logger="keygate.access"):
        await raw_request(gateway.proxy_port, request)
        await raw_request(gateway.decision_port, request)
    lines = [r.getMessage() for r in caplog.records if r.name == "keygate.access"]
    assert len(lines) == 2, lines
    # Equal but for the request id and time (and the size: the Connection lines differ).
    same = [re.sub(r" \d+ [0-9.]+ms rid=\S+", " N T rid=R", line) for line in lines]
    assert same[0] == same[1]
    assert "decision=nginx" in lines[1] and "key=dl-logged" in lines[1]
    assert key not in lines[1]


async def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data`, return everything read until the server closes (bounded in time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def decision_head(target: str = ALLOWED, extra: str = "", version: str = "1.1") -> bytes:
    """An nginx decision request head (no key: anonymous passes, 200)."""
    return (
        f"GET /_keygate/nginx HTTP/{version}\r\nHost: k\r\nX-Original-Method: GET\r\n"
        f"X-Original-URI: {target}\r\n{extra}\r\n"
    ).encode()


def assert_bad_request(answer: bytes, message: str) -> None:
    """One 400 JSON error naming `message`, then the connection closed."""
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close" in answer
    assert b'"error": "bad_request"' in answer
    assert message.encode() in answer


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET /" + b"a" * MAX_LINE_SIZE + b" HTTP/1.1\r\n\r\n", "request line is longer"),
        (decision_head(extra="X-Big: " + "b" * MAX_FIELD_SIZE + "\r\n"), "header field is longer"),
        (
            decision_head(extra="".join(f"X-H{i}: v\r\n" for i in range(MAX_HEADERS))),
            f"more than {MAX_HEADERS} header fields",
        ),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", "malformed HTTP request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "HTTP"),
        (decision_head(extra="Content-Length: 5\r\n") + b"hello", "carries no body"),
        (
            decision_head(extra="Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n",
            "carries no body",
        ),
        (decision_head(extra="Connection: Upgrade\r\nUpgrade: websocket\r\n"), "upgrades"),
    ],
    ids=["long-line", "big-field", "many-fields", "garbage", "http2", "body", "chunked", "upgrade"],
)
async def test_hostile_heads_get_one_bounded_400_and_the_connection_closes(
    gateway: RunningGateway, data: bytes, message: str
) -> None:
    assert gateway.decision_port is not None
    assert_bad_request(await exchange(gateway.decision_port, data), message)
    # The listener still serves.
    answer = await exchange(gateway.decision_port, decision_head(extra="Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_header_line_growing_past_the_head_bound_is_cut_as_it_arrives(
    gateway: RunningGateway,
) -> None:
    assert gateway.decision_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.decision_port)
    try:
        writer.write(b"GET /_keygate/nginx HTTP/1.1\r\nX-Endless: ")
        chunk = b"v" * 65536
        answer = b""
        for _ in range(MAX_HEAD_SIZE // len(chunk) + 4):  # never finished, never a whole line
            writer.write(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                break
        with contextlib.suppress(ConnectionResetError):
            answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    # The connection is closed with bytes still unread: the kernel may reset it and drop the
    # 400 before it is read. When it arrives, it says why.
    if answer:
        assert_bad_request(answer, f"a request head is larger than {MAX_HEAD_SIZE} bytes")
    # Either way the connection ended (read() returned or reset) and the listener serves on.
    answer = await exchange(gateway.decision_port, decision_head(extra="Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_pipelined_requests_are_answered_in_order(gateway: RunningGateway) -> None:
    assert gateway.decision_port is not None
    key = await add_key(gateway, "dl-pipelined", READER)
    keyed = f"X-API-Key: {key}\r\n"
    data = (
        decision_head(extra=keyed)
        + decision_head(target="/1Integrate/rest/apikeys/1", extra=keyed)
        + decision_head(extra=keyed + "Connection: close\r\n")
    )
    answer = await exchange(gateway.decision_port, data)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"403", b"200"]
    assert answer.count(b"X-Acting-User: dl-pipelined") == 2


async def test_a_refused_head_is_answered_after_the_requests_before_it(
    gateway: RunningGateway,
) -> None:
    assert gateway.decision_port is not None
    answer = await exchange(gateway.decision_port, decision_head() + b"\x00garbage\r\n\r\n")
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"400"]
    assert answer.endswith(b'"message": "malformed HTTP request"}')


async def test_http_10_is_served_and_closed_unless_kept_alive(gateway: RunningGateway) -> None:
    assert gateway.decision_port is not None
    answer = await exchange(gateway.decision_port, decision_head(version="1.0"))
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    assert answer.count(b"HTTP/1.0 ") == 1  # then closed: the read ended
    kept = decision_head(version="1.0", extra="Connection: keep-alive\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.decision_port)
    try:
        for _ in range(2):
            writer.write(kept)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.0 200 OK\r\n")
            assert b"Connection: keep-alive\r\n" in head
    finally:
        writer.close()


@on_virtual_time
async def test_a_slow_head_is_cut_at_head_timeout_and_an_idle_one_at_keepalive(
    tmp_path: Path,
) -> None:
    # On virtual time (support/virtual_time.py) the listener's timers fire without the test
    # sleeping through them, so the two timeouts can lie far apart; the loop's clock makes
    # the lower bounds exact.
    loop = asyncio.get_running_loop()
    client = {"head_timeout": 0.3, "keepalive_timeout": 3.0}
    async with serving(tmp_path, client=client) as gateway:
        assert gateway.decision_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.decision_port)
        started = loop.time()
        try:
            writer.write(decision_head()[:20])  # slowloris: part of a head, then nothing
            assert await asyncio.wait_for(reader.read(), 3) == b""
        finally:
            writer.close()
        assert 0.3 <= loop.time() - started < 3.0  # head_timeout, not keepalive_timeout
        # A kept connection: answered, then closed after keepalive_timeout of idling.
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.decision_port)
        try:
            # The listener starts the idle clock when it writes the answer: after `asked`,
            # and before the client has read it (`answered`), by a moment on a loaded machine.
            asked = loop.time()
            writer.write(decision_head())
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            answered = loop.time()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            closed = loop.time()
            assert closed - asked >= 3.0  # keepalive_timeout, not head_timeout
            assert closed - answered < 6.0
        finally:
            writer.close()


async def test_connections_over_the_cap_get_503(tmp_path: Path) -> None:
    async with serving(tmp_path, client={"max_connections": 2}) as gateway:
        port = gateway.decision_port
        assert port is not None
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        try:
            await asyncio.sleep(0.05)
            answer = await exchange(port, decision_head())
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert b"too_many_connections" in answer
        finally:
            for _, writer in held:
                writer.close()
        await asyncio.sleep(0.1)
        answer = await exchange(port, decision_head(extra="Connection: close\r\n"))
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_the_proxy_listener_keeps_its_endpoints(gateway: RunningGateway) -> None:
    answer = await exchange(gateway.proxy_port, decision_head(extra="Connection: close\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    # The decision listener serves decisions only: nothing else is proxied there.
    assert gateway.decision_port is not None
    other = await exchange(
        gateway.decision_port,
        b"GET /1Integrate/rest/things/1 HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n",
    )
    assert other.startswith(b"HTTP/1.1 404 ")
    assert b"forward_auth_not_found" in other


async def require_redis() -> redis.asyncio.Redis:
    """A client of the test Redis; under CI=true a missing one fails, elsewhere it skips."""
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as error:
        await client.aclose()
        message = f"no Redis at {REDIS_URL} ({error}); start one with `redis-server`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return client


async def forget_limits(client: redis.asyncio.Redis) -> None:
    """Delete keygate's rate-limit counters (key ids repeat from test to test)."""
    async for name in client.scan_iter(f"{REDIS_KEY_PREFIX}*"):
        await client.delete(name)


async def test_redis_limited_decisions_are_answered_in_order_as_they_suspend(
    tmp_path: Path,
) -> None:
    """A Redis-counted limit suspends the decision (a network round trip): pipelined requests
    still get their answers in order, the last over the limit, and the connection serves on."""
    redis = await require_redis()
    await forget_limits(redis)  # counters other tests left for the same key ids
    try:
        async with serving(tmp_path, rate_limits={"redis_url": REDIS_URL}) as gateway:
            assert gateway.decision_port is not None
            runtime = gateway.runtime
            created = await key_rules.create_key(
                runtime.store,
                {
                    "name": "dl-limited",
                    "roles": READER,
                    "rate_limit": {"requests": 2, "per": "minute", "burst": 2},
                },
                runtime.policy,
                "test",
                time.time(),
            )
            await runtime.apply_own_writes()
            keyed = f"X-API-Key: {created.secret}\r\n"
            data = (
                decision_head(extra=keyed)
                + decision_head(target="/1Integrate/rest/apikeys/1", extra=keyed)
                + decision_head(extra=keyed)
                + decision_head(extra=keyed)
                + decision_head(extra="Connection: close\r\n")
            )
            answer = await exchange(gateway.decision_port, data)
    finally:
        await forget_limits(redis)
        await redis.aclose()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    # allowed, protected (refused before the limit), allowed, over the limit, anonymous.
    assert statuses == [b"200", b"403", b"200", b"403", b"200"]
    assert answer.count(b"X-Keygate-Reason: rate_limited") == 1
    assert answer.count(b"X-Acting-User: dl-limited") == 2
