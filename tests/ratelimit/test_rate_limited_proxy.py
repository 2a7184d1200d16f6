"""Per-key rate limits through the proxy: 429 with headers, the upstream sees nothing, and a
limit held across two workers through Redis."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio
from support.config import REST, create_key, policy_data, write_config
from support.http import http_request, raw_request
from support.processes import free_port, reaped, start_serve, wait_for_port
from support.workers import redis_test_url

from gateway.keys import keyformat as keys
from gateway.keys import rules as key_rules
from gateway.policy.rules import PolicyError, policy_from_data
from gateway.ratelimit.limiters import RateLimit
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.store.base import KeyChanges

REDIS_URL = redis_test_url()
LIMITED_ROLE = "limited-reader"


class CountingUpstream(asyncio.Protocol):
    """An upstream that answers 200 to every request and counts them."""

    seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            CountingUpstream.seen += 1
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[attr-defined]


def limited_policy(requests: int, per: str = "minute") -> dict[str, object]:
    policy = policy_data()
    policy["roles"][LIMITED_ROLE] = {
        "allow": [f"GET {REST}/**"],
        "rate_limit": {"requests": requests, "per": per, "burst": requests},
    }
    return policy


def test_policy_rate_limits_parse_and_the_most_generous_role_wins() -> None:
    policy = policy_from_data(
        {
            "roles": {
                "slow": {"rate_limit": {"requests": 10, "per": "minute"}},
                "fast": {"rate_limit": {"requests": 5, "per": "second", "burst": 2}},
                "plain": {"allow": ["GET /x"]},
                "inherits": {"include": ["slow"]},
            }
        },
        "t",
    )
    assert policy.rate_limit_for(frozenset({"slow"})) == RateLimit(10, "minute", 10)
    assert policy.rate_limit_for(frozenset({"slow", "fast"})) == RateLimit(5, "second", 2)
    assert policy.rate_limit_for(frozenset({"slow", "plain"})) == RateLimit(10, "minute", 10)
    assert policy.rate_limit_for(frozenset({"inherits"})) == RateLimit(10, "minute", 10)
    assert policy.rate_limit_for(frozenset({"plain"})) is None


def test_bad_rate_limits_are_reported_with_their_location() -> None:
    with pytest.raises(PolicyError) as refused:
        policy_from_data(
            {"roles": {"r": {"rate_limit": {"requests": 0, "per": "week", "burst": 1, "x": 1}}}},
            "p.yaml",
        )
    assert refused.value.problems == [
        "p.yaml: role 'r': rate_limit: unknown key 'x'",
        "p.yaml: role 'r': rate_limit: requests must be an integer from 1 to 10^9",
        "p.yaml: role 'r': rate_limit: per must be second, minute or hour",
    ]


@pytest.fixture
async def limited_gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(CountingUpstream, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    config = write_config(tmp_path / "limited", url, policy=limited_policy(3))
    try:
        async with running_gateway(load_settings(config)) as running:
            yield running
    finally:
        upstream.close()


async def test_over_the_limit_answers_429_and_the_upstream_sees_nothing(
    limited_gateway: RunningGateway, tmp_path: Path
) -> None:
    secret = await create_key(limited_gateway.runtime.settings.path, "bursty", [LIMITED_ROLE])
    await limited_gateway.runtime.apply_own_writes()
    CountingUpstream.seen = 0
    statuses = []
    last = None
    for _ in range(5):
        last = await raw_request(
            limited_gateway.proxy_port,
            http_request("GET", f"{REST}/sessions", [("X-API-Key", secret)]),
        )
        statuses.append(last.status)
    assert statuses == [200, 200, 200, 429, 429]
    assert CountingUpstream.seen == 3
    assert last is not None
    assert last.json()["error"] == "rate_limited"
    assert last.header_values("RateLimit-Limit") == ["3;w=60"]
    assert last.header_values("RateLimit-Remaining") == ["0"]
    assert int(last.header_values("Retry-After")[0]) >= 1


@pytest.mark.slow
async def test_two_workers_hold_one_limit_through_redis(tmp_path: Path) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as error:
        message = f"no Redis at {REDIS_URL} ({error}); start one with `redis-server`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(CountingUpstream, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    port = free_port()
    config = write_config(
        tmp_path / "fleet",
        url,
        listen_port=port,
        admin_port=free_port(),
        policy=limited_policy(10),
        extra={"rate_limits": {"redis_url": REDIS_URL}},
    )
    secret = await create_key(config, "shared", [LIMITED_ROLE])
    serve = start_serve(config, port, tmp_path / "fleet.log", "--workers", "2")
    CountingUpstream.seen = 0
    try:
        with reaped(serve):
            await wait_for_port(port, process=serve.process)
            await asyncio.sleep(1.0)  # both workers listening
            statuses = [
                (
                    await raw_request(
                        port, http_request("GET", f"{REST}/sessions", [("X-API-Key", secret)])
                    )
                ).status
                for _ in range(30)
            ]
            assert serve.stop() == 0, serve.log_text()
            # Read after the stop: access lines are written in batches (and at shutdown).
            log = serve.log_text()
            pids = {line.split()[2] for line in log.splitlines() if "keygate.access" in line}
    finally:
        upstream.close()
        async for key in client.scan_iter("keygate:rl:*"):
            await client.delete(key)
        await client.aclose()
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20
    assert CountingUpstream.seen == 10
    assert len(pids) == 2, "both workers answered (the limit was shared, not per worker)"


async def keyed_statuses(gateway: RunningGateway, secret: str, count: int) -> list[int]:
    """Statuses of `count` sequential keyed requests through the proxy."""
    statuses = []
    for _ in range(count):
        response = await raw_request(
            gateway.proxy_port, http_request("GET", f"{REST}/sessions", [("X-API-Key", secret)])
        )
        statuses.append(response.status)
    return statuses


async def test_a_keys_own_rate_limit_takes_precedence_over_its_roles(
    limited_gateway: RunningGateway,
) -> None:
    runtime = limited_gateway.runtime
    generous = await key_rules.create_key(
        runtime.store,
        {
            "name": "generous",
            "roles": [LIMITED_ROLE],
            "rate_limit": {"requests": 6, "per": "minute"},
        },
        runtime.policy,
        "test",
        time.time(),
    )
    strict = await key_rules.create_key(
        runtime.store,
        {"name": "strict", "roles": [LIMITED_ROLE], "rate_limit": {"requests": 1, "per": "hour"}},
        runtime.policy,
        "test",
        time.time(),
    )
    await runtime.apply_own_writes()
    assert await keyed_statuses(limited_gateway, generous.secret, 8) == [200] * 6 + [429] * 2
    refused = await raw_request(
        limited_gateway.proxy_port,
        http_request("GET", f"{REST}/sessions", [("X-API-Key", generous.secret)]),
    )
    assert refused.header_values("RateLimit-Limit") == ["6;w=60"]
    assert await keyed_statuses(limited_gateway, strict.secret, 2) == [200, 429]

    # Cleared (PATCH rate_limit: null), the role's default (3 per minute) applies again.
    cleared = await runtime.store.update_key(
        strict.row.id, KeyChanges(clear_rate_limit=True), "test"
    )
    assert cleared.rate_limit is None
    await runtime.apply_own_writes()
    record = runtime.table.lookup(keys.digest(strict.secret))
    assert record is not None and record.rate_limit is None
    # The role's limit decides now (its bucket's state carries over: still used up).
    again = await raw_request(
        limited_gateway.proxy_port,
        http_request("GET", f"{REST}/sessions", [("X-API-Key", strict.secret)]),
    )
    assert again.status == 429
    assert again.header_values("RateLimit-Limit") == ["3;w=60"]


# --------------------------------------------------------- issue 19: clocks, workers, floods


async def test_a_backwards_wall_clock_step_does_not_refuse_active_keys(
    limited_gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = await create_key(limited_gateway.runtime.settings.path, "steady", [LIMITED_ROLE])
    await limited_gateway.runtime.apply_own_writes()
    assert await keyed_statuses(limited_gateway, secret, 1) == [200]
    stepped = time.time
    monkeypatch.setattr(time, "time", lambda: stepped() - 3600)  # NTP steps the clock back
    # Two of the three requests of the burst are left: a wall-clock limiter refused both.
    assert await keyed_statuses(limited_gateway, secret, 3) == [200, 200, 429]


def worker_pids(log: str) -> set[str]:
    """The pids that wrote access lines (one per worker that answered)."""
    return {line.split()[2] for line in log.splitlines() if "keygate.access" in line}


@pytest.mark.slow
async def test_two_local_workers_never_admit_more_than_a_limit_of_one(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(CountingUpstream, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    port = free_port()
    config = write_config(
        tmp_path / "local",
        url,
        listen_port=port,
        admin_port=free_port(),
        policy=limited_policy(1, "hour"),
    )
    secret = await create_key(config, "once", [LIMITED_ROLE])
    serve = start_serve(config, port, tmp_path / "local.log", "--workers", "2")
    CountingUpstream.seen = 0
    try:
        with reaped(serve):
            await wait_for_port(port, process=serve.process)
            await asyncio.sleep(1.0)  # both workers listening
            statuses = [
                (
                    await raw_request(
                        port, http_request("GET", f"{REST}/sessions", [("X-API-Key", secret)])
                    )
                ).status
                for _ in range(40)
            ]
            assert serve.stop() == 0, serve.log_text()
            pids = worker_pids(serve.log_text())
    finally:
        upstream.close()
    assert len(pids) == 2, "both workers answered"
    assert statuses.count(200) == 1, statuses
    assert CountingUpstream.seen == 1


FLOOD_REQUESTS = 2000  # requests of the flooding key
FLOOD_CONNECTIONS = 200  # concurrent keep-alive connections sending them
FLOOD_SECONDS = 20.0  # the flood stops by itself after this many seconds
CALM_REQUESTS = 20  # requests of an unrelated key sent one by one during the flood


async def flood(port: int, secret: str, total: int, connections: int) -> list[int]:
    """Send `total` keyed GETs over `connections` keep-alive connections; return the statuses."""
    request = http_request(
        "GET", f"{REST}/sessions", [("X-API-Key", secret)], connection="keep-alive"
    )
    statuses: list[int] = []
    left = [total]

    async def one_connection() -> None:
        reader = writer = None
        while left[0] > 0:
            left[0] -= 1
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            statuses.append(int(lines[0].split(" ", 2)[1]))
            fields = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            await reader.readexactly(int(fields.get("content-length", "0")))
            if fields.get("connection", "").lower() == "close":
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    await asyncio.wait_for(
        asyncio.gather(*(one_connection() for _ in range(connections))), FLOOD_SECONDS
    )
    return statuses


def flood_policy() -> dict[str, object]:
    """A role limited to 5 per minute, burst 3, and a generous one for an unrelated key."""
    policy = policy_data()
    policy["roles"][LIMITED_ROLE] = {
        "allow": [f"GET {REST}/**"],
        "rate_limit": {"requests": 5, "per": "minute", "burst": 3},
    }
    policy["roles"]["calm-reader"] = {
        "allow": [f"GET {REST}/**"],
        "rate_limit": {"requests": 1000, "per": "minute", "burst": 100},
    }
    return policy


@pytest.mark.slow
@pytest.mark.parametrize("fail_open", [True, False], ids=["fail_open", "fail_closed"])
async def test_a_flood_holds_its_shared_limit_and_refuses_no_one_else(
    tmp_path: Path, fail_open: bool
) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as error:
        message = f"no Redis at {REDIS_URL} ({error}); start one with `redis-server`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(CountingUpstream, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    port = free_port()
    config = write_config(
        tmp_path / "flood",
        url,
        listen_port=port,
        admin_port=free_port(),
        policy=flood_policy(),
        extra={
            "rate_limits": {"redis_url": REDIS_URL, "fail_open": fail_open},
            "log": {"level": "warning", "access_log": False},
        },
    )
    flooding = await create_key(config, "flooding", [LIMITED_ROLE])
    calm = await create_key(config, "calm", ["calm-reader"])
    serve = start_serve(config, port, tmp_path / "flood.log", "--workers", "2")
    try:
        with reaped(serve):
            await wait_for_port(port, process=serve.process)
            await asyncio.sleep(1.0)  # both workers listening

            async def calm_statuses() -> list[int]:
                out = []
                for _ in range(CALM_REQUESTS):
                    response = await raw_request(
                        port, http_request("GET", f"{REST}/sessions", [("X-API-Key", calm)])
                    )
                    out.append(response.status)
                    await asyncio.sleep(0.02)
                return out

            started = time.monotonic()
            flooded, calm_seen = await asyncio.gather(
                flood(port, flooding, FLOOD_REQUESTS, FLOOD_CONNECTIONS), calm_statuses()
            )
            elapsed = time.monotonic() - started
            assert serve.stop() == 0, serve.log_text()
    finally:
        upstream.close()
        async for key in client.scan_iter("keygate:rl:*"):
            await client.delete(key)
        await client.aclose()
    assert len(flooded) == FLOOD_REQUESTS
    assert set(flooded) <= {200, 429}, sorted(set(flooded))
    # The burst of 3, plus what 5 per minute refills while the flood lasts.
    assert flooded.count(200) <= 3 + int(elapsed * 5 / 60) + 1, (flooded.count(200), elapsed)
    assert calm_seen == [200] * CALM_REQUESTS, calm_seen


async def test_metrics_show_a_failing_rate_limit_store(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(CountingUpstream, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    config = write_config(
        tmp_path / "down",
        url,
        policy=limited_policy(3),
        extra={"rate_limits": {"redis_url": "redis://127.0.0.1:1/0"}},  # nothing listens
    )
    try:
        async with running_gateway(load_settings(config)) as running:
            secret = await create_key(config, "unmetered", [LIMITED_ROLE])
            await running.runtime.apply_own_writes()
            # Failing open, the worker still holds the key to its whole limit.
            assert await keyed_statuses(running, secret, 4) == [200, 200, 200, 429]
            assert running.admin_port is not None
            metrics = await raw_request(running.admin_port, http_request("GET", "/metrics"))
    finally:
        upstream.close()
    text = metrics.body.decode()
    assert "keygate_ratelimit_store_failures_total 1.0" in text  # the breaker skipped Redis
    assert "keygate_ratelimit_store_up 0.0" in text
