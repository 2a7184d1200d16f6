"""Write answers tell the truth: a committed write is answered as done even when the worker's
own table refresh fails, and a create retried with the same Idempotency-Key creates nothing.

The refresh failure is injected by a subclass of the real SQLite store whose change-feed read
raises StoreUnavailableError while armed: the moment between a commit and the refresh that
follows it cannot be hit otherwise (the PostgreSQL fault tests in test_store_postgres.py
terminate real connections under load instead).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_admin_api import (
    KEYS,
    LIMITED,
    ROOT,
    WRITE,
    Client,
    ClientFactory,
    expect,
    expect_error,
    lookup,
    make_app,
    make_runtime,
)

from gateway.runtime.context import Runtime
from gateway.store.base import (
    Change,
    IdempotencyClaim,
    IdempotencyMismatchError,
    IdempotentReplayError,
    KeyStore,
    NewKey,
    StoreUnavailableError,
)
from gateway.store.sqlite import SqliteKeyStore

IDEMPOTENCY = "Idempotency-Key"


class RefreshFailingStore(SqliteKeyStore):
    """The real SQLite store, whose change-feed reads fail while `failing` is set."""

    failing = False

    async def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Fail like a store gone away, while armed; else read the feed."""
        if self.failing:
            raise StoreUnavailableError(self.location, "injected: the refresh read failed")
        return await super().changes_since(seq, limit)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    """A runtime whose store is the refresh-failing SQLite store on the same file."""
    rt = await make_runtime(tmp_path)
    await rt.store.close()
    store = RefreshFailingStore(tmp_path / "keygate.db")
    await store.open()
    rt.store = store
    try:
        yield rt
    finally:
        await store.close()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, runtime: Runtime) -> Client:
    return await aiohttp_client(make_app(runtime))


def failing(runtime: Runtime, on: bool) -> None:
    store = runtime.store
    assert isinstance(store, RefreshFailingStore)
    store.failing = on


async def test_a_committed_create_and_revoke_answer_success_when_the_refresh_fails(
    client: Client, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    failing(runtime, True)
    resp = await client.post(KEYS, json={"name": "committed", "roles": ["reader"]}, headers=ROOT)
    created = await expect(resp, 201)
    assert created["secret"].startswith("kg_") and created["key"]["name"] == "committed"
    resp = await client.post(f"{KEYS}/{created['key']['id']}/revoke", headers=WRITE)
    assert (await expect(resp, 200))["status"] == "revoked"
    resp = await client.post(f"{KEYS}/revoke-all", headers=WRITE)
    assert (await expect(resp, 200))["count"] == 0
    warnings = [r for r in caplog.records if "catch up" in r.getMessage()]
    assert len(warnings) == 3 and not any(r.exc_info for r in warnings)
    assert lookup(runtime, created["secret"]) is None  # the table lags meanwhile
    failing(runtime, False)
    await runtime.apply_own_writes()  # what the follower does on its next poll
    assert lookup(runtime, created["secret"]).revoked


async def test_a_retried_create_with_the_same_idempotency_key_creates_nothing(
    client: Client, runtime: Runtime
) -> None:
    body = {"name": "once", "roles": ["reader"], "description": "deploy bot"}
    resp = await client.post(KEYS, json=body, headers={**ROOT, IDEMPOTENCY: "req-1"})
    first = await expect(resp, 201)
    # The same request again (its answer was lost): the key is not created twice, and the
    # answer says so, naming the key without its secret.
    reordered = {"description": "deploy bot", "roles": ["reader"], "name": "once"}
    resp = await client.post(KEYS, json=reordered, headers={**ROOT, IDEMPOTENCY: "req-1"})
    replay = await expect_error(resp, 409, "idempotent_replay")
    assert replay["key"]["id"] == first["key"]["id"] and "secret" not in replay
    assert first["secret"] not in str(replay)
    assert [row.name for row in await runtime.store.list_keys()] == ["once"]
    # Another body under the same key is refused; another admin's key is their own.
    resp = await client.post(
        KEYS, json={**body, "name": "twice"}, headers={**ROOT, IDEMPOTENCY: "req-1"}
    )
    await expect_error(resp, 422, "idempotency_key_reused", field=IDEMPOTENCY)
    resp = await client.post(
        KEYS, json={**body, "name": "theirs"}, headers={**LIMITED, IDEMPOTENCY: "req-1"}
    )
    assert (await expect(resp, 201))["key"]["name"] == "theirs"


@pytest.mark.parametrize("value", ["", "x" * 256, "has space", "caf\u00e9"])
async def test_a_malformed_idempotency_key_is_refused(client: Client, value: str) -> None:
    resp = await client.post(
        KEYS,
        json={"name": "k", "roles": ["reader"]},
        headers={**ROOT, IDEMPOTENCY: value.encode().decode("latin-1")},
    )
    await expect_error(resp, 400, "invalid_request", field=IDEMPOTENCY)


async def test_a_create_retried_after_a_failed_refresh_is_answered_as_a_replay(
    client: Client, runtime: Runtime
) -> None:
    failing(runtime, True)
    body = {"name": "retried", "roles": ["reader"]}
    resp = await client.post(KEYS, json=body, headers={**ROOT, IDEMPOTENCY: "r-2"})
    created = await expect(resp, 201)
    failing(runtime, False)
    resp = await client.post(KEYS, json=body, headers={**ROOT, IDEMPOTENCY: "r-2"})
    replay = await expect_error(resp, 409, "idempotent_replay")
    assert replay["key"]["id"] == created["key"]["id"]


def new(name: str) -> NewKey:
    return NewKey(name, "", ("reader",), name.encode().ljust(32, b"\0"), "kg_test00")


async def test_idempotency_records_expire_after_their_window(backend_store: KeyStore) -> None:
    store = backend_store
    claim = IdempotencyClaim("k-1", "fp", not_before=100.0)
    row = await store.create_key(new("first"), "root", claim)
    with pytest.raises(IdempotentReplayError) as replayed:
        await store.create_key(new("second"), "root", claim)
    assert replayed.value.key_id == row.id and replayed.value.row == row
    with pytest.raises(IdempotencyMismatchError):
        await store.create_key(new("second"), "root", IdempotencyClaim("k-1", "other", 100.0))
    # Past the window (every record older than not_before is forgotten): a new create.
    later = IdempotencyClaim("k-1", "fp", not_before=row.created_at + 1)
    second = await store.create_key(new("second"), "root", later)
    await store.delete_key(second.id, "root")
    with pytest.raises(IdempotentReplayError) as gone:
        await store.create_key(
            new("third"), "root", IdempotencyClaim("k-1", "fp", second.created_at)
        )
    assert (gone.value.key_id, gone.value.row) == (second.id, None)
    # Without a claim, nothing is checked or recorded.
    assert (await store.create_key(new("fourth"), "root")).name == "fourth"
