"""PostgreSQL specifics on a real server: migrations, NOTIFY, and faults (connections
terminated with pg_terminate_backend, the server cut off through a TCP relay).

The store contract itself (the same tests for both backends) is tests/test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from support.config import ALL_ROLE, REST, create_key, write_config
from support.stores import StoreBackend, fresh_schema, with_database
from support.tcp_relay import TcpRelay
from support.upstreams import Backend

from gateway.admin.passwords import hash_password
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.store import postgres as postgres_store
from gateway.store.base import KeyStore, NewKey, StoreMissingError, StoreUnavailableError
from gateway.store.migrations.postgres import LATEST_VERSION, SchemaTooNewError
from gateway.store.postgres import PostgresKeyStore

ADMIN = "root"
ADMIN_PASSWORD = "root-password"
AUTH = {"Authorization": aiohttp.encode_basic_auth(ADMIN, ADMIN_PASSWORD)}
KEYS = "/api/v1/keys"
ECHO = f"{REST}/_echo/pg"
READY = (200, {"status": "ready", "checks": {"store": True, "policy": True}})
# Seconds a fault or a recovery gets to show.
SETTLE_TIMEOUT = 10.0
# Seconds within which a NOTIFY must reach a gateway whose poll interval is far longer.
NOTIFY_BOUND = 0.5
# Requests per client while another session terminates the gateway's connections.
TERMINATION_ROUNDS = 40


@pytest.fixture
def pg(postgres_url: str) -> StoreBackend:
    """A fresh schema in this run's PostgreSQL database."""
    return StoreBackend("postgres", postgres_url, fresh_schema())


def new_key(name: str) -> NewKey:
    """A NewKey with a digest unique to its name."""
    digest = name.encode().ljust(32, b"\0")[:32]
    return NewKey(name=name, description="", roles=("reader",), digest=digest, prefix="kg_test00")


async def keygate_connection_open(url: str) -> bool:
    """Whether keygate holds any connection to the test database."""
    conn = await asyncpg.connect(url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'keygate'"
            )
        )
    finally:
        await conn.close()


async def terminate_keygate_connections(url: str) -> int:
    """pg_terminate_backend every keygate connection to the test database; return how many."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'keygate'"
            )
        )
    finally:
        await conn.close()


# --------------------------------------------------------------------------- store level


async def test_open_refuses_a_schema_newer_than_this_code(pg: StoreBackend) -> None:
    first = pg.make()
    await first.open()
    await first.close()
    await pg.rows(
        "INSERT INTO schema_version VALUES ($1, 'from the future', 0)", LATEST_VERSION + 1
    )
    second = pg.make()
    with pytest.raises(SchemaTooNewError, match="newer"):
        await second.open()
    with pytest.raises(RuntimeError, match="not open"):
        await second.ping()


async def test_without_create_a_missing_database_or_schema_is_refused(
    postgres_url: str, pg: StoreBackend
) -> None:
    missing_db = PostgresKeyStore(with_database(postgres_url, "keygate_nowhere_4711"))
    with pytest.raises(StoreMissingError):
        await missing_db.open(create=False)
    missing_schema = pg.make()
    with pytest.raises(StoreMissingError):
        await missing_schema.open(create=False)
    assert await pg.rows("SELECT 1 FROM pg_namespace WHERE nspname = $1", pg.schema) == []


async def test_create_makes_the_database(postgres_url: str) -> None:
    name = f"{urlsplit(postgres_url).path.lstrip('/')}_made"
    store = PostgresKeyStore(with_database(postgres_url, name))
    await store.open(create=True)
    try:
        assert (await store.create_key(new_key("made"), "t")).name == "made"
    finally:
        await store.close()
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def test_an_unreachable_server_is_unavailable_at_open_and_named(pg: StoreBackend) -> None:
    parts = urlsplit(pg.location)
    dead = urlunsplit((parts.scheme, "postgres@127.0.0.1:1", parts.path, "", ""))
    store = PostgresKeyStore(dead, password="never-shown")
    with pytest.raises(StoreUnavailableError) as caught:
        await store.open()
    assert "cannot be reached" in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)
    assert "never-shown" not in str(caught.value)


async def test_notify_wakes_a_listener_at_once_and_after_its_connection_is_killed(
    pg: StoreBackend,
) -> None:
    writer, listener = pg.make(), pg.make()
    await writer.open()
    await listener.open()
    assert isinstance(listener, PostgresKeyStore)
    woken = asyncio.Event()
    listening = asyncio.create_task(listener.listen(woken.set))
    try:
        await asyncio.wait_for(woken.wait(), 5)  # woken once on connecting
        woken.clear()
        await writer.create_key(new_key("notified"), "t")
        await asyncio.wait_for(woken.wait(), NOTIFY_BOUND)
        woken.clear()
        assert await terminate_keygate_connections(pg.location) >= 1
        await asyncio.wait_for(woken.wait(), 5)  # reconnected (and woken to catch up)
        woken.clear()
        await writer.create_key(new_key("notified-again"), "t")
        await asyncio.wait_for(woken.wait(), NOTIFY_BOUND)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
        await writer.close()
        await listener.close()


async def test_terminated_connections_fail_one_call_at_most_then_recover(
    pg: StoreBackend,
) -> None:
    store = pg.make()
    await store.open()
    try:
        await store.create_key(new_key("before"), "t")
        await terminate_keygate_connections(pg.location)
        outcomes: list[str] = []
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                await store.create_key(new_key(f"after-{len(outcomes)}"), "t")
            except StoreUnavailableError as error:
                outcomes.append(error.cause)
                continue
            break
        assert len(outcomes) <= 1, outcomes
        names = [row.name for row in await store.list_keys()]
        assert names[0] == "before" and len(names) == 2
        await store.ping()
    finally:
        await store.close()


# --------------------------------------------------------------------------- running gateways


@dataclass
class Instance:
    """An in-process gateway on PostgreSQL, and a session to talk to it."""

    gateway: RunningGateway
    session: aiohttp.ClientSession

    async def keyed(self, secret: str) -> tuple[int, str]:
        """Status and error code of one keyed request through the proxy."""
        url = f"http://127.0.0.1:{self.gateway.proxy_port}{ECHO}"
        async with self.session.get(url, headers={"X-API-Key": secret}) as response:
            body: dict[str, Any] = await response.json() if response.status >= 400 else {}
            return response.status, str(body.get("error", ""))

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the admin API as the test admin; return (status, JSON)."""
        url = f"http://127.0.0.1:{self.gateway.admin_port}{path}"
        headers = {**AUTH, "Content-Type": "application/json"}
        async with self.session.request(method, url, json=body or {}, headers=headers) as response:
            return response.status, await response.json()

    async def ready(self) -> tuple[int, Any]:
        """GET /readyz."""
        url = f"http://127.0.0.1:{self.gateway.admin_port}/readyz"
        async with self.session.get(url) as response:
            return response.status, await response.json()


