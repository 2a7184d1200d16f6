"""`keygate serve` as a process: graceful SIGTERM, and the multi-worker supervisor."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from support.config import ALL_ROLE, REST, create_key, write_config
from support.http import http_request, raw_request
from support.processes import children_of, free_port, reaped, run_cli, start_serve, wait_for_port
from support.upstreams import Backend

# Starts real processes (CLI, server, demo): deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow

ACCESS_LINE = re.compile(r"^\S+ \S+ (?P<pid>\d+) INFO keygate\.access: .*\"GET (?P<path>\S+) ")
STOP_TIMEOUT = 10.0  # seconds a stopping gateway may take (grace period is 5 s)


def answering_pids(log: str, marker: str) -> set[int]:
    """Pids whose access-log lines show a request path containing `marker`."""
    pids = set()
    for line in log.splitlines():
        match = ACCESS_LINE.match(line)
        if match and marker in match["path"]:
            pids.add(int(match["pid"]))
    return pids


async def test_sigterm_drains_in_flight_requests_and_exits_zero(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(tmp_path / "term", backend.url, listen_port=port, admin_port=free_port())
    key = await create_key(config, "slow-bot", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "serve.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        async with aiohttp.ClientSession() as session:

            async def slow() -> tuple[int, bytes]:
                async with session.get(
                    f"http://127.0.0.1:{port}{REST}/_slow?delay=1", headers={"X-API-Key": key}
                ) as response:
                    return response.status, await response.read()

            in_flight = asyncio.create_task(slow())
            server = backend.runner.server
            assert server is not None
            deadline = time.monotonic() + 5
            while server.requests_count == 0:  # the slow request has reached the backend
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            signalled = time.monotonic()
            serve.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # Draining: the listener is closed to new connections...
            with pytest.raises(OSError):
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            # ...and the request already in flight still gets its full answer.
            status, body = await asyncio.wait_for(in_flight, 5)
        assert status == 200
        assert body == b'{"slept": 1.0}'
        code = await asyncio.to_thread(serve.process.wait, STOP_TIMEOUT)
        stopped = time.monotonic() - signalled
    assert code == 0, serve.log_text()
    assert 0.6 < stopped < STOP_TIMEOUT
    print(f"\nSIGTERM -> exit 0 in {stopped:.2f}s with a 1 s request in flight")


async def test_two_workers_share_the_port_and_a_killed_worker_is_restarted(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "workers", backend.url, listen_port=port, admin_port=free_port()
    )
    key = await create_key(config, "worker-bot", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "serve.log", "--workers", "2")
    supervisor = serve.process.pid
    with reaped(serve):
        deadline = time.monotonic() + 20
        workers: set[int] = set()
        while len(workers) < 2:
            assert time.monotonic() < deadline, "two workers did not start"
            await asyncio.sleep(0.05)
            workers = children_of(supervisor)
        serve.extra_pids.extend(workers)
        await wait_for_port(port, process=serve.process)

        counter = 0

        async def request(marker: str) -> int:
            nonlocal counter
            counter += 1
            response = await raw_request(
                port,
                http_request("GET", f"{REST}/_echo/{marker}/{counter}", [("X-API-Key", key)]),
            )
            return response.status

        async def until_answering(marker: str, wanted: set[int]) -> set[int]:
            """New connections until every pid in `wanted` has answered (bounded)."""
            limit = time.monotonic() + 15
            while True:
                for _ in range(10):
                    assert await request(marker) == 200
                seen = answering_pids(serve.log_text(), marker)
                if wanted <= seen:
                    return seen
                assert time.monotonic() < limit, f"only {seen} answered, wanted {wanted}"
                await asyncio.sleep(0.05)

        # Both workers accept on the one port (SO_REUSEPORT spreads new connections).
        assert await until_answering("both", workers) == workers

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        # The port keeps answering from the surviving worker while the victim is replaced.
        failures = 0
        replacement: set[int] = set()
        while not replacement:
            assert time.monotonic() - killed < 20, "the killed worker was not restarted"
            try:
                status = await request("during")
            except (ConnectionError, asyncio.IncompleteReadError):
                failures += 1  # only a connection queued on the dying socket may be lost
            else:
                assert status == 200
            replacement = children_of(supervisor) - workers
            await asyncio.sleep(0.05)
        serve.extra_pids.extend(replacement)
        assert failures <= 1
        assert victim not in children_of(supervisor)
        (new_pid,) = replacement
        restarted = time.monotonic() - killed
        survivors = (workers - {victim}) | {new_pid}
        assert await until_answering("after", survivors) >= survivors
        answered = time.monotonic() - killed
        assert serve.stop(STOP_TIMEOUT) == 0, serve.log_text()
    assert "exited with status -9" in serve.log_text()
    print(
        f"\nworkers {sorted(workers)}; killed {victim}; replacement {new_pid} forked after "
        f"{restarted:.2f}s, answering after {answered:.2f}s"
    )


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_worker_count_is_one_clear_line(tmp_path: Path, value: str) -> None:
    config = write_config(tmp_path / "bad", "http://127.0.0.1:9")
    result = run_cli("serve", "--config", str(config), "--workers", value)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "--workers" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "busy", "http://127.0.0.1:9", listen_port=port, admin_port=free_port()
        )
        result = run_cli("serve", "--config", str(config))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("keygate: ")]
    assert len(errors) == 1 and "address already in use" in errors[0], result.stderr


def test_several_workers_need_a_fixed_port(tmp_path: Path) -> None:
    config = write_config(tmp_path / "zero", "http://127.0.0.1:9", listen_port=0)
    result = run_cli("serve", "--config", str(config), "--workers", "2")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "keygate: error: --workers 2 needs a fixed listen.port (not 0)"
    ]
