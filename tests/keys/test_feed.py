"""The change feed across processes: CLI writes reach a running `serve` process within 1 s.

The gateway runs as `python -m gateway serve` (its own process, its own key table) and each
change is made by another `python -m gateway keys ...` process; only the SQLite file and its
change feed connect them. Latency is measured from the CLI process's exit to the first
request that sees the change; the feed poll interval is the default one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from support.config import ALL_ROLE, ECHO_ROLE, REST
from support.processes import Served, arun_cli, serving
from support.upstreams import Backend

from gateway.settings import DEFAULT_POLL_INTERVAL

# Starts real processes (CLI, server, demo): deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow

# The bound this test states for a change to reach a running process, in seconds.
FEED_BOUND = 1.0
POLL_EVERY = 0.01  # seconds between probe requests while waiting for a change
ECHO = f"{REST}/_echo/feed"
BLOB = f"{REST}/_blob?size=1"

Outcome = tuple[int, str]  # HTTP status and JSON error code ("" on success)
Probe = Callable[[], Awaitable[Outcome]]


@pytest.fixture
async def served(tmp_path: Path, backend: Backend) -> AsyncIterator[Served]:
    """A `serve` subprocess (default feed poll interval) with a key `feed-bot`."""
    extra = {"feed": {"poll_interval": DEFAULT_POLL_INTERVAL}}
    async with serving(tmp_path / "feed", backend, "feed-bot", extra) as running:
        yield running


async def outcome(session: aiohttp.ClientSession, url: str, key: str) -> Outcome:
    """GET `url` with `key`; return the status and the JSON error code."""
    async with session.get(url, headers={"X-API-Key": key}) as response:
        body = await response.read()
    return response.status, (json.loads(body)["error"] if response.status >= 400 else "")


async def wait_until(probe: Probe, expected: Outcome, since: float, what: str) -> float:
    """Poll until `probe` gives `expected`; return the seconds since `since` (bounded)."""
    while True:
        seen = await probe()
        elapsed = time.monotonic() - since
        if seen == expected:
            return elapsed
        if elapsed > FEED_BOUND:
            raise AssertionError(f"{what}: still {seen} {elapsed:.3f}s after the CLI exited")
        await asyncio.sleep(POLL_EVERY)


async def cli(*args: str) -> tuple[str, float]:
    """Run a CLI command to success; return its stdout and the moment it exited."""
    code, out, err = await arun_cli(*args)
    assert code == 0, err
    return out, time.monotonic()


async def test_cli_changes_reach_a_running_gateway_within_one_second(served: Served) -> None:
    cfg = ("--config", str(served.config))
    latencies: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:

        def probe(url: str, key: str) -> Probe:
            return lambda: outcome(session, served.base + url, key)

        echo = probe(ECHO, served.secret)
        assert await echo() == (200, "")

        async def step(args: tuple[str, ...], check: Probe, expected: Outcome) -> None:
            before = await check()
            assert before != expected, f"{args}: already {before} before the change"
            _, exited = await cli("keys", *args, *cfg)
            latencies[" ".join(args)] = await wait_until(check, expected, exited, str(args))

        # A key created by another process starts working.
        out, exited = await cli(
            "keys", "create", "--name", "late-bot", "--role", ALL_ROLE, "--json", *cfg
        )
        late = json.loads(out)["secret"]
        latencies["create"] = await wait_until(probe(ECHO, late), (200, ""), exited, "create")

        await step(("revoke", "feed-bot"), echo, (401, "key_revoked"))
        await step(("reinstate", "feed-bot"), echo, (200, ""))
        await step(("edit", "feed-bot", "--role", "1int-rules-read"), echo, (403, "forbidden"))
        await step(("edit", "feed-bot", "--role", ECHO_ROLE), echo, (200, ""))
        assert await probe(BLOB, served.secret)() == (200, "")
        await step(("delete", "feed-bot"), echo, (401, "key_unknown"))
        await step(("revoke-all",), probe(ECHO, late), (401, "key_revoked"))
        await step(("reinstate-all",), probe(ECHO, late), (200, ""))
    print("\nfeed latency, CLI process exit -> running gateway reflects the change:")
    for action, seconds in latencies.items():
        print(f"  {action:<24} {seconds * 1000:7.1f} ms")
    assert max(latencies.values()) <= FEED_BOUND