async def eventually(probe: Any, expected: Any, timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait until `await probe()` returns `expected`; return the seconds it took."""
    started = time.monotonic()
    while (value := await probe()) != expected:
        assert time.monotonic() - started < timeout, (value, expected)
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def via(url: str, port: int) -> str:
    """The same database URL, reached through 127.0.0.1:`port`."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, ""))


@contextlib.asynccontextmanager
async def instance(
    directory: Path, backend: Backend, url: str, schema: str, poll_interval: float = 0.05
) -> AsyncIterator[Instance]:
    """Start a gateway in this process on `url` (schema `schema`)."""
    config = write_config(
        directory,
        backend.url,
        extra={
            "store": {"url": url, "schema": schema},
            "feed": {"poll_interval": poll_interval},
        },
    )
    async with running_gateway(load_settings(config)) as gateway, aiohttp.ClientSession() as s:
        yield Instance(gateway, s)


async def seeded(pg: StoreBackend, directory: Path, *names: str) -> tuple[KeyStore, list[str]]:
    """Open a direct store (another instance), add the test admin and keys; return secrets."""
    store = pg.make()
    await store.open()
    await store.add_admin(ADMIN, hash_password(ADMIN_PASSWORD, n=2**4), (), True, "test")
    config = write_config(
        directory, "http://127.0.0.1:9", extra={"store": {"url": pg.location, "schema": pg.schema}}
    )
    secrets = [await create_key(config, name, [ALL_ROLE]) for name in names]
    return store, secrets


async def test_notify_reaches_an_instance_long_before_its_next_poll(
    tmp_path: Path, backend: Backend, pg: StoreBackend
) -> None:
    direct, (secret,) = await seeded(pg, tmp_path / "seed", "notified")
    try:
        async with instance(tmp_path / "a", backend, pg.location, pg.schema or "", 30.0) as a:
            assert await a.keyed(secret) == (200, "")
            row = await direct.get_key_by_name("notified")
            assert row is not None
            started = time.monotonic()
            await direct.set_revoked(row.id, True, "elsewhere")
            await eventually(lambda: a.keyed(secret), (401, "key_revoked"), NOTIFY_BOUND)
            assert time.monotonic() - started < NOTIFY_BOUND
    finally:
        await direct.close()


async def test_terminated_connections_keep_the_proxy_serving_and_recover(
    tmp_path: Path, backend: Backend, pg: StoreBackend
) -> None:
    direct, (steady, doomed) = await seeded(pg, tmp_path / "seed", "steady", "doomed")
    try:
        row = await direct.get_key_by_name("doomed")
        assert row is not None
        async with instance(tmp_path / "a", backend, pg.location, pg.schema or "") as a:
            for _ in range(3):
                # The instance reconnects on its own (the LISTEN connection, with a backoff)
                # before each round: under load that takes longer than one keyed request.
                await eventually(lambda: keygate_connection_open(pg.location), True)
                assert await terminate_keygate_connections(pg.location) >= 1
                assert await a.keyed(steady) == (200, "")

            async def revoke() -> int:
                status, _ = await a.admin("POST", f"{KEYS}/{row.id}/revoke")
                return status

            await eventually(revoke, 200)
            assert await a.keyed(doomed) == (401, "key_revoked")
            await eventually(a.ready, READY)
    finally:
        await direct.close()


@pytest.mark.parametrize("pruned", [False, True], ids=["catch-up", "pruned-reload"])
async def test_an_instance_cut_off_keeps_serving_answers_503_and_refuses_on_return(
    tmp_path: Path, backend: Backend, pg: StoreBackend, pruned: bool
) -> None:
    relay = TcpRelay(urlsplit(pg.location).hostname or "", urlsplit(pg.location).port or 5432)
    await relay.start()
    direct, (steady, doomed) = await seeded(pg, tmp_path / "seed", "steady", "doomed")
    try:
        url = via(pg.location, relay.port)
        async with instance(tmp_path / "a", backend, url, pg.schema or "") as a:
            assert await a.keyed(doomed) == (200, "")
            relay.cut()
            status, body = await a.admin("POST", KEYS, {"name": "refused", "roles": [ALL_ROLE]})
            assert (status, body["error"]) == (503, "store_unavailable"), body
            status, body = await a.ready()
            assert status == 503 and body["checks"]["store"] is False, body
            # Another instance revokes a key while this one cannot hear about it.
            row = await direct.get_key_by_name("doomed")
            assert row is not None
            await direct.set_revoked(row.id, True, "elsewhere")
            if pruned:
                for i in range(5):
                    await direct.create_key(new_key(f"filler-{i}"), "elsewhere")
                assert await direct.prune_feed(0, time.time() + 60) > 0
            await asyncio.sleep(0.3)  # several failed polls
            assert await a.keyed(steady) == (200, "")  # serving from memory meanwhile
            relay.restore()
            await eventually(lambda: a.keyed(doomed), (401, "key_revoked"))
            assert await a.keyed(steady) == (200, "")
            await eventually(a.ready, READY)
            status, body = await a.admin("POST", KEYS, {"name": "after", "roles": [ALL_ROLE]})
            assert status == 201, body
    finally:
        await direct.close()
        await relay.close()


# ---------------------------------------------------------------- answers and logs in faults


async def keygate_backends_waiting_on_a_lock(url: str) -> int:
    """How many keygate connections wait for a lock (a request blocked mid-statement)."""
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'keygate' AND wait_event_type = 'Lock'"
            )
        )
    finally:
        await conn.close()


