"""Per-key rate limits: the GCRA decision (pure), kept in this process or shared through Redis.

GCRA (the generic cell rate algorithm, as in ATM networks and redis-cell) is a token bucket
that keeps one number per key: the theoretical arrival time (TAT) of the next request. A
request at `now` is admitted when `TAT - now <= burst_window`; admitting it moves TAT one
emission interval (`period / requests`) further. The decision and the headers it yields are
pure functions here; the local limiter keeps TATs in a dict (monotonic clock), the Redis
limiter runs the same arithmetic atomically in a Lua script on Redis's clock so every worker
and instance shares one count, behind a local floor and a breaker so that neither a key's
flood nor a Redis outage lets a worker admit more than the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

log = logging.getLogger("keygate.ratelimit")

Period = Literal["second", "minute", "hour"]
PERIOD_SECONDS: dict[str, float] = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
# Most distinct keys whose local state is kept (least recently limited dropped first).
LOCAL_STATE_LIMIT = 100_000
# Seconds Redis may take to answer (from when a batch of checks is sent; measured off the
# event loop) before the requests are decided by the failure policy.
REDIS_TIMEOUT = 0.05
# Seconds a request waits on the event loop for the Redis thread at most (a backstop: the
# thread answers every check within about 2 * REDIS_TIMEOUT).
REDIS_ANSWER_LIMIT = 1.0
# Seconds the breaker skips Redis after a failed check before trying it again.
REDIS_RETRY_AFTER = 1.0
# Most checks sent to Redis in one pipelined round trip.
REDIS_BATCH_LIMIT = 256
# Seconds close() waits for the Redis thread to finish what is queued.
REDIS_CLOSE_WAIT = 1.0
REDIS_KEY_PREFIX = "keygate:rl:"
# Fraction of an interval a TAT may pass the burst window by and still admit: float
# rounding (1000.0 + 0.1 * 9 - 1000.0 > 0.9) must not lose a request of the burst.
SLACK = 1e-3


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


class Cell(Protocol):
    """A GCRA bucket: `burst` requests at once, one more every `interval` seconds."""

    @property
    def interval(self) -> float:
        """Seconds one request uses up."""
        ...

    @property
    def burst(self) -> int:
        """Requests admitted at once."""
        ...


@dataclass(frozen=True, slots=True)
class Share:
    """One worker's part of a limit: `burst` at once (may be 0), one more every `interval`."""

    interval: float
    burst: int


def decide(limit: Cell, tat: float, now: float) -> tuple[Decision, float]:
    """Return the decision for one request at `now` given the key's TAT, and the new TAT."""
    interval = limit.interval
    burst_window = interval * (limit.burst - 1)
    tat = max(tat, now)
    if tat - now > burst_window + interval * SLACK:  # one more would exceed the burst
        retry_after = tat - now - burst_window
        remaining = 0
        return Decision(False, remaining, tat - now, retry_after), tat
    new_tat = tat + interval
    return Decision(
        True, _remaining(limit, burst_window, new_tat - now), new_tat - now, 0.0
    ), new_tat


def _remaining(limit: Cell, burst_window: float, ahead: float) -> int:
    """Requests still admitted at once when TAT is `ahead` seconds in the future."""
    # The slack keeps float noise (0.8 - 0.2 = 0.6000000000000001) from losing one.
    slots = math.floor((burst_window - ahead) / limit.interval + SLACK) + 1
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


def share(limit: RateLimit, processes: int, worker: int = 0) -> Share:
    """Worker `worker`'s part of a limit when `processes` local limiters enforce it.

    The bursts are floored and the remainder goes to the first workers, and each worker's
    rate is its part of the burst, so the parts add up to exactly the limit: a burst smaller
    than the worker count leaves some workers a part of 0 (they refuse the key).
    """
    if processes <= 1:
        return Share(limit.interval, limit.burst)
    burst = limit.burst // processes + (1 if worker < limit.burst % processes else 0)
    if burst == 0:
        # Never admits (its burst window is negative); a refusal says to retry once the
        # whole bucket could have refilled.
        return Share(limit.interval * limit.burst, 0)
    return Share(limit.interval * limit.burst / burst, burst)


class Limiter(Protocol):
    """Decides whether one more request of a key is admitted."""

    async def check(self, key_id: int, limit: RateLimit) -> Decision:
        """Count one request of `key_id` against `limit` and return the decision."""
        ...

    async def close(self) -> None:
        """Release what the limiter holds."""
        ...


