"""`keygate serve --workers 2` on PostgreSQL through a relay the test cuts: a store outage
never takes the instance down, a replaced worker serves from the snapshot, revocations
made meanwhile reach every worker once the store returns."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from support.config import ALL_ROLE, REST, create_key, write_config
from support.http import http_request, raw_request
from support.processes import children_of, free_port, reaped, start_serve, wait_for_port
from support.stores import StoreBackend, fresh_schema
from support.tcp_relay import TcpRelay
from support.upstreams import Backend

from gateway.store.base import KeyStore

# Starts real processes (CLI, server, demo): deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow

START_BOUND = 30.0  # seconds for workers to start on a loaded machine
SETTLE_BOUND = 20.0  # seconds for a recovery (store reopened, feed caught up) to show
STOP_TIMEOUT = 15.0  # seconds a stopping gateway may take


def via(url: str, port: int) -> str:
    """The same database URL, reached through 127.0.0.1:`port`."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, ""))


async def started_relay(url: str) -> TcpRelay:
    """A started relay to the server of `url` (closed by the caller)."""
    relay = TcpRelay(urlsplit(url).hostname or "", urlsplit(url).port or 5432)
    await relay.start()
    return relay


def proxy_port(config: Path) -> int:
    """The fixed proxy port a config names."""
    return int(yaml.safe_load(config.read_text())["listen"]["port"])


def plain_worker(text: str, workers: set[int]) -> int:
    """The worker without the admin listener (its serving line names no admin address)."""
    for line in text.splitlines():
        for pid in workers:
            if f" {pid} INFO keygate.server: keygate serving" in line and "admin on" not in line:
                return pid
    raise AssertionError(text)


async def wait_serving(log: Path, supervisor: int, count: int) -> set[int]:
    """Wait for `count` workers that said they serve; return their pids."""
    deadline = time.monotonic() + START_BOUND
    while True:
        text = log.read_text(encoding="utf-8", errors="replace")
        pids = {
            pid
            for pid in children_of(supervisor)
            if f" {pid} INFO keygate.server: keygate serving" in text
        }
        if len(pids) >= count:
            return pids
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.05)


async def keyed(port: int, secret: str, marker: str) -> int:
    """Status of one keyed request on a new connection (spread over the workers)."""
    response = await raw_request(
        port, http_request("GET", f"{REST}/_echo/{marker}", [("X-API-Key", secret)])
    )
    return response.status


ACCESS_PID = re.compile(r"^\S+ \S+ (?P<pid>\d+) INFO keygate\.access: ")


def answered(log: Path, marker: str, status: int) -> set[int]:
    """Pids whose access lines show `marker` answered with `status`."""
    pids = set()
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if marker in line and f'" {status} ' in line:
            match = ACCESS_PID.match(line)
            if match:
                pids.add(int(match["pid"]))
    return pids


async def every_worker_answers(
    port: int, log: Path, secret: str, marker: str, status: int, workers: set[int]
) -> None:
    """New connections until every worker answered `marker` with `status` (bounded)."""
    deadline = time.monotonic() + SETTLE_BOUND
    counter = 0
    while not workers <= answered(log, marker, status):
        assert time.monotonic() < deadline, (answered(log, marker, status), workers)
        for _ in range(6):
            counter += 1
            await keyed(port, secret, f"{marker}/{counter}")
        await asyncio.sleep(0.05)


async def seed(pg: StoreBackend, directory: Path, *names: str) -> tuple[KeyStore, list[str]]:
    """A direct store on the database (another instance) and the secrets of new keys."""
    store = pg.make()
    await store.open()
    config = write_config(
        directory, "http://127.0.0.1:9", extra={"store": {"url": pg.location, "schema": pg.schema}}
    )
    return store, [await create_key(config, name, [ALL_ROLE]) for name in names]


@pytest.fixture
def pg(postgres_url: str) -> StoreBackend:
    """A fresh schema in this run's PostgreSQL database."""
    return StoreBackend("postgres", postgres_url, fresh_schema())


def gateway_config(directory: Path, backend: Backend, url: str, schema: str, **extra: Any) -> Path:
    """A two-worker config on `url` with a fixed proxy port."""
    return write_config(
        directory,
        backend.url,
        listen_port=free_port(),
        admin_port=free_port(),
        extra={"store": {"url": url, "schema": schema}, **extra},
    )


