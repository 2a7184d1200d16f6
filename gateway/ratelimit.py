"""Per-key rate limits: the GCRA decision (pure), kept in this process or shared through Redis.

GCRA (the generic cell rate algorithm, as in ATM networks and redis-cell) is a token bucket
that keeps one number per key: the theoretical arrival time (TAT) of the next request. A
request at `now` is admitted when `TAT - now <= burst_window`; admitting it moves TAT one
emission interval (`period / requests`) further. The decision and the headers it yields are
pure functions here; the local limiter keeps TATs in a dict, the Redis limiter runs the same
arithmetic atomically in a Lua script so every worker and instance shares one count.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

log = logging.getLogger("keygate.ratelimit")

Period = Literal["second", "minute", "hour"]
PERIOD_SECONDS: dict[str, float] = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
# Most distinct keys whose local state is kept (least recently limited dropped first).
LOCAL_STATE_LIMIT = 100_000
# Seconds a Redis call may take before the request is decided by the failure policy.
REDIS_TIMEOUT = 0.05
REDIS_KEY_PREFIX = "keygate:rl:"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`requests` per `per`, with up to `burst` at once (burst >= 1; default = requests)."""

    requests: int
    per: Period
    burst: int

    @property
    def interval(self) -> float:
        """Seconds one request uses up (the emission interval)."""
        return PERIOD_SECONDS[self.per] / self.requests

    def header_value(self) -> str:
        """The `RateLimit-Limit` value: the limit and its window (RFC draft `;w=` form)."""
        return f"{self.requests};w={int(PERIOD_SECONDS[self.per])}"


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request is admitted, and what the RateLimit headers say about the key."""

    allowed: bool
    remaining: int
    reset: float  # seconds until the bucket is full again
    retry_after: float  # seconds until one request would be admitted (0 when allowed)


def decide(limit: RateLimit, tat: float, now: float) -> tuple[Decision, float]:
    """Return the decision for one request at `now` given the key's TAT, and the new TAT."""
    interval = limit.interval
    burst_window = interval * (limit.burst - 1)
    tat = max(tat, now)
    if tat - now > burst_window:  # one more would exceed the burst
        retry_after = tat - now - burst_window
        remaining = 0
        return Decision(False, remaining, tat - now, retry_after), tat
    new_tat = tat + interval
    return Decision(
        True, _remaining(limit, burst_window, new_tat - now), new_tat - now, 0.0
    ), new_tat


def _remaining(limit: RateLimit, burst_window: float, ahead: float) -> int:
    """Requests still admitted at once when TAT is `ahead` seconds in the future."""
    # The epsilon keeps float noise (0.8 - 0.2 = 0.6000000000000001) from losing one.
    slots = math.floor((burst_window - ahead) / limit.interval + 1e-9) + 1
    return max(0, min(slots, limit.burst))


def headers(limit: RateLimit, decision: Decision) -> list[tuple[str, str]]:
    """The RateLimit-* headers (and Retry-After when refused) for an answer."""
    out = [
        ("RateLimit-Limit", limit.header_value()),
        ("RateLimit-Remaining", str(decision.remaining)),
        ("RateLimit-Reset", str(math.ceil(decision.reset))),
    ]
    if not decision.allowed:
        out.append(("Retry-After", str(max(1, math.ceil(decision.retry_after)))))
    return out


def share(limit: RateLimit, processes: int) -> RateLimit:
    """The part of a limit one of `processes` local limiters enforces (never below 1)."""
    if processes <= 1:
        return limit
    return RateLimit(
        max(1, math.ceil(limit.requests / processes)),
        limit.per,
        max(1, math.ceil(limit.burst / processes)),
    )


class Limiter(Protocol):
    """Decides whether one more request of a key is admitted."""

    async def check(self, key_id: int, limit: RateLimit) -> Decision:
        """Count one request of `key_id` against `limit` and return the decision."""
        ...

    async def close(self) -> None:
        """Release what the limiter holds."""
        ...