class LocalLimiter:
    """GCRA state in this process's memory (no I/O): each process enforces its own share.

    Time comes from a monotonic clock (a wall-clock step must not refill or empty buckets).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        processes: int = 1,
        worker: int = 0,
    ) -> None:
        self._clock = clock
        self._processes = processes
        self._worker = worker
        self._tat: dict[int, float] = {}
        # id(limit) -> (limit, its share, interval, burst window), so the hot path neither
        # builds the share nor hashes the limit; the limit is held so its id stays its own.
        self._shares: dict[int, tuple[RateLimit, Share, float, float]] = {}

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

    def refund(self, key_id: int, limit: RateLimit) -> None:
        """Give back one admission of `key_id` (a request admitted here that was not sent)."""
        tat = self._tat.get(key_id)
        if tat is not None:
            self._tat[key_id] = tat - self._share_of(limit)[2]

    def _share_of(self, limit: RateLimit) -> tuple[RateLimit, Share, float, float]:
        """This process's share of `limit`, from the cache."""
        known = self._shares.get(id(limit))
        if known is None or known[0] is not limit:
            known = self._remember(limit)
        return known

    def _remember(self, limit: RateLimit) -> tuple[RateLimit, Share, float, float]:
        """Compute and keep this process's share of a limit (bounded like the TAT table)."""
        if len(self._shares) >= LOCAL_STATE_LIMIT:
            self._shares.clear()
        shared = share(limit, self._processes, self._worker)
        interval = shared.interval
        known = (limit, shared, interval, interval * (shared.burst - 1 + SLACK))
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
        shared = self._share_of(limit)[1]
        now = self._clock()
        tats = self._tat
        decision, tat = decide(shared, tats.get(key_id, now), now)
        if len(tats) >= LOCAL_STATE_LIMIT and key_id not in tats:
            self._forget_stale(now)
        tats[key_id] = tat
        return decision

    async def check(self, key_id: int, limit: RateLimit) -> Decision:
        """Count one request of `key_id` against this process's share of `limit`."""
        return self.check_now(key_id, limit)

    async def close(self) -> None:
        """Nothing to release."""


# KEYS[1] the key's TAT; ARGV: interval, burst window plus SLACK (seconds, as strings). The
# same arithmetic as decide(), atomically, on Redis's own clock (TIME), so a worker whose clock is
# off cannot refill or empty a bucket: returns {allowed, seconds the TAT is ahead of now}.
_GCRA_SCRIPT = """
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > window then
  return {0, string.format('%.6f', tat - now)}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', new_tat),
  'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, string.format('%.6f', new_tat - now)}
"""
_GCRA_SHA = hashlib.sha1(_GCRA_SCRIPT.encode()).hexdigest()

# One check waiting for the Redis thread: the loop and future to answer on, the Redis key,
# interval and burst window (as strings).
_Pending = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", str, str, str]
_STOP = None  # queued to end the thread


class _RedisChannel:
    """A thread that sends checks to Redis in pipelined batches, timed on its own clock.

    The timeout is the socket's, from when a batch is sent, measured by the kernel: a busy
    event loop (a flood of requests) delays only when the answer is read, never whether
    Redis answered in time. A check waits behind at most the batches queued before it, each
    bounded by the timeout (and the breaker stops queueing after a failure).
    """

    def __init__(self, client: Any, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="keygate-ratelimit", daemon=True)
        self._thread.start()

    def submit(self, key: str, interval: str, window: str) -> asyncio.Future[Any]:
        """Queue one check; the future gets [allowed, ahead] or the exception Redis raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((loop, future, key, interval, window))
        return future

    def _run(self) -> None:
        """Connect and load the script, then send queued checks in batches until told to stop."""
        with contextlib.suppress(Exception):  # unreachable now: the first check will say so
            self._client.script_load(_GCRA_SCRIPT)
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stopping = False
            while len(batch) < REDIS_BATCH_LIMIT:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._answer(batch)
            if stopping:
                return

    def _answer(self, batch: list[_Pending]) -> None:
        """Run one batch and hand each answer to its loop (one wake-up per loop)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for item, answer in zip(batch, self._send(batch), strict=True):
            by_loop.setdefault(item[0], []).append((item[1], answer))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, settled)

    def _send(self, batch: list[_Pending]) -> list[Any]:
        """One pipelined round trip for the batch (loading the script once if Redis lost it)."""
        from redis.exceptions import NoScriptError  # redis-py is there when a URL is set

        try:
            replies = self._pipeline(batch)
            if any(isinstance(reply, NoScriptError) for reply in replies):
                self._client.script_load(_GCRA_SCRIPT)
                replies = self._pipeline(batch)
        except Exception as error:  # redis.RedisError, OSError: the whole batch failed
            return [error] * len(batch)
        return list(replies)

    def _pipeline(self, batch: list[_Pending]) -> list[Any]:
        """EVALSHA every check of the batch in one round trip; errors come back as values."""
        pipe = self._client.pipeline(transaction=False)
        for _, _, key, interval, window in batch:
            pipe.evalsha(_GCRA_SHA, 1, key, interval, window)
        return list(pipe.execute(raise_on_error=False))

    def stop(self) -> None:
        """Ask the thread to finish what is queued and end."""
        self._queue.put(_STOP)

    def join(self, timeout: float) -> None:
        """Wait for the thread to end (at most `timeout` seconds)."""
        self._thread.join(timeout)


