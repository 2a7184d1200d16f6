"""Per-key rate limits: the GCRA decision, the local limiter, and the shared Redis limiter.

The Redis tests use the real Redis on loopback (KEYGATE_TEST_REDIS, default
redis://127.0.0.1:6379/15); under CI=true a missing Redis fails them, elsewhere it skips them
with a message saying how to start one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from support.workers import redis_test_url

from gateway.ratelimit.limiters import (
    LocalLimiter,
    RateLimit,
    Share,
    decide,
    headers,
    redis_limiter,
    share,
)

REDIS_URL = redis_test_url()
TEN_PER_SECOND = RateLimit(10, "second", 10)
# Redis keeps its own time: a test of counting alone uses a limit that no test run outlasts.
TEN_PER_MINUTE = RateLimit(10, "minute", 10)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def admitted(limit: RateLimit, times: list[float]) -> list[bool]:
    tat = 0.0
    out = []
    for now in times:
        decision, tat = decide(limit, tat, now)
        out.append(decision.allowed)
    return out


def test_a_full_bucket_admits_the_burst_then_refuses() -> None:
    limit = RateLimit(10, "second", 5)
    assert admitted(limit, [100.0] * 7) == [True] * 5 + [False] * 2


def test_the_bucket_refills_at_the_rate() -> None:
    limit = RateLimit(10, "second", 1)  # one every 0.1 s, no burst
    assert admitted(limit, [0.0, 0.05, 0.1, 0.15, 0.2]) == [True, False, True, False, True]


def test_a_refusal_says_when_to_retry_and_headers_follow() -> None:
    limit = RateLimit(60, "minute", 2)
    tat = 0.0
    for _ in range(2):
        _, tat = decide(limit, tat, 10.0)
    refused, after = decide(limit, tat, 10.0)
    assert not refused.allowed and refused.remaining == 0
    assert after == tat  # a refusal uses nothing up
    assert refused.retry_after == pytest.approx(1.0)
    named = dict(headers(limit, refused))
    assert named["RateLimit-Limit"] == "60;w=60"
    assert named["RateLimit-Remaining"] == "0"
    assert named["Retry-After"] == "1"


def test_remaining_counts_down_to_zero() -> None:
    limit = RateLimit(5, "second", 5)
    tat = 0.0
    remaining = []
    for _ in range(5):
        decision, tat = decide(limit, tat, 50.0)
        remaining.append(decision.remaining)
    assert remaining == [4, 3, 2, 1, 0]


def test_each_process_enforces_its_share() -> None:
    # 100/minute burst 20 on two workers: 10 at once and 50/minute each.
    assert share(RateLimit(100, "minute", 20), 2) == Share(1.2, 10)
    # Burst 3 on two workers: the first gets 2 (and two thirds of the rate), the second 1.
    assert share(RateLimit(6, "minute", 3), 2, 0) == Share(15.0, 2)
    assert share(RateLimit(6, "minute", 3), 2, 1) == Share(30.0, 1)
    # A burst smaller than the worker count: the workers past it get nothing (they refuse).
    assert share(RateLimit(1, "hour", 1), 4, 0) == Share(3600.0, 1)
    assert share(RateLimit(1, "hour", 1), 4, 3).burst == 0


def test_local_limiter_keeps_keys_apart() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    limit = RateLimit(2, "second", 2)
    assert [limiter.check_now(1, limit).allowed for _ in range(3)] == [True, True, False]
    assert limiter.check_now(2, limit).allowed  # another key has its own bucket
    clock.now += 0.5
    assert limiter.check_now(1, limit).allowed


# --------------------------------------------------------------------- Redis


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The test Redis, reachable, with this run's keys removed afterwards."""
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (redis.RedisError, OSError) as error:
        await client.aclose()
        message = f"no Redis at {REDIS_URL} ({error}); start one with `redis-server`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield REDIS_URL
    finally:
        async for key in client.scan_iter("keygate:rl:*"):
            await client.delete(key)
        await client.aclose()


