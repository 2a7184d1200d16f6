"""The supervisor as a process: hung workers replaced, restarts that never block the others."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from support.config import ALL_ROLE, REST, create_key, write_config
from support.http import http_request, raw_request
from support.processes import children_of, free_port, reaped, start_serve
from support.upstreams import Backend

from gateway.serve.supervisor import HEARTBEAT_INTERVAL

# Starts real processes (CLI, server, demo): deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow

HANG_TIMEOUT = 2.0  # seconds of silence after which the supervisor kills a worker (the test's)
START_BOUND = 30.0  # seconds for workers to start under a loaded machine
STOP_TIMEOUT = 15.0  # seconds a stopping gateway may take


async def serving_workers(serve_log: Path, supervisor: int, count: int) -> set[int]:
    """Wait until `count` children of the supervisor have said they serve; return their pids."""
    deadline = time.monotonic() + START_BOUND
    while True:
        pids = children_of(supervisor)
        text = serve_log.read_text(encoding="utf-8", errors="replace")
        serving = {pid for pid in pids if f" {pid} INFO keygate.server: keygate serving" in text}
        if len(serving) >= count:
            return serving
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.05)


async def test_a_hung_worker_is_killed_and_replaced_within_the_bound(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "hang",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"supervisor": {"hang_timeout": HANG_TIMEOUT}},
    )
    key = await create_key(config, "hang-bot", [ALL_ROLE])
    log = tmp_path / "serve.log"
    serve = start_serve(config, port, log, "--workers", "2")
    with reaped(serve):
        workers = await serving_workers(log, serve.process.pid, 2)
        serve.extra_pids.extend(workers)
        victim = max(workers)
        os.kill(victim, signal.SIGSTOP)  # a real hang: its event loop runs no more
        stopped = time.monotonic()
        bound = HANG_TIMEOUT + 2 * HEARTBEAT_INTERVAL + 1.0  # silence, then one poll, a margin
        while victim in children_of(serve.process.pid):
            assert time.monotonic() - stopped < bound, "the hung worker was not killed"
            await asyncio.sleep(0.05)
        killed = time.monotonic() - stopped
        replaced = await serving_workers(log, serve.process.pid, 2)
        serve.extra_pids.extend(replaced)
        assert victim not in replaced
        response = await raw_request(
            port, http_request("GET", f"{REST}/_echo/after", [("X-API-Key", key)])
        )
        assert response.status == 200
        assert serve.stop(STOP_TIMEOUT) == 0, serve.log_text()
    assert "no heartbeat" in serve.log_text()
    print(f"\nSIGSTOPped worker killed {killed:.2f}s after it hung (timeout {HANG_TIMEOUT}s)")


async def test_a_worker_in_back_off_does_not_delay_restarting_another(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "backoff", backend.url, listen_port=port, admin_port=free_port()
    )
    log = tmp_path / "serve.log"
    serve = start_serve(config, port, log, "--workers", "2")
    supervisor = serve.process.pid
    with reaped(serve):
        workers = await serving_workers(log, supervisor, 2)
        serve.extra_pids.extend(workers)
        steady = min(workers)
        flapping = max(workers)
        # Killed again and again right after each start: its restart delay grows.
        for _ in range(5):
            os.kill(flapping, signal.SIGKILL)
            deadline = time.monotonic() + START_BOUND
            while not (fresh := children_of(supervisor) - {steady, flapping}):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            (flapping,) = fresh
            serve.extra_pids.append(flapping)
        os.kill(flapping, signal.SIGKILL)  # now in a long back-off (several seconds)
        await asyncio.sleep(0.3)
        os.kill(steady, signal.SIGKILL)  # a first death: restarted after 0.5 s
        killed = time.monotonic()
        while not (fresh := children_of(supervisor) - {steady, flapping}):
            assert time.monotonic() - killed < 3.0, "the other worker waited for the back-off"
            await asyncio.sleep(0.01)
        serve.extra_pids.extend(fresh)
        restarted = time.monotonic() - killed
        assert serve.stop(STOP_TIMEOUT) == 0, serve.log_text()
    print(f"\nworker restarted {restarted:.2f}s after its death, during a sibling's back-off")