def _settle(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """On the event loop: give each waiting check its answer (skipping abandoned ones)."""
    for future, answer in settled:
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)


# Admitted without a count from Redis (headers are only sent with refusals).
_ADMITTED = Decision(True, 0, 0.0, 0.0)


class RedisLimiter:
    """GCRA state in Redis, shared by every worker and instance, behind a local floor.

    Each check first counts against the whole limit in this worker (a key that has used its
    limit here is refused without asking Redis: a flood costs no round trips and, whatever
    Redis does, one worker never admits more than the limit). Then Redis decides for the
    fleet; a refusal there gives the local count back. While Redis fails, a breaker skips it
    for REDIS_RETRY_AFTER seconds: `fail_open` admits what the local floor admits, otherwise
    each worker holds the key to its share of the limit (as without Redis).
    """

    def __init__(
        self,
        client: Any,
        clock: Callable[[], float] = time.monotonic,
        *,
        fail_open: bool = True,
        processes: int = 1,
        worker: int = 0,
        timeout: float = REDIS_TIMEOUT,
    ) -> None:
        self._redis = client
        self._clock = clock
        self._fail_open = fail_open
        self._floor = LocalLimiter(clock)
        self._share = LocalLimiter(clock, processes, worker)
        self._channel = _RedisChannel(client, timeout)
        self.failures = 0  # Redis checks that failed or timed out (counted for /metrics)
        self._retry_at = -math.inf  # breaker: Redis is skipped until this moment (clock)
        self._down = False

    @property
    def reachable(self) -> bool:
        """False from a failed check until one succeeds again (for /metrics)."""
        return not self._down

    async def check(self, key_id: int, limit: RateLimit) -> Decision:
        """Count one request of `key_id` locally, then in Redis; on a failure apply the policy."""
        refused = self._floor.admit_now(key_id, limit)
        if refused is not None:
            return refused
        if self._clock() < self._retry_at:
            return self._without_redis(key_id, limit)
        interval = limit.interval
        window = interval * (limit.burst - 1)
        future = self._channel.submit(
            f"{REDIS_KEY_PREFIX}{key_id}", repr(interval), repr(window + interval * SLACK)
        )
        try:
            reply = await asyncio.wait_for(future, REDIS_ANSWER_LIMIT)
            if isinstance(reply, BaseException):
                raise reply
            allowed, ahead_text = reply
            ahead = float(ahead_text)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # RedisError, OSError, TimeoutError, a bad reply
            self._failed(error)
            return self._without_redis(key_id, limit)
        if self._down:
            self._down = False
            log.warning("rate-limit store reachable again")
        if allowed:
            return Decision(True, _remaining(limit, window, ahead), ahead, 0.0)
        self._floor.refund(key_id, limit)
        return Decision(False, 0, ahead, ahead - window)

    def _failed(self, error: Exception) -> None:
        """Count a failed check, open the breaker, and log the start of an outage once."""
        self.failures += 1
        self._retry_at = self._clock() + REDIS_RETRY_AFTER
        if not self._down:
            self._down = True
            log.warning(
                "rate-limit store unreachable (%s); %s until it is back",
                type(error).__name__,
                "each worker holds keys to their whole limit"
                if self._fail_open
                else "each worker holds keys to its share of their limit",
            )

    def _without_redis(self, key_id: int, limit: RateLimit) -> Decision:
        """Decide a check the local floor admitted while Redis cannot be asked."""
        if self._fail_open:
            return _ADMITTED
        refused = self._share.admit_now(key_id, limit)
        if refused is None:
            return _ADMITTED
        self._floor.refund(key_id, limit)
        return refused

    async def close(self) -> None:
        """Stop the Redis thread and close its connections."""
        self._channel.stop()
        await asyncio.to_thread(self._channel.join, REDIS_CLOSE_WAIT)
        await asyncio.to_thread(self._redis.close)


def redis_limiter(
    url: str,
    clock: Callable[[], float] = time.monotonic,
    *,
    fail_open: bool = True,
    processes: int = 1,
    worker: int = 0,
) -> RedisLimiter:
    """Return a RedisLimiter on `url` (redis-py imported only when a Redis URL is configured)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 0),  # a failed check is decided by the policy, not retried
    )
    return RedisLimiter(client, clock, fail_open=fail_open, processes=processes, worker=worker)