async def test_a_worker_killed_during_a_store_outage_comes_back_from_the_snapshot(
    tmp_path: Path, backend: Backend, pg: StoreBackend
) -> None:
    relay = await started_relay(pg.location)
    direct, (steady, doomed) = await seed(pg, tmp_path / "seed", "steady", "doomed")
    try:
        config = gateway_config(
            tmp_path / "gw", backend, via(pg.location, relay.port), pg.schema or ""
        )
        port = proxy_port(config)
        log = tmp_path / "serve.log"
        serve = start_serve(config, port, log, "--workers", "2")
        supervisor = serve.process.pid
        with reaped(serve):
            workers = await wait_serving(log, supervisor, 2)
            serve.extra_pids.extend(workers)
            await wait_for_port(port, process=serve.process)
            snapshot = config.parent / "keygate-table.snapshot"
            assert snapshot.is_file()
            assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
            text = snapshot.read_text()
            assert steady not in text and doomed not in text  # digests only, never a secret

            relay.cut()  # the store is gone for this instance
            victim = plain_worker(log.read_text(), workers)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            survivor = (workers - {victim}).pop()
            # The survivor keeps answering keyed requests while the victim is replaced.
            replacement: set[int] = set()
            while not replacement:
                assert time.monotonic() - killed < START_BOUND, log.read_text()
                # Only a connection queued on the dying socket may be lost.
                with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                    assert await keyed(port, steady, "during") == 200
                replacement = children_of(supervisor) - workers
                await asyncio.sleep(0.05)
            (new_pid,) = replacement
            serve.extra_pids.append(new_pid)
            deadline = time.monotonic() + START_BOUND
            while f" {new_pid} WARNING keygate: " not in log.read_text():
                assert serve.process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.05)
            assert "from the snapshot" in log.read_text()
            now_serving = {survivor, new_pid}
            await every_worker_answers(port, log, steady, "outage", 200, now_serving)
            await every_worker_answers(port, log, doomed, "before", 200, now_serving)

            # Revoked elsewhere during the outage; then the store comes back.
            row = await direct.get_key_by_name("doomed")
            assert row is not None
            await direct.set_revoked(row.id, True, "elsewhere")
            relay.restore()
            restored = time.monotonic()
            await every_worker_answers(port, log, doomed, "revoked", 401, now_serving)
            reached = time.monotonic() - restored
            assert serve.process.poll() is None
            # The relay runs on this event loop: wait in a thread, never blocking it.
            assert await asyncio.to_thread(serve.stop, STOP_TIMEOUT) == 0, log.read_text()
        print(f"\nrevocation made in the outage reached both workers {reached:.2f}s after restore")
    finally:
        await direct.close()
        await relay.close()


async def test_store_unreachable_starts_are_not_a_crash_loop(
    tmp_path: Path, backend: Backend, pg: StoreBackend
) -> None:
    relay = await started_relay(pg.location)
    direct, (steady,) = await seed(pg, tmp_path / "seed", "steady")
    try:
        config = gateway_config(
            tmp_path / "gw",
            backend,
            via(pg.location, relay.port),
            pg.schema or "",
            snapshot_file=None,
            supervisor={"max_start_failures": 1},
        )
        port = proxy_port(config)
        log = tmp_path / "serve.log"
        serve = start_serve(config, port, log, "--workers", "2")
        supervisor = serve.process.pid
        with reaped(serve):
            workers = await wait_serving(log, supervisor, 2)
            serve.extra_pids.extend(workers)
            relay.cut()
            victim = plain_worker(log.read_text(), workers)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + START_BOUND
            lost = 0
            while log.read_text().count("could not reach the store at start") < 2:
                assert serve.process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                try:
                    assert await keyed(port, steady, "meanwhile") == 200
                except (ConnectionError, asyncio.IncompleteReadError):
                    lost += 1  # only a connection queued on the killed socket may be lost
                    assert lost <= 1
                for pid in children_of(supervisor):
                    if pid not in serve.extra_pids:
                        serve.extra_pids.append(pid)
                await asyncio.sleep(0.1)
            relay.restore()
            serving = await wait_serving(log, supervisor, 2)
            serve.extra_pids.extend(serving)
            assert len(children_of(supervisor)) == 2
            # The relay runs on this event loop: wait in a thread, never blocking it.
            assert await asyncio.to_thread(serve.stop, STOP_TIMEOUT) == 0, log.read_text()
    finally:
        await direct.close()
        await relay.close()
