"""Faults an operator meets, with real processes: kill -9, SIGTERM mid-upload, slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from support.config import ALL_ROLE, REST, create_key, write_config
from support.processes import (
    PYTHON,
    arun_cli,
    children_of,
    cli_env,
    free_port,
    reaped,
    run_cli,
    start_serve,
    wait_for_port,
)
from support.upstreams import Backend

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


async def _slow_chunked_upload(
    port: int, key: str, chunks: int, chunk_size: int, pause: float, on_half: object
) -> tuple[int, dict[str, object]]:
    """Upload `chunks` chunks to the echo endpoint, pausing between them; call `on_half()`
    halfway. Return the status and the echo's JSON."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                f"POST {REST}/_echo/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        block = b"u" * chunk_size
        for index in range(chunks):
            if index == chunks // 2:
                on_half()  # type: ignore[operator]
            writer.write(b"%x\r\n%b\r\n" % (chunk_size, block))
            await writer.drain()
            await asyncio.sleep(pause)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return status, json.loads(body)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_lets_an_upload_in_flight_finish(
    tmp_path: Path, backend: Backend, workers: str
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "upload",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"shutdown": {"grace_period": 10}},
    )
    key = await create_key(config, "uploader", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "upload.log", "--workers", workers)
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        if workers == "2":
            serve.extra_pids.extend(await workers_of(serve.process.pid, 2))
        signalled: list[float] = []

        def terminate() -> None:
            serve.process.send_signal(signal.SIGTERM)
            signalled.append(time.monotonic())

        chunks, size = 40, 64 * 1024  # 2.5 MiB over about 2 s, SIGTERM halfway
        status, echo = await _slow_chunked_upload(port, key, chunks, size, 0.05, terminate)
        assert status == 200, echo
        assert echo["body_length"] == chunks * size
        code = serve.process.wait(timeout=15)
        took = time.monotonic() - signalled[0]
        log = serve.log_text()
        assert code == 0, log
        assert took < 10, log  # well within the grace period, not twice it
        assert "cutting" not in log
        print(f"workers={workers}: upload finished, exit {code} {took:.2f}s after SIGTERM")