def tracebacks(records: list[Any]) -> list[str]:
    """The messages of log records that carry a traceback (what an operator must not get)."""
    return [record.getMessage() for record in records if record.exc_info or record.exc_text]


async def test_a_connection_terminated_mid_request_answers_503_json_and_logs_no_traceback(
    tmp_path: Path, backend: Backend, pg: StoreBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    direct, _ = await seeded(pg, tmp_path / "seed")
    blocker = await asyncpg.connect(pg.location, server_settings={"search_path": pg.schema or ""})
    try:
        async with instance(tmp_path / "a", backend, pg.location, pg.schema or "") as a:
            # Another session holds the feed counter's row lock: the create blocks mid-statement.
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute("SELECT seq FROM feed_state WHERE id = 1 FOR UPDATE")
            answer = asyncio.create_task(
                a.admin("POST", KEYS, {"name": "mid-request", "roles": [ALL_ROLE]})
            )
            await eventually(lambda: keygate_backends_waiting_on_a_lock(pg.location), 1)
            assert await terminate_keygate_connections(pg.location) >= 1
            status, body = await asyncio.wait_for(answer, SETTLE_TIMEOUT)
            await transaction.rollback()
            assert (status, body["error"]) == (503, "store_unavailable"), body
            assert await direct.get_key_by_name("mid-request") is None
            await eventually(a.ready, READY)
            status, body = await a.admin("POST", KEYS, {"name": "after", "roles": [ALL_ROLE]})
            assert status == 201, body
        assert tracebacks(caplog.records) == []
    finally:
        await blocker.close()
        await direct.close()


# Seconds the store stays cut off in the outage-log test: twenty polls at the test's 0.05 s
# interval, and several of the LISTEN connection's reconnection attempts (0.1 s back-off,
# doubling) fail meanwhile.
OUTAGE = 1.0


async def test_an_outage_logs_one_line_when_it_starts_and_one_when_it_ends(
    tmp_path: Path, backend: Backend, pg: StoreBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    relay = TcpRelay(urlsplit(pg.location).hostname or "", urlsplit(pg.location).port or 5432)
    await relay.start()
    direct, (steady,) = await seeded(pg, tmp_path / "seed", "steady")
    try:
        url = via(pg.location, relay.port)
        async with instance(tmp_path / "a", backend, url, pg.schema or "") as a:
            relay.cut()
            await asyncio.sleep(OUTAGE)
            assert await a.keyed(steady) == (200, "")
            relay.restore()
            await eventually(a.ready, READY)
            await asyncio.sleep(0.3)  # a few polls after the recovery
        feed = [r.getMessage() for r in caplog.records if r.name == "keygate.feed"]
        assert len([m for m in feed if "paused" in m]) == 1, feed
        assert len([m for m in feed if "recovered" in m]) == 1, feed
        assert tracebacks(caplog.records) == []
        assert [r.getMessage() for r in caplog.records if r.name.startswith("asyncpg")] == []
    finally:
        await direct.close()
        await relay.close()


async def test_connections_terminated_under_load_never_answer_500(
    tmp_path: Path, backend: Backend, pg: StoreBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    direct, _ = await seeded(pg, tmp_path / "seed", "steady")
    try:
        async with instance(tmp_path / "a", backend, pg.location, pg.schema or "") as a:
            statuses: list[tuple[int, str]] = []
            stop = asyncio.Event()

            async def killer() -> None:
                while not stop.is_set():
                    await terminate_keygate_connections(pg.location)
                    await asyncio.sleep(0.003)

            async def client(worker: int) -> None:
                for i in range(TERMINATION_ROUNDS):
                    status, body = await a.admin(
                        "POST", KEYS, {"name": f"load-{worker}-{i}", "roles": [ALL_ROLE]}
                    )
                    statuses.append((status, body.get("error", "") if status >= 400 else ""))
                    status, body = await a.admin("GET", f"{KEYS}?limit=5")
                    statuses.append((status, body.get("error", "") if status >= 400 else ""))

            killing = asyncio.create_task(killer())
            await asyncio.gather(*(client(worker) for worker in range(4)))
            stop.set()
            await killing
        assert {s for s in statuses} <= {(201, ""), (200, ""), (503, "store_unavailable")}, [
            s for s in statuses if s[0] not in (200, 201, 503)
        ]
        assert tracebacks(caplog.records) == []
    finally:
        await direct.close()


# Seconds /readyz may take on a silently partitioned store: the shipped probe waits 1 s.
PROBE_BOUND = 1.0
# Seconds an admin write may take on a silently partitioned store before its 503.
WRITE_BOUND = 5.0
# Seconds a pooled statement (and a wait for a pooled connection) may take in the partition
# test: the shipped 3 s, shorter, so the test does not wait them out; still far above what a
# statement takes on a loaded machine.
TEST_COMMAND_TIMEOUT = 1.0


def test_the_shipped_store_timeouts_fail_a_partitioned_write_within_the_bound() -> None:
    assert postgres_store.ACQUIRE_TIMEOUT < WRITE_BOUND
    assert postgres_store.COMMAND_TIMEOUT < WRITE_BOUND


async def test_a_silently_partitioned_store_fails_readiness_and_writes_fast(
    tmp_path: Path, backend: Backend, pg: StoreBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_store, "COMMAND_TIMEOUT", TEST_COMMAND_TIMEOUT)
    monkeypatch.setattr(postgres_store, "ACQUIRE_TIMEOUT", TEST_COMMAND_TIMEOUT)
    relay = TcpRelay(urlsplit(pg.location).hostname or "", urlsplit(pg.location).port or 5432)
    await relay.start()
    direct, (steady,) = await seeded(pg, tmp_path / "seed", "steady")
    try:
        url = via(pg.location, relay.port)
        async with instance(tmp_path / "a", backend, url, pg.schema or "") as a:
            await eventually(a.ready, READY)
            relay.stall()
            started = time.monotonic()
            status, body = await a.ready()
            probed = time.monotonic() - started
            assert status == 503 and body["checks"]["store"] is False, body
            assert probed < PROBE_BOUND, probed
            started = time.monotonic()
            status, body = await a.admin("POST", KEYS, {"name": "stalled", "roles": [ALL_ROLE]})
            wrote = time.monotonic() - started
            assert (status, body["error"]) == (503, "store_unavailable"), body
            assert wrote < WRITE_BOUND, wrote
            assert await a.keyed(steady) == (200, "")  # serving from memory meanwhile
            relay.restore()
            await eventually(a.ready, READY, SETTLE_TIMEOUT * 2)
        print(f"\npartitioned store: /readyz 503 in {probed:.2f}s, write 503 in {wrote:.2f}s")
    finally:
        await direct.close()
        await relay.close()