class LocalLimiter:
    """GCRA state in this process's memory (no I/O): each process enforces its own share."""

    def __init__(self, clock: Callable[[], float], processes: int = 1) -> None:
        self._clock = clock
        self._processes = processes
        self._tat: dict[int, float] = {}
        # id(limit) -> (limit, its share, interval, burst window), so the hot path neither
        # builds the share nor hashes the limit; the limit is held so its id stays its own.
        self._shares: dict[int, tuple[RateLimit, RateLimit, float, float]] = {}

    def admit_now(self, key_id: int, limit: RateLimit) -> Decision | None:
        """Count one request and return None when admitted, else the refusal's Decision.

        The hot path: an admitted request builds no object (the same arithmetic as decide()).
        """
        known = self._shares.get(id(limit))
        if known is None or known[0] is not limit:
            known = self._remember(limit)
        _, shared, interval, window = known
        now = self._clock()
        tats = self._tat
        tat = tats.get(key_id, now)
        if tat < now:
            tat = now
        if tat - now > window:
            return decide(shared, tat, now)[0]
        if key_id not in tats and len(tats) >= LOCAL_STATE_LIMIT:
            self._forget_stale(now)
        tats[key_id] = tat + interval
        return None

    def _remember(self, limit: RateLimit) -> tuple[RateLimit, RateLimit, float, float]:
        """Compute and keep this process's share of a limit (bounded like the TAT table)."""
        if len(self._shares) >= LOCAL_STATE_LIMIT:
            self._shares.clear()
        shared = share(limit, self._processes)
        known = (limit, shared, shared.interval, shared.interval * (shared.burst - 1))
        self._shares[id(limit)] = known
        return known

    def _forget_stale(self, now: float) -> None:
        """Make room in a full TAT table: drop refilled buckets, else the oldest one."""
        tats = self._tat
        for stale in [k for k, t in tats.items() if t <= now]:
            del tats[stale]
        if len(tats) >= LOCAL_STATE_LIMIT:
            del tats[next(iter(tats))]

    def check_now(self, key_id: int, limit: RateLimit) -> Decision:
        """The synchronous decision (hot path: a dict lookup and a little arithmetic)."""
        limit = share(limit, self._processes)
        now = self._clock()
        tats = self._tat
        decision, tat = decide(limit, tats.get(key_id, now), now)
        if len(tats) >= LOCAL_STATE_LIMIT and key_id not in tats:
            # Full: forget keys whose bucket has refilled (they decide the same afresh).
            for stale in [k for k, t in tats.items() if t <= now]:
                del tats[stale]
            if len(tats) >= LOCAL_STATE_LIMIT:
                del tats[next(iter(tats))]
        tats[key_id] = tat
        return decision

    async def check(self, key_id: int, limit: RateLimit) -> Decision:
        """Count one request of `key_id` against this process's share of `limit`."""
        return self.check_now(key_id, limit)

    async def close(self) -> None:
        """Nothing to release."""


# KEYS[1] the key's TAT; ARGV: interval, burst window, now (all seconds, as strings). The
# same arithmetic as decide(), atomically: returns {allowed, new or current TAT}.
_GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > window then
  return {0, tostring(tat)}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, tostring(new_tat)}
"""


class RedisLimiter:
    """GCRA state in Redis, shared by every worker and instance; fails open or closed."""

    def __init__(
        self,
        client: Any,
        clock: Callable[[], float],
        *,
        fail_open: bool = True,
        timeout: float = REDIS_TIMEOUT,
    ) -> None:
        self._redis = client
        self._clock = clock
        self._fail_open = fail_open
        self._timeout = timeout
        self._script = client.register_script(_GCRA_SCRIPT)
        self.failures = 0  # Redis calls that failed (counted for /metrics)
        self._down = False

    async def check(self, key_id: int, limit: RateLimit) -> Decision:
        """Count one request of `key_id` in Redis; on a Redis failure apply the policy."""
        now = self._clock()
        interval = limit.interval
        window = interval * (limit.burst - 1)
        try:
            async with asyncio.timeout(self._timeout):
                allowed, tat_text = await self._script(
                    keys=[f"{REDIS_KEY_PREFIX}{key_id}"],
                    args=[repr(interval), repr(window), repr(now)],
                )
        except Exception as error:  # redis.RedisError, OSError, TimeoutError
            self.failures += 1
            if not self._down:
                self._down = True
                log.warning(
                    "rate-limit store unreachable (%s); %s requests until it is back",
                    type(error).__name__,
                    "admitting" if self._fail_open else "refusing",
                )
            if self._fail_open:
                return Decision(True, limit.burst, 0.0, 0.0)
            return Decision(False, 0, interval, interval)
        if self._down:
            self._down = False
            log.warning("rate-limit store reachable again")
        tat = float(tat_text)
        if allowed:
            return Decision(True, _remaining(limit, window, tat - now), tat - now, 0.0)
        return Decision(False, 0, tat - now, tat - now - window)

    async def close(self) -> None:
        """Close the Redis connection pool."""
        await self._redis.aclose()


def redis_limiter(url: str, clock: Callable[[], float], *, fail_open: bool = True) -> RedisLimiter:
    """Return a RedisLimiter on `url` (redis-py imported only when a Redis URL is configured)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    return RedisLimiter(client, clock, fail_open=fail_open)