async def test_two_redis_limiters_share_one_count(redis_url: str) -> None:
    clock = Clock()
    first = redis_limiter(redis_url, clock)
    second = redis_limiter(redis_url, clock)  # as another worker or instance would
    key_id = secrets.randbelow(1 << 30)
    try:
        results = []
        for index in range(12):
            limiter = first if index % 2 else second
            results.append((await limiter.check(key_id, TEN_PER_MINUTE)).allowed)
        assert results == [True] * 10 + [False] * 2
        # Redis keeps the time (its TIME): an interval of 0.2 s refills one request.
        quick = RateLimit(5, "second", 1)
        assert (await first.check(key_id + 1, quick)).allowed
        assert not (await second.check(key_id + 1, quick)).allowed
        await asyncio.sleep(0.25)
        assert (await second.check(key_id + 1, quick)).allowed
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("fail_open", [True, False])
async def test_an_unreachable_redis_follows_the_failure_policy_and_logs_once(
    fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keygate.ratelimit")
    # Worker 0 of 2: failing open it holds the key to the whole limit (the local floor),
    # failing closed to its share (5 of the burst of 10).
    limiter = redis_limiter("redis://127.0.0.1:1/0", Clock(), fail_open=fail_open, processes=2)
    try:
        decisions = [(await limiter.check(7, TEN_PER_SECOND)).allowed for _ in range(12)]
        assert not limiter.reachable
    finally:
        await limiter.close()
    admitted = 10 if fail_open else 5
    assert decisions == [True] * admitted + [False] * (12 - admitted)
    assert limiter.failures == 1  # the breaker skips Redis after the first failure
    warnings = [r for r in caplog.records if r.name == "keygate.ratelimit"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_the_proxys_fast_admission_decides_exactly_as_check_now(processes: int) -> None:
    fast_clock, slow_clock = Clock(), Clock()
    fast, slow = LocalLimiter(fast_clock, processes), LocalLimiter(slow_clock, processes)
    limits = [RateLimit(5, "second", 3), RateLimit(2, "minute", 2)]
    steps = [0.0, 0.01, 0.05, 0.2, 0.0, 0.0, 0.7, 0.3, 0.0, 30.0, 0.01, 0.0] * 3
    for index, step in enumerate(steps):
        fast_clock.now += step
        slow_clock.now += step
        limit = limits[index % 2]
        key = index % 3
        expected = slow.check_now(key, limit)
        got = fast.admit_now(key, limit)
        if expected.allowed:
            assert got is None
        else:
            assert got == expected


def test_fast_admission_keeps_a_limit_per_object_even_when_ids_are_reused() -> None:
    limiter = LocalLimiter(Clock(), 2)
    assert limiter.admit_now(1, RateLimit(1, "hour", 1)) is None  # share: 1 per hour
    refused = limiter.admit_now(1, RateLimit(1, "hour", 1))  # a new, equal object
    assert refused is not None and not refused.allowed
    assert limiter.admit_now(2, RateLimit(10, "second", 10)) is None


# --------------------------------------------------------- issue 19: shares, clocks, outages

SHARE_LIMITS = [
    RateLimit(1, "hour", 1),
    RateLimit(5, "minute", 3),
    RateLimit(10, "second", 7),
    RateLimit(100, "minute", 20),
    RateLimit(3, "second", 1),
]


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
@pytest.mark.parametrize("limit", SHARE_LIMITS, ids=str)
def test_the_workers_shares_never_admit_more_than_the_limit(
    processes: int, limit: RateLimit
) -> None:
    clock = Clock()
    start = clock.now
    workers = [LocalLimiter(clock, processes, worker) for worker in range(processes)]
    admitted = 0
    # Every worker is flooded at every step: the total is what the shares allow at most.
    for step in range(200):
        for limiter in workers:
            for _ in range(3):
                admitted += limiter.check_now(1, limit).allowed
        elapsed = clock.now - start
        assert admitted <= limit.burst + elapsed / limit.interval + 1e-9, (step, admitted)
        clock.now += limit.interval / 4
    # ...and the shares add up to the whole limit: the fleet is not stricter than asked either.
    elapsed = clock.now - start
    assert admitted >= limit.burst + elapsed / limit.interval - processes - 1


def test_a_backwards_clock_step_leaves_the_local_default_on_the_monotonic_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limiter = LocalLimiter()  # the default clock is the monotonic one, never the wall clock
    limit = RateLimit(3, "minute", 3)
    assert limiter.check_now(1, limit).allowed
    stepped = time.time
    monkeypatch.setattr(time, "time", lambda: stepped() - 3600)  # the wall clock steps back
    assert limiter.check_now(1, limit).allowed


async def test_the_redis_script_keeps_time_by_redis_not_by_the_client(redis_url: str) -> None:
    ahead, behind = Clock(), Clock()
    ahead.now += 3600.0  # one worker's wall clock an hour off
    first = redis_limiter(redis_url, ahead)
    second = redis_limiter(redis_url, behind)
    key_id = secrets.randbelow(1 << 30)
    try:
        results = []
        for index in range(12):
            limiter = first if index % 2 else second
            results.append((await limiter.check(key_id, TEN_PER_MINUTE)).allowed)
        assert results == [True] * 10 + [False] * 2
    finally:
        await first.close()
        await second.close()


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A TCP server on loopback that accepts connections and never answers (a hung Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_hung_redis_is_waited_for_once_not_on_every_check(silent_redis: str) -> None:
    limiter = redis_limiter(silent_redis, Clock())
    limit = RateLimit(1000, "second", 1000)
    try:
        started = time.monotonic()
        decisions = [await limiter.check(key, limit) for key in range(40)]
        elapsed = time.monotonic() - started
    finally:
        await limiter.close()
    assert all(decision.allowed for decision in decisions)  # fail open, within the limit
    # The old limiter waited its 50 ms timeout on every check (2 s); the breaker waits once.
    assert elapsed < 0.5, elapsed
