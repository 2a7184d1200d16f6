"""Shared fixtures: a real demo backend, a config dir with a real SQLite store, gateways, stores.

Everything here runs the real thing: the demo backend listens on a loopback port, the store
is an SQLite file in a temporary directory (or a fresh PostgreSQL schema) and gateways run
in-process (`running_gateway`). Only fixtures and hooks live here; the helpers they and the
tests use are modules in tests/support/ (config, http, processes, stores, upstreams).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings as hypothesis_settings
from support.config import write_config
from support.examples import CI_EXAMPLES, DEV_EXAMPLES
from support.stores import (
    POSTGRES_ENV_VAR,
    POSTGRES_PROBE_TIMEOUT,
    MigratedSchemas,
    StoreBackend,
    fresh_schema,
    postgres_server_url,
    with_database,
)
from support.upstreams import Backend, start_backend

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.store.base import KeyStore
from gateway.store.sqlite import SqliteKeyStore

T = TypeVar("T")

# Examples run in-process against real sockets and stores: their time varies with the machine's
# load, so no per-example deadline (a test bounds its own waits).
hypothesis_settings.register_profile("dev", max_examples=DEV_EXAMPLES, deadline=None)
hypothesis_settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

# Test workers per core for `-n auto` (pytest-xdist): a worker waits for sockets, stores and
# subprocesses about 40% of its time, so two per core keep both cores busy; at most
# MAX_TEST_WORKERS, which the per-worker ports and Redis databases (support/workers.py) allow.
WORKERS_PER_CORE = 2
MAX_TEST_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many workers `-n auto` starts: two per core this process may run on, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_TEST_WORKERS, WORKERS_PER_CORE * (cores or 1)))


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    """The demo backend on a loopback port chosen by the OS."""
    started = await start_backend()
    try:
        yield started
    finally:
        await started.runner.cleanup()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite store as `open(create=True)` leaves it, made once per run to copy from.

    Creating and migrating a store on disk costs ~20 ms of fsyncs; a copy of this file is the
    same database (the store closed cleanly, so no WAL file goes with it) for ~1 ms.
    """
    path = tmp_path_factory.mktemp("sqlite-template") / "keygate.db"

    async def create() -> None:
        store = SqliteKeyStore(path)
        await store.open(create=True)
        await store.close()

    asyncio.run(create())
    return path


@pytest.fixture
def config_path(tmp_path: Path, backend: Backend, sqlite_template: Path) -> Path:
    """A config dir (gateway.yaml, policy.yaml, SQLite store) pointing at the demo backend."""
    return write_config(tmp_path / "config", backend.url, store_from=sqlite_template)


@pytest.fixture
async def gateway(config_path: Path) -> AsyncIterator[RunningGateway]:
    """A gateway running in this process in front of the demo backend (admin on a free port)."""
    async with running_gateway(load_settings(config_path)) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the test server for this run (dropped afterwards).

    An unreachable server skips PostgreSQL tests with a clear message, or fails them under
    CI=true: CI must never pass by skipping them.
    """
    import uuid

    import asyncpg

    server = postgres_server_url()
    database = f"keygate_test_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(server, timeout=POSTGRES_PROBE_TIMEOUT)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{database}"'))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
        message = f"PostgreSQL test server {server} unreachable ({error}); set {POSTGRES_ENV_VAR}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield with_database(server, database)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_schemas(postgres_url: str) -> MigratedSchemas:
    """This run's PostgreSQL schemas, reset to just-migrated for each test that takes one."""
    return MigratedSchemas(postgres_url)


def run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on a loop of its own, leaving the thread's current loop as it was."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(coroutine)


@pytest.fixture(params=["sqlite", "postgres"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    """Each store backend in turn, on a new database: a file, or a PostgreSQL schema as the
    first open leaves it (a reused one reset to just-migrated, or, for a test marked
    `unmigrated`, one no store has opened yet)."""
    if request.param == "sqlite":
        yield StoreBackend("sqlite", str(tmp_path / "data" / "keygate.db"))
        return
    url = request.getfixturevalue("postgres_url")
    if request.node.get_closest_marker("unmigrated") is not None:
        yield StoreBackend("postgres", url, fresh_schema())
        return
    schemas: MigratedSchemas = request.getfixturevalue("postgres_schemas")
    schema = run_apart(schemas.take())
    yield StoreBackend("postgres", url, schema)
    schemas.give_back(schema)


@pytest.fixture
async def backend_store(store_backend: StoreBackend) -> AsyncIterator[KeyStore]:
    """An open store of the backend under test."""
    opened = store_backend.make()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def backend_other(
    store_backend: StoreBackend, backend_store: KeyStore
) -> AsyncIterator[KeyStore]:
    """A second store on the same database, standing in for another process or instance."""
    opened = store_backend.make()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
