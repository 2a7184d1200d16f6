"""Faults an operator meets, with real processes: a killed supervisor, a second one, crash loops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import (
    Backend,
    children_of,
    free_port,
    reaped,
    start_serve,
    wait_for_port,
    write_config,
)

pytestmark = pytest.mark.slow

ORPHAN_BOUND = 3.0  # seconds within which workers must notice their supervisor died
CRASH_LOOP_BOUND = 30.0  # seconds within which a supervisor must give up on a crash loop


def alive(pid: int) -> bool:
    """Return True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def wait_until(condition: object, timeout: float) -> bool:
    """Poll a zero-argument callable until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


async def workers_of(pid: int, count: int, timeout: float = 15.0) -> set[int]:
    """Wait until `pid` has `count` child processes; return their pids."""
    assert await wait_until(lambda: len(children_of(pid)) == count, timeout), children_of(pid)
    return children_of(pid)


async def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "orphan", backend.url, listen_port=port, admin_port=free_port()
    )
    serve = start_serve(config, port, tmp_path / "orphan.log", "--workers", "2")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        workers = await workers_of(serve.process.pid, 2)
        serve.extra_pids.extend(workers)
        os.kill(serve.process.pid, signal.SIGKILL)
        serve.process.wait(timeout=5)
        started = time.monotonic()
        gone = await wait_until(lambda: not any(alive(pid) for pid in workers), ORPHAN_BOUND)
        assert gone, f"workers {sorted(workers)} still alive after {ORPHAN_BOUND}s"
        print(f"workers gone {time.monotonic() - started:.2f}s after the supervisor's kill -9")


async def test_a_second_supervisor_refuses_ports_held_by_the_first(
    tmp_path: Path, backend: Backend
) -> None:
    port, admin_port = free_port(), free_port()
    config = write_config(tmp_path / "twice", backend.url, listen_port=port, admin_port=admin_port)
    first = start_serve(config, port, tmp_path / "first.log", "--workers", "2")
    with reaped(first):
        await wait_for_port(port, process=first.process)
        first.extra_pids.extend(await workers_of(first.process.pid, 2))
        second = start_serve(config, port, tmp_path / "second.log", "--workers", "2")
        with reaped(second):
            status = second.process.wait(timeout=15)
            assert status != 0
            assert f"port 127.0.0.1:{port} is already in use" in second.log_text()
            assert children_of(second.process.pid) == set()
        assert first.process.poll() is None
        assert first.stop() == 0, first.log_text()


async def test_a_crash_loop_ends_with_the_workers_error(tmp_path: Path, backend: Backend) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "crash",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"supervisor": {"max_start_failures": 3}},
    )
    database = tmp_path / "crash" / "keygate.db"  # the store write_config names
    database.write_bytes(b"this is not a SQLite database" * 100)
    serve = start_serve(config, port, tmp_path / "crash.log", "--workers", "2")
    with reaped(serve):
        started = time.monotonic()
        with contextlib.suppress(Exception):
            serve.process.wait(timeout=CRASH_LOOP_BOUND)
        assert serve.process.poll() is not None, "the supervisor kept restarting workers"
        assert serve.process.returncode != 0
        log = serve.log_text()
        assert "failed to start 3 times in a row" in log, log
        assert "not a database" in log, log
        assert children_of(serve.process.pid) == set()
        took = time.monotonic() - started
        print(f"crash loop ended after {took:.1f}s, status {serve.process.returncode}")