async def test_what_cannot_finish_in_the_grace_period_is_cut_and_logged(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "cut",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"shutdown": {"grace_period": 1}},
    )
    key = await create_key(config, "waiter", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "cut.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {REST}/_slow?delay=5 HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode()
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        started = time.monotonic()
        serve.process.send_signal(signal.SIGTERM)
        code = serve.process.wait(timeout=15)
        took = time.monotonic() - started
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        log = serve.log_text()
        assert code == 0, log
        assert took < 1 + 3, log  # the grace period plus the cut, not twice the grace
        assert f"cutting GET {REST}/_slow?delay=5" in log, log
        assert answer == b"" or b" 200 " not in answer.split(b"\r\n", 1)[0]
        # ...and its one access line says it was cut by the shutdown, not answered.
        lines = [line for line in log.splitlines() if f'"GET {REST}/_slow?delay=5"' in line]
        assert len(lines) == 1, log
        assert '" 503 ' in lines[0] and "key=waiter ended=shutdown" in lines[0], lines
        print(f"slow request cut; exit {code} {took:.2f}s after SIGTERM")


def descriptors(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Return True when the server closes the connection within `timeout` seconds: an end of
    stream, or a reset (the kernel resets a closed connection the client still wrote to)."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


async def test_slow_and_idle_clients_are_closed_while_others_are_served(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "slowloris",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"client": {"head_timeout": 1, "keepalive_timeout": 1, "max_connections": 1000}},
    )
    key = await create_key(config, "steady", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "slowloris.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        await asyncio.sleep(0.2)
        before = descriptors(serve.process.pid)
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
        for _, writer in slow:  # a head that never ends
            writer.write(f"GET {REST}/_echo/x HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
        idle = []
        for _ in range(100):  # one request, then silence on a keep-alive connection
            # Each sends at once: opened all first and served one by one, the last ones
            # could sit past head_timeout on a loaded machine and be closed unanswered.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET {REST}/_echo/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode()
            )
            await reader.readuntil(b"\r\n\r\n")
            idle.append((reader, writer))
        during = descriptors(serve.process.pid)
        started = time.monotonic()
        served = 0
        for _ in range(10):  # legitimate requests meanwhile, each on a fresh connection
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET {REST}/_echo/x HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            served += head.startswith(b"HTTP/1.1 200")
            writer.close()
            await asyncio.sleep(0.05)
        assert served == 10
        try:
            closed = await asyncio.gather(*(_closed_by_server(r, 3.0) for r, _ in slow + idle))
        finally:  # closed here, pass or fail: never left to a later test's garbage collection
            for _, writer in slow + idle:
                writer.close()
        took = time.monotonic() - started
        assert all(closed), f"{closed.count(False)} connections still open after {took:.1f}s"
        await asyncio.sleep(0.3)
        after = descriptors(serve.process.pid)
        assert after <= before + 2, (before, during, after)
        print(f"descriptors before {before}, with 300 slow/idle clients {during}, after {after}")
        assert serve.stop() == 0


async def test_connections_over_the_cap_are_refused_at_once(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "cap",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"client": {"max_connections": 20, "head_timeout": 30}},
    )
    serve = start_serve(config, port, tmp_path / "cap.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        await asyncio.sleep(0.2)
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        answer = await asyncio.wait_for(reader.read(), 2)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b'"too_many_connections"' in answer
        assert time.monotonic() - started < 1
        writer.close()
        for _, held_writer in held:
            held_writer.close()
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {REST}/_echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
        assert serve.stop() == 0


async def test_acknowledged_writes_survive_kill_9_of_workers(
    tmp_path: Path, backend: Backend
) -> None:
    """Admin API and CLI writes race kill -9s of the workers: each acknowledged one stays."""
    port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path / "durable", backend.url, listen_port=port, admin_port=admin_port
    )
    assert run_cli("init", "--config", str(config)).returncode == 0
    password = "durability-test-password"
    added = subprocess.run(
        [PYTHON, "-m", "gateway", "admins", "add", "ops", "--grant-all", "--password-stdin",
         "--config", str(config)],
        input=password + "\n", capture_output=True, text=True, env=cli_env(), timeout=30,
        check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    serve = start_serve(config, port, tmp_path / "durable.log", "--workers", "2")
    acknowledged: list[str] = []
    kills = 0
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        await wait_for_port(admin_port, process=serve.process)
        stop = asyncio.Event()

        async def admin_writer() -> None:
            auth = {"Authorization": aiohttp.encode_basic_auth("ops", password)}
            async with aiohttp.ClientSession(headers=auth) as session:
                for index in range(400):
                    if stop.is_set():
                        return
                    name = f"api-{index}"
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with session.post(
                            f"http://127.0.0.1:{admin_port}/api/v1/keys",
                            json={"name": name, "roles": [ALL_ROLE]},
                            timeout=aiohttp.ClientTimeout(total=5),
                        ) as response:
                            if response.status == 201:
                                acknowledged.append(name)
                    await asyncio.sleep(0.01)

        async def cli_writer() -> None:
            for index in range(12):
                name = f"cli-{index}"
                code, _, _ = await arun_cli(
                    "keys", "create", "--name", name, "--role", ALL_ROLE, "--config", str(config)
                )
                if code == 0:
                    acknowledged.append(name)

        async def killer() -> None:
            nonlocal kills
            for _ in range(6):
                await asyncio.sleep(0.7)
                workers = sorted(children_of(serve.process.pid))
                if workers:
                    os.kill(workers[kills % len(workers)], signal.SIGKILL)
                    kills += 1

        writers = asyncio.gather(admin_writer(), cli_writer())
        await killer()
        await asyncio.sleep(1.5)
        stop.set()
        await writers
        assert serve.stop() == 0, serve.log_text()
    assert kills >= 5
    assert len(acknowledged) >= 20, acknowledged  # enough writes raced the kills
    listing = run_cli("keys", "list", "--json", "--config", str(config))
    assert listing.returncode == 0, listing.stderr
    stored = {key["name"] for key in json.loads(listing.stdout)}
    missing = sorted(set(acknowledged) - stored)
    assert not missing, f"acknowledged but lost: {missing}"
    audit = run_cli("audit", "--json", "--limit", "10000", "--config", str(config))
    created = {
        event["key_name"] for event in json.loads(audit.stdout) if event["action"] == "create"
    }
    assert set(acknowledged) <= created, sorted(set(acknowledged) - created)
    print(f"{len(acknowledged)} acknowledged writes across {kills} kill -9s: 0 lost, all audited")
