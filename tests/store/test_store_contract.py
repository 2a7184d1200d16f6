"""The KeyStore contract, run unchanged against every backend: SQLite and a real PostgreSQL.

Each test gets a fresh database (an SQLite file, or its own schema in this run's PostgreSQL
database) through the parametrized `store_backend` fixture; a semantic difference between
the backends fails a test here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import time

import pytest
from support.stores import StoreBackend, load_auth_rows, new_key, secret_for

from gateway.keys.table import KeyTable
from gateway.ratelimit.limiters import RateLimit
from gateway.store.base import (
    AbandonedEvent,
    AdminAccount,
    AdminSession,
    AuthRow,
    BatchResult,
    Change,
    FeedPrunedError,
    KeyChanges,
    KeyRow,
    KeySort,
    KeyStatus,
    KeyStore,
    NameConflictError,
    NotFoundError,
    OutsideGrantsError,
    ReceiverState,
    SortPosition,
    StoreContents,
    StoreNotEmptyError,
)
from gateway.store.common import LOAD_CHUNK
from gateway.store.migrations import postgres as postgres_migrations
from gateway.store.migrations import sqlite as sqlite_migrations

ACTOR = "alice"


@pytest.fixture
def store(backend_store: KeyStore) -> KeyStore:
    """An open store of the backend under test, on a fresh database."""
    return backend_store


@pytest.fixture
def other(backend_other: KeyStore) -> KeyStore:
    """A second store on the same database, standing in for another process or instance."""
    return backend_other


def migrations_of(store_backend: StoreBackend) -> list[int]:
    """The migration versions the backend's code knows."""
    module = sqlite_migrations if store_backend.name == "sqlite" else postgres_migrations
    return [migration.version for migration in module.MIGRATIONS]


@pytest.mark.unmigrated
async def test_open_twice_and_close_twice_are_harmless(store_backend: StoreBackend) -> None:
    opened = store_backend.make()
    await asyncio.gather(opened.open(), opened.open())
    await opened.open()
    await opened.ping()  # raises unless it reads and writes
    await opened.close()
    await opened.close()
    with pytest.raises(RuntimeError, match="not open"):
        await opened.ping()


@pytest.mark.unmigrated
async def test_concurrent_first_opens_migrate_once(store_backend: StoreBackend) -> None:
    stores = [store_backend.make() for _ in range(8)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        versions = await store_backend.rows("SELECT version FROM schema_version")
        assert sorted(row[0] for row in versions) == migrations_of(store_backend)
        for opened in stores:
            await opened.ping()  # raises unless it reads and writes
    finally:
        for opened in stores:
            await opened.close()


async def test_using_a_closed_store_fails_clearly(store_backend: StoreBackend) -> None:
    closed = store_backend.make()
    with pytest.raises(RuntimeError, match="not open"):
        await closed.get_key(1)


async def test_create_key_returns_the_stored_row(store: KeyStore) -> None:
    before = time.time()
    row = await store.create_key(
        new_key("ci-bot", ("reader", "writer"), "builds", expires_at=before + 3600), ACTOR
    )
    assert row.id > 0
    assert (row.name, row.description, row.roles) == ("ci-bot", "builds", ("reader", "writer"))
    assert row.status == "active"
    assert row.digest == hashlib.sha256(secret_for("ci-bot").encode()).digest()
    assert row.prefix == secret_for("ci-bot")[:10]
    assert before <= row.created_at == row.updated_at <= time.time()
    assert row.created_by == ACTOR
    assert row.revoked_at is None
    assert row.expires_at == before + 3600
    assert row.last_used_at is None
    assert row.use_count == 0
    assert await store.get_key(row.id) == row
    assert await store.get_key_by_name("ci-bot") == row


async def test_unknown_keys_are_none(store: KeyStore) -> None:
    assert await store.get_key(12345) is None
    assert await store.get_key_by_name("nobody") is None


async def test_create_key_name_conflict(store: KeyStore, store_backend: StoreBackend) -> None:
    await store.create_key(new_key("dup"), ACTOR)
    seq = await store.current_seq()
    with pytest.raises(NameConflictError, match="dup"):
        await store.create_key(dataclasses.replace(new_key("other"), name="dup"), ACTOR)
    assert await store.current_seq() == seq
    assert await store_backend.rows("SELECT COUNT(*) FROM keys") == [(1,)]
    assert [e.action for e in await store.list_audit()] == ["create"]


async def test_names_are_case_sensitive(store: KeyStore) -> None:
    await store.create_key(new_key("bot"), ACTOR)
    other_case = await store.create_key(new_key("Bot"), ACTOR)
    assert await store.get_key_by_name("Bot") == other_case


async def test_rows_read_back_are_ordinary_keyrows(store: KeyStore) -> None:
    created = await store.create_key(new_key("plain", ("a", "b")), ACTOR)
    (loaded,) = await store.list_keys()
    rebuilt = KeyRow(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(KeyRow)})
    assert loaded == rebuilt == created
    assert hash(loaded) == hash(rebuilt)
    assert type(loaded) is KeyRow
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.name = "changed"  # type: ignore[misc]
    assert dataclasses.replace(loaded, name="x").name == "x"


async def test_list_keys_filters_by_status(store: KeyStore) -> None:
    now = 1_000_000.0
    live = await store.create_key(new_key("live"), ACTOR)
    later = await store.create_key(new_key("later", expires_at=now + 10), ACTOR)
    expired = await store.create_key(new_key("expired", expires_at=now - 10), ACTOR)
    at_edge = await store.create_key(new_key("edge", expires_at=now), ACTOR)
    revoked = await store.create_key(new_key("revoked"), ACTOR)
    revoked = await store.set_revoked(revoked.id, True, ACTOR)
    revoked_expired = await store.create_key(new_key("rev-exp", expires_at=now - 10), ACTOR)
    revoked_expired = await store.set_revoked(revoked_expired.id, True, ACTOR)

    def names(rows: list[KeyRow]) -> list[str]:
        return [row.name for row in rows]

    everyone = [live, later, expired, at_edge, revoked, revoked_expired]
    assert await store.list_keys(now=now) == everyone
    assert names(await store.list_keys(status="active", now=now)) == ["live", "later"]
    assert names(await store.list_keys(status="expired", now=now)) == ["expired", "edge"]
    assert names(await store.list_keys(status="revoked", now=now)) == ["revoked", "rev-exp"]
    # An expired key keeps status "active" in the store; expiry is a matter of time.
    assert (await store.get_key(expired.id)) is not None
    assert expired.status == "active"
    # Without `now`, the present is used: every expiry above lies in 1970.
    assert names(await store.list_keys(status="expired")) == ["later", "expired", "edge"]


async def test_list_keys_query_matches_name_or_description(store: KeyStore) -> None:
    await store.create_key(new_key("billing-bot", description="invoices"), ACTOR)
    await store.create_key(new_key("reports", description="Nightly BILLING export"), ACTOR)
    await store.create_key(new_key("other", description="nothing"), ACTOR)
    await store.create_key(new_key("100%_sure", description=""), ACTOR)
    await store.create_key(new_key("1000-sure", description=""), ACTOR)

    async def names(query: str) -> list[str]:
        return [row.name for row in await store.list_keys(query=query)]

    assert await names("billing") == ["billing-bot", "reports"]
    assert await names("INVOICE") == ["billing-bot"]
    assert await names("%_") == ["100%_sure"]  # wildcards are plain characters
    assert await names("0_s") == []
    assert await names("zzz") == []
    assert len(await names("")) == 5


async def test_list_keys_by_digest_finds_the_key_of_a_secret_or_its_rolled_one(
    store: KeyStore,
) -> None:
    first = await store.create_key(new_key("first"), ACTOR)
    await store.create_key(new_key("second", description=secret_for("first")), ACTOR)
    digest = hashlib.sha256(secret_for("first").encode()).digest()

    async def names(digest: bytes, **filters: object) -> list[str]:
        rows = await store.list_keys(digest=digest, **filters)  # type: ignore[arg-type]
        return [row.name for row in rows]

    assert await names(digest) == ["first"]
    assert await names(digest, status="active") == ["first"]
    assert await names(digest, status="revoked") == []
    assert await names(digest, sort="name") == ["first"]
    assert await names(hashlib.sha256(b"nobody").digest()) == []
    new_digest = hashlib.sha256(b"kg_rolled").digest()
    await store.roll_key(first.id, new_digest, "kg_rolledx", 3600, ACTOR)
    assert await names(digest) == await names(new_digest) == ["first"]


async def test_list_keys_pages_by_id(store: KeyStore) -> None:
    created = [await store.create_key(new_key(f"k{i:02}"), ACTOR) for i in range(7)]
    pages: list[list[KeyRow]] = []
    after = 0
    while page := await store.list_keys(limit=3, after_id=after):
        pages.append(page)
        after = page[-1].id
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [row for page in pages for row in page] == created
    assert await store.list_keys(limit=0) == []
    revoked = await store.set_revoked(created[5].id, True, ACTOR)
    assert await store.list_keys(status="revoked", after_id=created[5].id) == []
    assert await store.list_keys(status="revoked", after_id=created[4].id) == [revoked]
    with pytest.raises(ValueError):
        await store.list_keys(limit=-1)


async def test_update_key_applies_only_given_fields(store: KeyStore) -> None:
    row = await store.create_key(new_key("edit-me", ("a",), "old words"), ACTOR)
    updated = await store.update_key(
        row.id, KeyChanges(description="new words", roles=("a", "b")), "bob"
    )
    assert updated.name == "edit-me"
    assert updated.description == "new words"
    assert updated.roles == ("a", "b")
    assert updated.expires_at is None
    assert updated.updated_at >= row.updated_at
    assert updated.created_at == row.created_at
    assert updated.created_by == ACTOR
    assert await store.get_key(row.id) == updated
    event = (await store.list_audit(key_id=row.id, limit=1))[0]
    assert (event.action, event.actor, event.key_name) == ("edit", "bob", "edit-me")
    assert event.details == {
        "before": {"description": "old words", "roles": ["a"]},
        "after": {"description": "new words", "roles": ["a", "b"]},
    }


async def test_update_key_sets_and_clears_expiry(store: KeyStore) -> None:
    row = await store.create_key(new_key("expiring"), ACTOR)
    dated = await store.update_key(row.id, KeyChanges(expires_at=5000.0), ACTOR)
    assert dated.expires_at == 5000.0
    kept = await store.update_key(row.id, KeyChanges(description="x"), ACTOR)
    assert kept.expires_at == 5000.0
    cleared = await store.update_key(row.id, KeyChanges(clear_expiry=True), ACTOR)
    assert cleared.expires_at is None
    assert (await store.get_key(row.id)) == cleared
    with pytest.raises(ValueError, match="not both"):
        await store.update_key(row.id, KeyChanges(expires_at=1.0, clear_expiry=True), ACTOR)


async def test_rename_key_and_rename_conflict(store: KeyStore) -> None:
    first = await store.create_key(new_key("first"), ACTOR)
    await store.create_key(new_key("second"), ACTOR)
    renamed = await store.update_key(first.id, KeyChanges(name="primary"), ACTOR)
    assert renamed.name == "primary"
    assert await store.get_key_by_name("first") is None
    assert await store.get_key_by_name("primary") == renamed
    event = (await store.list_audit(key_id=first.id, limit=1))[0]
    assert event.key_name == "primary"
    assert event.details == {"before": {"name": "first"}, "after": {"name": "primary"}}

    seq = await store.current_seq()
    with pytest.raises(NameConflictError, match="second"):
        await store.update_key(first.id, KeyChanges(name="second", description="y"), ACTOR)
    assert await store.get_key(first.id) == renamed
    assert await store.current_seq() == seq


async def test_update_key_without_a_real_change_writes_nothing(store: KeyStore) -> None:
    row = await store.create_key(new_key("same", ("a",), "words"), ACTOR)
    seq = await store.current_seq()
    unchanged = await store.update_key(
        row.id, KeyChanges(name="same", description="words", roles=("a",)), ACTOR
    )
    assert unchanged == row
    assert await store.current_seq() == seq
    assert [e.action for e in await store.list_audit()] == ["create"]


async def test_writes_to_unknown_keys_raise_not_found(store: KeyStore) -> None:
    with pytest.raises(NotFoundError):
        await store.update_key(99, KeyChanges(description="x"), ACTOR)
    with pytest.raises(NotFoundError):
        await store.set_revoked(99, True, ACTOR)
    with pytest.raises(NotFoundError):
        await store.delete_key(99, ACTOR)
    assert await store.current_seq() == 0
    assert await store.list_audit() == []


async def test_revoke_and_reinstate_one_key(store: KeyStore) -> None:
    row = await store.create_key(new_key("toggle"), ACTOR)
    before = time.time()
    revoked = await store.set_revoked(row.id, True, "bob")
    assert revoked.status == "revoked"
    assert revoked.revoked_at is not None
    assert before <= revoked.revoked_at == revoked.updated_at <= time.time()
    assert await store.get_key(row.id) == revoked

    again = await store.set_revoked(row.id, True, "bob")
    assert again == revoked  # already revoked: unchanged, revoked_at kept

    reinstated = await store.set_revoked(row.id, False, "carol")
    assert reinstated.status == "active"
    assert reinstated.revoked_at is None
    assert await store.get_key(row.id) == reinstated
    actions = [(e.action, e.actor) for e in await store.list_audit(key_id=row.id)]
    assert actions == [("reinstate", "carol"), ("revoke", "bob"), ("create", ACTOR)]


async def test_delete_key_removes_it_for_good(store: KeyStore) -> None:
    row = await store.create_key(new_key("doomed"), ACTOR)
    revoked = await store.set_revoked(row.id, True, ACTOR)
    deleted = await store.delete_key(row.id, "bob")
    assert deleted == revoked
    assert await store.get_key(row.id) is None
    assert await store.get_key_by_name("doomed") is None
    with pytest.raises(NotFoundError):
        await store.delete_key(row.id, "bob")
    event = (await store.list_audit(limit=1))[0]
    assert (event.action, event.actor, event.key_id, event.key_name) == (
        "delete",
        "bob",
        row.id,
        "doomed",
    )
    # The name is free again.
    assert (await store.create_key(new_key("doomed"), ACTOR)).id != row.id


async def test_batch_actions(store: KeyStore) -> None:
    keys = [await store.create_key(new_key(f"b{i}"), ACTOR) for i in range(5)]
    early = await store.set_revoked(keys[0].id, True, ACTOR)

    assert (await store.revoke_all("bob"))[:2] == (4, 0)
    rows = await store.list_keys()
    assert {row.status for row in rows} == {"revoked"}
    assert all(row.revoked_at is not None for row in rows)
    assert rows[0] == early  # the key revoked earlier is untouched
    assert all(row.revoked_at == row.updated_at for row in rows)
    assert (await store.revoke_all("bob"))[:2] == (0, 0)

    assert (await store.reinstate_all("carol"))[:2] == (5, 0)
    rows = await store.list_keys()
    assert {row.status for row in rows} == {"active"}
    assert all(row.revoked_at is None for row in rows)

    await store.set_revoked(keys[1].id, True, ACTOR)
    await store.set_revoked(keys[3].id, True, ACTOR)
    assert (await store.delete_revoked("dave"))[:2] == (2, 0)
    assert [row.name for row in await store.list_keys()] == ["b0", "b2", "b4"]
    assert (await store.delete_revoked("dave"))[:2] == (0, 0)

    batches = [
        e
        for e in await store.list_audit(limit=100)
        if e.action in ("revoke_all", "reinstate_all", "delete_revoked")
    ]
    assert all(len(e.details.pop("batch_id")) == 32 for e in batches)  # uuid4 hex
    batch = [(e.action, e.actor, e.details) for e in batches]
    assert batch == [
        ("delete_revoked", "dave", {"count": 0, "skipped": 0, "key_ids": []}),
        ("delete_revoked", "dave", {"count": 2, "skipped": 0, "key_ids": [keys[1].id, keys[3].id]}),
        (
            "reinstate_all",
            "carol",
            {"count": 5, "skipped": 0, "key_ids": [k.id for k in keys], "scope": "all"},
        ),
        ("revoke_all", "bob", {"count": 0, "skipped": 0, "key_ids": []}),
        ("revoke_all", "bob", {"count": 4, "skipped": 0, "key_ids": [k.id for k in keys[1:]]}),
    ]


async def test_batch_action_is_all_or_nothing(store: KeyStore, store_backend: StoreBackend) -> None:
    for i in range(5):
        await store.create_key(new_key(f"t{i}"), ACTOR)
    seq = await store.current_seq()
    audit_count = len(await store.list_audit())
    await store_backend.refuse("refuse_t3", "UPDATE", "keys", "OLD.name = 't3'", "refused")
    await store_backend.refuse("refuse_delete", "DELETE", "keys", "OLD.name = 't3'", "refused")

    with pytest.raises(store_backend.refused, match="refused"):
        await store.revoke_all(ACTOR)
    assert {row.status for row in await store.list_keys()} == {"active"}
    assert await store.current_seq() == seq
    assert len(await store.list_audit()) == audit_count

    # Revoke every key, then make delete_revoked trip over t3.
    await store_backend.allow("refuse_t3", "keys")
    assert (await store.revoke_all(ACTOR))[:2] == (5, 0)
    seq = await store.current_seq()
    with pytest.raises(store_backend.refused, match="refused"):
        await store.delete_revoked(ACTOR)
    assert len(await store.list_keys()) == 5
    assert await store.current_seq() == seq

    # The connection is not left inside a transaction: the next write works.
    assert (await store.create_key(new_key("after"), ACTOR)).name == "after"


async def test_single_key_write_is_all_or_nothing(
    store: KeyStore, store_backend: StoreBackend
) -> None:
    await store_backend.refuse("no_audit", "INSERT", "audit", "1 = 1", "audit down")
    with pytest.raises(store_backend.refused, match="audit down"):
        await store.create_key(new_key("half"), ACTOR)
    assert await store.get_key_by_name("half") is None
    assert await store.current_seq() == 0
    await store_backend.allow("no_audit", "audit")
    assert (await store.create_key(new_key("half"), ACTOR)).name == "half"


async def test_cancelled_writes_leave_no_partial_state(store: KeyStore) -> None:
    outcomes: set[str] = set()
    # Cancel after 0 to ~4 ms, so the cancellation lands before, inside and after the
    # transaction (one create_key takes about a millisecond); on a slow machine, wait
    # longer until some create_key has finished too.
    for step in range(200):
        if step >= 40 and outcomes == {"absent", "written"}:
            break
        name = f"cancel-{step}"
        task = asyncio.create_task(store.create_key(new_key(name), ACTOR))
        await asyncio.sleep(step * 0.0001 if step < 40 else 0.004 * (step - 39))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        row = await store.get_key_by_name(name)
        changes = [c for c in await store.changes_since(0) if c.row and c.row.name == name]
        events = await store.list_audit(key_name=name)
        if row is None:
            outcomes.add("absent")
            assert (changes, events) == ([], [])
        else:
            outcomes.add("written")
            assert len(changes) == 1
            assert [e.action for e in events] == ["create"]
    assert outcomes == {"absent", "written"}
    assert (await store.create_key(new_key("still-fine"), ACTOR)).name == "still-fine"


async def test_reads_never_see_another_tasks_unfinished_transaction(
    store: KeyStore, store_backend: StoreBackend
) -> None:
    for i in range(3):
        await store.create_key(new_key(f"r{i}"), ACTOR)
    seq = await store.current_seq()
    await store_backend.refuse(
        "fail_late", "INSERT", "audit", "NEW.action = 'revoke_all'", "late failure"
    )
    seen: list[tuple[int, set[KeyStatus]]] = []

    async def watch() -> None:
        while not writer.done():
            current = await store.current_seq()
            statuses = {row.status for row in await store.list_keys()}
            seen.append((current, statuses))

    writer = asyncio.create_task(store.revoke_all(ACTOR))
    watcher = asyncio.create_task(watch())
    with pytest.raises(store_backend.refused, match="late failure"):
        await writer
    await watcher
    assert seen
    assert all(entry == (seq, {"active"}) for entry in seen)


async def test_concurrent_writes_on_one_store_are_serialised(store: KeyStore) -> None:
    rows = await asyncio.gather(*(store.create_key(new_key(f"c{i}"), ACTOR) for i in range(30)))
    assert len({row.id for row in rows}) == 30
    changes = await store.changes_since(0)
    assert [c.seq for c in changes] == list(range(1, 31))
    assert {c.digest for c in changes} == {row.digest for row in rows}


async def test_every_key_write_appends_to_the_change_feed(
    store: KeyStore, store_backend: StoreBackend
) -> None:
    a = await store.create_key(new_key("a"), ACTOR)
    b = await store.create_key(new_key("b"), ACTOR)
    c = await store.create_key(new_key("c"), ACTOR)
    await store.update_key(a.id, KeyChanges(description="edited"), ACTOR)
    await store.set_revoked(b.id, True, ACTOR)
    await store.delete_key(c.id, ACTOR)
    assert (await store.revoke_all(ACTOR))[:2] == (1, 0)  # a
    assert (await store.reinstate_all(ACTOR))[:2] == (2, 0)  # a, b
    await store.set_revoked(b.id, True, ACTOR)
    assert (await store.delete_revoked(ACTOR))[:2] == (1, 0)  # b
    await store.record_usage({a.id: (time.time(), 3)})  # not a feed event

    changes = await store.changes_since(0)
    assert [c.seq for c in changes] == list(range(1, 12))
    assert [c.digest for c in changes] == [
        a.digest,  # create a
        b.digest,  # create b
        c.digest,  # create c
        a.digest,  # edit a
        b.digest,  # revoke b
        c.digest,  # delete c
        a.digest,  # revoke_all
        a.digest,  # reinstate_all (ordered by id)
        b.digest,
        b.digest,  # revoke b
        b.digest,  # delete_revoked
    ]
    current_a = await store.get_key(a.id)
    assert current_a is not None
    assert current_a.use_count == 3
    for change in changes:
        # Each entry carries the key as it is now: None once it is gone.
        assert change.row == (current_a if change.digest == a.digest else None)
    ops = await store_backend.rows("SELECT op FROM key_changes ORDER BY seq")
    assert [op for (op,) in ops] == ["upsert"] * 5 + ["delete"] + ["upsert"] * 4 + ["delete"]
    assert await store.current_seq() == 11


async def test_changes_since_pages_in_sequence_order(store: KeyStore) -> None:
    rows = [await store.create_key(new_key(f"p{i}"), ACTOR) for i in range(5)]
    first = await store.changes_since(0, limit=2)
    assert [(c.seq, c.row) for c in first] == [(1, rows[0]), (2, rows[1])]
    rest = await store.changes_since(2, limit=10)
    assert [c.row for c in rest] == rows[2:]
    assert await store.changes_since(5) == []
    assert await store.changes_since(0, limit=0) == []


async def test_empty_store(store: KeyStore) -> None:
    assert await store.current_seq() == 0
    assert await load_auth_rows(store) == ([], 0)
    assert await store.changes_since(0) == []
    assert await store.list_keys() == []
    assert await store.list_admins() == []
    await store.ping()  # raises unless it reads and writes


async def test_load_auth_returns_every_row_and_its_sequence(store: KeyStore) -> None:
    made = [
        await store.create_key(new_key(f"l{i}", ("r1", "r2") if i % 2 else ("r3",)), ACTOR)
        for i in range(6)
    ]
    made[2] = await store.set_revoked(made[2].id, True, ACTOR)
    rows, seq = await load_auth_rows(store)
    assert rows == [
        (r.digest, r.id, r.name, r.roles, r.status, r.expires_at, None, None, None) for r in made
    ]
    assert seq == await store.current_seq() == 7
    # Rows with the same roles share one tuple object.
    assert rows[1][3] is rows[3][3] is rows[5][3]
    assert rows[0][3] is rows[2][3] is rows[4][3]


async def test_load_auth_handles_many_keys(store: KeyStore, store_backend: StoreBackend) -> None:
    count = 30_000
    role_sets = ['["a","b"]', '["c"]', "[]"]
    await store_backend.insert_bulk_keys(
        [(f"bulk-{i}", role_sets[i % 3], os.urandom(32)) for i in range(count)]
    )
    rows, seq = await load_auth_rows(store)
    assert len(rows) == count
    assert seq == 0
    assert [row[1] for row in rows] == sorted(row[1] for row in rows)
    assert len({id(row[3]) for row in rows}) == 3
    assert rows[4][3] == ("c",)
    assert rows[5][3] == ()


async def test_load_auth_feeds_lean_rows_and_the_sequence(store: KeyStore) -> None:
    a = await store.create_key(new_key("lean-a", ("r1", "r2"), expires_at=9.0), ACTOR)
    b = await store.create_key(new_key("lean-b", ("r1", "r2")), ACTOR)
    b = await store.set_revoked(b.id, True, ACTOR)
    c = await store.create_key(new_key("lean-c", ()), ACTOR)
    chunks: list[list[AuthRow]] = []
    seq = await store.load_auth(chunks.append)
    assert seq == await store.current_seq() == 4
    assert chunks == [
        [
            (a.digest, a.id, "lean-a", ("r1", "r2"), "active", 9.0, None, None, None),
            (b.digest, b.id, "lean-b", ("r1", "r2"), "revoked", None, None, None, None),
            (c.digest, c.id, "lean-c", (), "active", None, None, None, None),
        ]
    ]
    assert chunks[0][0][3] is chunks[0][1][3]


async def test_load_auth_streams_many_keys_in_chunks(
    store: KeyStore, store_backend: StoreBackend
) -> None:
    count = LOAD_CHUNK + LOAD_CHUNK // 2
    await store_backend.insert_bulk_keys(
        [(f"bulk-{i}", '["a","b"]' if i % 2 else "[]", os.urandom(32)) for i in range(count)]
    )
    sizes: list[int] = []
    ids: list[int] = []
    roles: set[int] = set()

    def sink(rows: list[AuthRow]) -> None:
        sizes.append(len(rows))
        ids.extend(row[1] for row in rows)
        roles.update(id(row[3]) for row in rows)

    assert await store.load_auth(sink) == 0
    assert sizes == [LOAD_CHUNK, LOAD_CHUNK // 2]
    assert ids == sorted(ids)
    assert len(set(ids)) == count
    assert len(roles) == 2


async def test_load_auth_sink_failure_propagates(store: KeyStore) -> None:
    await store.create_key(new_key("x"), ACTOR)

    def sink(rows: list[AuthRow]) -> None:
        raise LookupError("sink broke")

    with pytest.raises(LookupError, match="sink broke"):
        await store.load_auth(sink)
    assert (await store.create_key(new_key("y"), ACTOR)).name == "y"


async def test_record_usage_adds_counts_and_keeps_latest_time(store: KeyStore) -> None:
    a = await store.create_key(new_key("used-a"), ACTOR)
    b = await store.create_key(new_key("used-b"), ACTOR)
    seq = await store.current_seq()
    await store.record_usage({a.id: (1000.0, 2), b.id: (500.0, 1), 9999: (1.0, 1)})
    await store.record_usage({a.id: (900.0, 5)})  # older time: last_used_at stays 1000
    await store.record_usage({})
    got_a, got_b = await store.get_key(a.id), await store.get_key(b.id)
    assert got_a is not None
    assert got_b is not None
    assert (got_a.use_count, got_a.last_used_at) == (7, 1000.0)
    assert (got_b.use_count, got_b.last_used_at) == (1, 500.0)
    assert got_a.updated_at == a.updated_at
    assert await store.current_seq() == seq
    assert [e.action for e in await store.list_audit()] == ["create", "create"]


async def test_key_lifecycle_is_audited_without_secrets_or_digests(
    store: KeyStore, store_backend: StoreBackend
) -> None:
    row = await store.create_key(new_key("audited", ("r",), expires_at=4_102_444_800.0), ACTOR)
    await store.update_key(row.id, KeyChanges(roles=("r", "s")), ACTOR)
    await store.set_revoked(row.id, True, ACTOR)
    await store.set_revoked(row.id, False, ACTOR)
    await store.revoke_all(ACTOR)
    await store.reinstate_all(ACTOR)
    await store.revoke_all(ACTOR)
    await store.delete_revoked(ACTOR)
    other = await store.create_key(new_key("audited-2"), ACTOR)
    await store.delete_key(other.id, ACTOR)

    events = await store.list_audit()
    assert [e.action for e in reversed(events)] == [
        "create",
        "edit",
        "revoke",
        "reinstate",
        "revoke_all",
        "reinstate_all",
        "revoke_all",
        "delete_revoked",
        "create",
        "delete",
    ]
    assert events[-1].details == {"roles": ["r"], "expires_at": "2100-01-01T00:00:00Z"}
    assert all(e.actor == ACTOR for e in events)
    ids = [e.id for e in events]
    assert ids == sorted(ids, reverse=True)
    dumped = json.dumps([dataclasses.asdict(e) for e in events], default=str)
    for name in ("audited", "audited-2"):
        digest = hashlib.sha256(secret_for(name).encode()).digest()
        assert digest.hex() not in dumped
        assert secret_for(name) not in dumped
    for blob in await store_backend.rows("SELECT details FROM audit"):
        assert row.digest.hex() not in blob[0]


async def test_list_audit_filters_and_pages_newest_first(store: KeyStore) -> None:
    await store.append_audit("alice", "login")
    await store.append_audit("bob", "login")
    first = time.time()
    await store.append_audit("alice", "policy_reload", details={"roles": 12})
    await store.append_audit("bob", "note", key_id=7, key_name="seven", details={"n": 1})
    await store.append_audit("alice", "note", key_id=7, key_name="seven")

    everything = await store.list_audit()
    assert [(e.actor, e.action) for e in everything] == [
        ("alice", "note"),
        ("bob", "note"),
        ("alice", "policy_reload"),
        ("bob", "login"),
        ("alice", "login"),
    ]
    assert everything[2].details == {"roles": 12}
    assert everything[4].details == {}
    assert everything[4].key_id is None
    assert everything[4].key_name is None

    assert [e.actor for e in await store.list_audit(key_id=7)] == ["alice", "bob"]
    assert [e.actor for e in await store.list_audit(key_name="seven")] == ["alice", "bob"]
    assert [e.action for e in await store.list_audit(actor="bob")] == ["note", "login"]
    assert len(await store.list_audit(since=first)) == 3
    assert await store.list_audit(since=time.time() + 60) == []
    assert [e.action for e in await store.list_audit(actor="alice", key_id=7)] == ["note"]

    page = await store.list_audit(limit=2)
    assert page == everything[:2]
    page = await store.list_audit(limit=2, before_id=page[-1].id)
    assert page == everything[2:4]
    page = await store.list_audit(limit=2, before_id=page[-1].id)
    assert page == everything[4:]
    assert await store.list_audit(before_id=everything[-1].id) == []


async def test_admin_accounts(store: KeyStore) -> None:
    before = time.time()
    zed = await store.add_admin("zed", "hash-z", ("r1",), False, "cli:root")
    assert zed == AdminAccount("zed", "hash-z", ("r1",), False, zed.created_at, zed.created_at)
    assert before <= zed.created_at <= time.time()
    amy = await store.add_admin("amy", "hash-a", (), True, "cli:root")
    with pytest.raises(NameConflictError, match="zed"):
        await store.add_admin("zed", "other", (), False, "cli:root")

    assert await store.get_admin("zed") == zed
    assert await store.get_admin("nobody") is None
    assert await store.list_admins() == [amy, zed]

    await store.set_admin_password("zed", "hash-z2", "amy")
    changed = await store.get_admin("zed")
    assert changed is not None
    assert changed.password_hash == "hash-z2"
    assert changed.updated_at >= zed.updated_at

    granted = await store.set_admin_grants("zed", ("r1", "r2"), False, "amy")
    assert (granted.grants, granted.grant_all) == (("r1", "r2"), False)
    assert await store.get_admin("zed") == granted
    everything = await store.set_admin_grants("zed", (), True, "amy")
    assert await store.get_admin("zed") == everything

    await store.remove_admin("zed", "amy")
    assert await store.get_admin("zed") is None
    assert await store.list_admins() == [amy]

    with pytest.raises(NotFoundError):
        await store.set_admin_password("zed", "x", "amy")
    with pytest.raises(NotFoundError):
        await store.set_admin_grants("zed", (), False, "amy")
    with pytest.raises(NotFoundError):
        await store.remove_admin("zed", "amy")

    events = list(reversed(await store.list_audit()))
    assert [(e.action, e.actor, e.details.get("admin")) for e in events] == [
        ("admin_add", "cli:root", "zed"),
        ("admin_add", "cli:root", "amy"),
        ("admin_passwd", "amy", "zed"),
        ("admin_grants", "amy", "zed"),
        ("admin_grants", "amy", "zed"),
        ("admin_remove", "amy", "zed"),
    ]
    assert events[0].details == {"admin": "zed", "grants": ["r1"], "grant_all": False}
    assert events[3].details == {
        "admin": "zed",
        "before": {"grants": ["r1"], "grant_all": False},
        "after": {"grants": ["r1", "r2"], "grant_all": False},
    }
    dumped = json.dumps([e.details for e in events])
    assert "hash-" not in dumped
    assert all(e.key_id is None and e.key_name is None for e in events)


async def test_two_instances_follow_each_other(store: KeyStore, other: KeyStore) -> None:
    seq = await other.current_seq()
    mine = await store.create_key(new_key("from-a"), ACTOR)
    seen = await other.changes_since(seq)
    assert [(c.digest, c.row) for c in seen] == [(mine.digest, mine)]

    revoked = await other.set_revoked(mine.id, True, "bob")
    seen = await store.changes_since(seen[-1].seq)
    assert [c.row for c in seen] == [revoked]

    theirs = await other.create_key(new_key("from-b"), "bob")
    assert await store.list_keys() == [revoked, theirs]
    assert (await load_auth_rows(store))[1] == await other.current_seq()

    with pytest.raises(NameConflictError):
        await store.create_key(dataclasses.replace(new_key("x"), name="from-b"), ACTOR)


async def test_two_instances_writing_at_once(store: KeyStore, other: KeyStore) -> None:
    creating = asyncio.gather(
        *((store if i % 2 else other).create_key(new_key(f"race-{i}"), ACTOR) for i in range(20))
    )
    revoked, _, rows = await asyncio.gather(
        store.revoke_all(ACTOR), other.record_usage({1: (1.0, 1)}), creating
    )
    assert len({row.id for row in rows}) == 20
    changes = await store.changes_since(0)
    assert [c.seq for c in changes] == list(range(1, 21 + revoked.changed))
    assert {c.digest for c in changes} == {row.digest for row in rows}
    assert [c.seq for c in await other.changes_since(0)] == [c.seq for c in changes]


async def test_get_key_by_digest(store: KeyStore) -> None:
    row = await store.create_key(new_key("by-digest"), ACTOR)
    assert await store.get_key_by_digest(row.digest) == row
    assert await store.get_key_by_digest(hashlib.sha256(b"nothing").digest()) is None


async def test_list_keys_query_matches_the_display_prefix(store: KeyStore) -> None:
    await store.create_key(dataclasses.replace(new_key("a"), prefix="kg_AbCdEfG"), ACTOR)
    await store.create_key(dataclasses.replace(new_key("b"), prefix="kg_ZzZzZzZ"), ACTOR)
    assert [row.name for row in await store.list_keys(query="kg_abcd")] == ["a"]


async def test_audit_details_hold_iso_times(store: KeyStore) -> None:
    moment = 4_102_444_800.0  # 2100-01-01T00:00:00Z
    row = await store.create_key(new_key("timed", expires_at=moment), ACTOR)
    await store.update_key(row.id, KeyChanges(expires_at=moment + 86_400), ACTOR)
    await store.update_key(row.id, KeyChanges(clear_expiry=True), ACTOR)
    details = [event.details for event in await store.list_audit()]
    assert details[2]["expires_at"] == "2100-01-01T00:00:00Z"
    assert details[1]["before"]["expires_at"] == "2100-01-01T00:00:00Z"
    assert details[1]["after"]["expires_at"] == "2100-01-02T00:00:00Z"
    assert details[0]["after"]["expires_at"] is None


async def test_login_failures_are_counted_per_subject_and_shared(
    store: KeyStore, other: KeyStore
) -> None:
    await store.record_login_failure(("addr:10.0.0.1", "acct:root"), at=100.0, forget_before=0.0)
    await other.record_login_failure(("addr:10.0.0.2", "acct:root"), at=105.0, forget_before=0.0)
    counts = await store.login_failures(("addr:10.0.0.1", "acct:root", "acct:x"), since=0.0)
    assert counts == {"addr:10.0.0.1": (1, 100.0), "acct:root": (2, 105.0)}
    assert await other.login_failures(("acct:root",), since=101.0) == {"acct:root": (1, 105.0)}
    # Old failures are forgotten when new ones are written.
    await store.record_login_failure(("addr:10.0.0.3",), at=500.0, forget_before=400.0)
    assert await store.login_failures(("acct:root", "addr:10.0.0.3"), since=0.0) == {
        "addr:10.0.0.3": (1, 500.0)
    }


async def test_batches_can_be_limited_to_keys_within_a_grant_set(store: KeyStore) -> None:
    inside = await store.create_key(new_key("inside", ("reader",)), ACTOR)
    outside = await store.create_key(new_key("outside", ("reader", "writer")), ACTOR)
    assert (await store.revoke_all(ACTOR, grants=frozenset({"reader"})))[:2] == (1, 1)
    assert (await store.get_key(inside.id)).status == "revoked"  # type: ignore[union-attr]
    assert (await store.get_key(outside.id)).status == "active"  # type: ignore[union-attr]
    assert (await store.revoke_all(ACTOR))[:2] == (1, 0)
    assert (await store.delete_revoked(ACTOR, grants=frozenset()))[:2] == (0, 2)
    event = (await store.list_audit(limit=1))[0]
    assert event.details.pop("batch_id")
    assert event.details == {"count": 0, "skipped": 2, "key_ids": []}


# --------------------------------------------------------------------------- feed pruning


async def test_pruning_keeps_the_newest_entries_and_marks_what_is_gone(store: KeyStore) -> None:
    rows = [await store.create_key(new_key(f"f{i}"), ACTOR) for i in range(6)]
    assert await store.prune_feed(keep_entries=2, keep_before=time.time() + 60) == 4
    assert [c.seq for c in await store.changes_since(4)] == [5, 6]
    assert await store.current_seq() == 6
    for behind in (0, 3):
        with pytest.raises(FeedPrunedError) as caught:
            await store.changes_since(behind)
        assert (caught.value.seq, caught.value.pruned_through) == (behind, 4)
    # Nothing more to prune: the watermark never moves back.
    assert await store.prune_feed(keep_entries=2, keep_before=time.time() + 60) == 0
    assert await store.prune_feed(keep_entries=10, keep_before=time.time() + 60) == 0
    # Every entry pruned: the sequence goes on from where it was.
    assert await store.prune_feed(keep_entries=0, keep_before=time.time() + 60) == 2
    assert await store.current_seq() == 6
    assert await store.changes_since(6) == []
    revoked = await store.set_revoked(rows[0].id, True, ACTOR)
    assert [(c.seq, c.row) for c in await store.changes_since(6)] == [(7, revoked)]


async def test_pruning_keeps_every_entry_younger_than_the_cutoff(store: KeyStore) -> None:
    for i in range(3):
        await store.create_key(new_key(f"old{i}"), ACTOR)
    cutoff = time.time()
    await asyncio.sleep(0.01)
    for i in range(3):
        await store.create_key(new_key(f"new{i}"), ACTOR)
    assert await store.prune_feed(keep_entries=1, keep_before=cutoff) == 3
    assert [c.row.name for c in await store.changes_since(3) if c.row] == ["new0", "new1", "new2"]
    assert await store.prune_feed(keep_entries=1, keep_before=0.0) == 0


async def test_a_live_follower_never_misses_a_change_while_the_feed_is_pruned(
    store: KeyStore, other: KeyStore
) -> None:
    from support.stores import load_table_from

    from gateway.keys.feed import catch_up
    from gateway.keys.table import KeyTable

    table = KeyTable()
    await load_table_from(other, table)
    seen_revoked: set[str] = set()
    rows = [await store.create_key(new_key(f"live{i}"), ACTOR) for i in range(40)]
    for step, row in enumerate(rows):
        await store.set_revoked(row.id, True, ACTOR)
        if step % 3 == 0:  # prune hard, sometimes past where the follower stands
            await store.prune_feed(keep_entries=1, keep_before=time.time() + 60)
        await catch_up(other, table)
        record = table.lookup(row.digest)
        assert record is not None
        assert record.revoked, f"{row.name} still active in the follower"
        seen_revoked.add(row.name)
    assert len(table) == 40
    assert all(table.lookup(r.digest).revoked for r in rows)  # type: ignore[union-attr]
    assert len(seen_revoked) == 40


# --------------------------------------------------------------------------- copying


async def test_export_and_import_move_everything_with_ids(store: KeyStore, other: KeyStore) -> None:
    a = await store.create_key(new_key("copy-a", ("r1",), "first"), ACTOR)
    b = await store.create_key(new_key("copy-b"), ACTOR)
    await store.delete_key(b.id, ACTOR)
    c = await store.create_key(new_key("copy-c", expires_at=9e9), ACTOR)
    c = await store.set_revoked(c.id, True, ACTOR)
    await store.record_usage({a.id: (1234.5, 3)})
    await store.add_admin("root", "hash", ("r1",), False, "cli:x")
    contents = await store.export_contents()
    assert [k.name for k in contents.keys] == ["copy-a", "copy-c"]
    assert contents.keys[0].use_count == 3
    assert [adm.name for adm in contents.admins] == ["root"]
    assert len(contents.audit) == 6

    # The other store is the same database here: copy into a fresh database instead.
    with pytest.raises(StoreNotEmptyError):
        await other.import_contents(contents, replace=False)
    await store.import_contents(StoreContents([], [], []), replace=True)
    assert await store.list_keys() == []
    await store.import_contents(contents, replace=False)
    assert await store.export_contents() == contents
    # Ids are never reused after a copy, not even the deleted key's.
    d = await store.create_key(new_key("copy-d"), ACTOR)
    assert d.id > c.id > b.id
    assert (await store.list_audit(limit=1))[0].id > contents.audit[-1].id
    rows, seq = await load_auth_rows(store)
    assert [row[2] for row in rows] == ["copy-a", "copy-c", "copy-d"]
    assert seq == await store.current_seq()


# --------------------------------------------------------------------- web sessions, sorts


async def test_sessions_are_stored_by_hash_touched_and_ended(store: KeyStore) -> None:
    await store.add_admin("root", "hash-1", (), True, ACTOR)
    session = AdminSession(b"\x01" * 32, "root", "stamp", 100.0, 100.0)
    await store.create_session(session, idle_before=0.0, started_before=0.0)
    assert await store.get_session(b"\x01" * 32) == session
    await store.touch_session(b"\x01" * 32, 150.0)
    await store.touch_session(b"\x01" * 32, 120.0)  # never moves back
    touched = await store.get_session(b"\x01" * 32)
    assert touched is not None and touched.last_seen == 150.0
    assert await store.delete_session(b"\x01" * 32) is True
    assert await store.delete_session(b"\x01" * 32) is False
    assert await store.get_session(b"\x01" * 32) is None


async def test_old_sessions_are_forgotten_and_admin_changes_end_theirs(store: KeyStore) -> None:
    await store.add_admin("root", "hash-1", (), True, ACTOR)
    await store.add_admin("ops", "hash-2", (), True, ACTOR)
    stale = AdminSession(b"\x02" * 32, "root", "s", 10.0, 10.0)
    await store.create_session(stale, idle_before=0.0, started_before=0.0)
    fresh = AdminSession(b"\x03" * 32, "root", "s", 500.0, 500.0)
    await store.create_session(fresh, idle_before=100.0, started_before=0.0)
    assert await store.get_session(b"\x02" * 32) is None  # idle since before the cut-off
    other = AdminSession(b"\x04" * 32, "ops", "s", 500.0, 500.0)
    await store.create_session(other, idle_before=0.0, started_before=0.0)
    await store.set_admin_password("root", "hash-9", ACTOR)
    assert await store.get_session(b"\x03" * 32) is None
    await store.set_admin_grants("ops", ("reader",), False, ACTOR)
    assert await store.get_session(b"\x04" * 32) is None
    again = AdminSession(b"\x05" * 32, "ops", "s", 600.0, 600.0)
    await store.create_session(again, idle_before=0.0, started_before=0.0)
    await store.remove_admin("ops", ACTOR)
    assert await store.get_session(b"\x05" * 32) is None


async def test_sorted_keyset_listing_is_the_same_on_every_backend(store: KeyStore) -> None:
    names = ["delta", "Alpha", "charlie", "bravo", "Echo_1", "echo"]
    for name in names:
        await store.create_key(new_key(name), ACTOR)
    await store.record_usage({2: (50.0, 1), 4: (70.0, 3)})

    async def walk(sort: KeySort) -> list[str]:
        seen: list[str] = []
        after: SortPosition | None = None
        while True:
            page = await store.list_keys(limit=2, sort=sort, after=after)
            seen += [row.name for row in page]
            if len(page) < 2:
                return seen
            last = page[-1]
            value: str | float = (
                last.name
                if sort.endswith("name")
                else last.created_at
                if sort.endswith("created_at")
                else (-1 if last.last_used_at is None else last.last_used_at)
            )
            after = (value, last.id)

    assert await walk("name") == ["Alpha", "bravo", "charlie", "delta", "echo", "Echo_1"]
    assert await walk("-name") == ["Echo_1", "echo", "delta", "charlie", "bravo", "Alpha"]
    assert await walk("created_at") == names
    assert await walk("-created_at") == names[::-1]
    assert (await walk("-last_used_at"))[:2] == ["bravo", "Alpha"]


async def test_batch_counts_say_what_the_batches_would_do(store: KeyStore) -> None:
    kept = await store.create_key(new_key("kept", ("reader",)), ACTOR)
    await store.create_key(new_key("admin-key", ("admin",)), ACTOR)
    gone = await store.create_key(new_key("gone", ("reader",)), ACTOR)
    await store.set_revoked(gone.id, True, ACTOR)
    counts = await store.batch_counts(frozenset({"reader"}))
    assert counts["revoke_all"] == BatchResult(1, 1)
    assert counts["reinstate_all"] == BatchResult(1, 0)
    assert counts["delete_revoked"] == BatchResult(1, 0)
    everything = await store.batch_counts(None)
    assert everything["revoke_all"] == BatchResult(2, 0)
    assert kept.status == "active"


def digest_of(text: str) -> bytes:
    """The SHA-256 of a stand-in secret."""
    return hashlib.sha256(text.encode()).digest()


async def test_roll_gives_the_same_key_a_new_digest_and_remembers_the_old(
    store: KeyStore,
) -> None:
    row = await store.create_key(new_key("rolling", ("r",)), ACTOR)
    await store.record_usage({row.id: (time.time(), 2)})
    before = time.time()
    rolled = await store.roll_key(row.id, digest_of("new-1"), "kg_new1xxx", 3600, "bob")
    assert (rolled.id, rolled.name, rolled.roles, rolled.use_count) == (
        row.id,
        "rolling",
        ("r",),
        2,
    )
    assert rolled.digest == digest_of("new-1")
    assert rolled.prefix == "kg_new1xxx"
    assert rolled.previous_digest == row.digest
    assert rolled.rolled_at is not None
    assert before <= rolled.rolled_at == rolled.updated_at <= time.time()
    assert rolled.previous_expires_at == pytest.approx(rolled.rolled_at + 3600)
    assert await store.get_key(row.id) == rolled
    assert await store.get_key_by_digest(digest_of("new-1")) == rolled
    assert await store.get_key_by_digest(row.digest) == rolled  # identify finds the old one

    event = (await store.list_audit(key_id=row.id, limit=1))[0]
    assert (event.action, event.actor, event.key_name) == ("roll", "bob", "rolling")
    assert event.details["overlap_seconds"] == 3600
    assert "new-1" not in json.dumps(event.details)
    assert digest_of("new-1").hex() not in json.dumps(event.details)

    # A second roll replaces the first: the first old secret is forgotten.
    again = await store.roll_key(row.id, digest_of("new-2"), "kg_new2xxx", 0, "bob")
    assert again.previous_digest == digest_of("new-1")
    assert again.previous_expires_at == again.rolled_at
    rows, _ = await load_auth_rows(store)
    assert rows == [
        (
            digest_of("new-2"),
            row.id,
            "rolling",
            ("r",),
            "active",
            None,
            digest_of("new-1"),
            again.previous_expires_at,
            None,
        )
    ]


async def test_roll_is_scoped_by_grants_and_unknown_keys(store: KeyStore) -> None:
    row = await store.create_key(new_key("scoped", ("admin",)), ACTOR)
    with pytest.raises(OutsideGrantsError):
        await store.roll_key(row.id, digest_of("x"), "kg_x", 60, "bob", frozenset({"reader"}))
    assert await store.get_key(row.id) == row
    with pytest.raises(NotFoundError):
        await store.roll_key(row.id + 100, digest_of("y"), "kg_y", 60, "bob")
    rolled = await store.roll_key(row.id, digest_of("z"), "kg_z", 60, "bob", frozenset({"admin"}))
    assert rolled.previous_digest == row.digest


async def test_a_follower_maps_both_secrets_and_drops_them_with_the_key(
    store: KeyStore, other: KeyStore
) -> None:
    table = KeyTable()
    loader = table.loader()
    loader.finish(await other.load_auth(loader.add))
    row = await store.create_key(new_key("followed"), ACTOR)
    keep = await store.create_key(new_key("kept"), ACTOR)

    def apply_from(changes: list[Change]) -> None:
        table.apply(changes)

    apply_from(await other.changes_since(table.seq))
    rolled = await store.roll_key(row.id, digest_of("f-1"), "kg_f1", 600, ACTOR)
    apply_from(await other.changes_since(table.seq))
    old, new = table.lookup(row.digest), table.lookup(digest_of("f-1"))
    assert old is not None and new is not None
    assert (old.id, new.id) == (row.id, row.id)
    assert new.expires_at is None and new.rolled_until is None
    assert old.expires_at == old.rolled_until == rolled.previous_expires_at

    # A second roll forgets the first old secret, everywhere.
    await store.roll_key(row.id, digest_of("f-2"), "kg_f2", 600, ACTOR)
    apply_from(await other.changes_since(table.seq))
    assert table.lookup(row.digest) is None
    assert table.lookup(digest_of("f-1")) is not None
    assert table.lookup(digest_of("f-2")) is not None

    # Revoking affects both secrets; a fresh load agrees with the follower.
    await store.set_revoked(row.id, True, ACTOR)
    apply_from(await other.changes_since(table.seq))
    for digest in (digest_of("f-1"), digest_of("f-2")):
        record = table.lookup(digest)
        assert record is not None and record.revoked
    fresh = KeyTable()
    loader = fresh.loader()
    loader.finish(await other.load_auth(loader.add))
    for digest in (digest_of("f-1"), digest_of("f-2"), keep.digest):
        a, b = table.lookup(digest), fresh.lookup(digest)
        assert a is not None and b is not None
        assert (a.id, a.revoked, a.expires_at, a.rolled_until) == (
            b.id,
            b.revoked,
            b.expires_at,
            b.rolled_until,
        )

    # Deleting (here as a batch of revoked keys) drops both secrets.
    assert (await store.delete_revoked(ACTOR))[:2] == (1, 0)
    apply_from(await other.changes_since(table.seq))
    assert table.lookup(digest_of("f-1")) is None
    assert table.lookup(digest_of("f-2")) is None
    assert len(table) == 1


async def test_deleting_a_rolled_key_announces_both_digests(store: KeyStore) -> None:
    row = await store.create_key(new_key("gone"), ACTOR)
    await store.roll_key(row.id, digest_of("g-1"), "kg_g1", 600, ACTOR)
    seq = await store.current_seq()
    await store.delete_key(row.id, ACTOR)
    changes = await store.changes_since(seq)
    assert sorted(c.digest for c in changes) == sorted([row.digest, digest_of("g-1")])
    assert all(c.row is None for c in changes)


async def test_export_and_import_keep_a_roll(store: KeyStore, other: KeyStore) -> None:
    row = await store.create_key(new_key("moved"), ACTOR)
    rolled = await store.roll_key(row.id, digest_of("m-1"), "kg_m1", 600, ACTOR)
    contents = await store.export_contents()
    await other.import_contents(contents, replace=True)
    assert await other.get_key(row.id) == rolled
    await other.import_contents(StoreContents([], [], []), replace=True)
    deleted = {c.digest for c in await other.changes_since(0) if c.row is None}
    assert {row.digest, digest_of("m-1")} <= deleted


async def test_expiring_keys_are_listed_and_counted_within_a_window(store: KeyStore) -> None:
    now = time.time()
    soon = await store.create_key(new_key("soon", expires_at=now + 3 * 86_400), ACTOR)
    await store.create_key(new_key("later", expires_at=now + 30 * 86_400), ACTOR)
    await store.create_key(new_key("never"), ACTOR)
    revoked = await store.create_key(new_key("revoked-soon", expires_at=now + 86_400), ACTOR)
    await store.set_revoked(revoked.id, True, ACTOR)
    await store.create_key(new_key("gone", expires_at=now + 0.001), ACTOR)
    await asyncio.sleep(0.01)
    now = time.time()
    week = 7 * 86_400
    listed = await store.list_keys(status="expiring", now=now, expiring_within=week)
    assert [row.name for row in listed] == ["soon"]
    assert await store.count_expiring(now, week) == 1
    assert await store.count_expiring(now, 60 * 86_400) == 2
    default = await store.list_keys(status="expiring", now=now)  # 14 days
    assert [row.id for row in default] == [soon.id]


async def test_audit_after_and_the_delivery_cursor_per_receiver(
    store: KeyStore, other: KeyStore
) -> None:
    await store.create_key(new_key("o0"), ACTOR)
    fresh = await store.open_receiver("r1")  # a new receiver starts after the newest entry
    for name in ("o1", "o2", "o3"):
        await store.create_key(new_key(name), ACTOR)
    events = await store.audit_after(fresh.cursor)
    assert [e.key_name for e in events] == ["o1", "o2", "o3"]
    assert [e.key_name for e in await store.audit_after(events[0].id, limit=1)] == ["o2"]
    assert await store.count_audit_after(fresh.cursor, ("create",)) == 3
    assert await store.count_audit_after(fresh.cursor, ("revoke",)) == 0
    assert (fresh.attempts, fresh.next_attempt, fresh.last_error) == (0, None, None)
    assert await other.open_receiver("r1") == fresh  # opening again changes nothing
    # The lease: one process at a time, until it lapses or is given up.
    assert await store.lease_receiver("r1", "a", 10.0, 40.0)
    assert not await other.lease_receiver("r1", "b", 20.0, 50.0)
    assert await store.lease_receiver("r1", "a", 20.0, 50.0)  # renewed
    assert await other.lease_receiver("r1", "b", 50.0, 80.0)  # lapsed
    # Retry state and acknowledgements are compare-and-set on the cursor.
    failing = ReceiverState("r1", fresh.cursor, 2, 5.0, 9.0, "HTTP 503")
    assert await store.save_receiver(failing, fresh.cursor)
    assert not await other.save_receiver(ReceiverState("r1", events[1].id), events[0].id)
    assert await other.save_receiver(ReceiverState("r1", events[0].id), fresh.cursor)
    (state,) = await store.list_receivers()
    assert (state.cursor, state.attempts, state.last_error, state.owner) == (
        events[0].id,
        0,
        None,
        "b",
    )
    # Abandoning records the event and moves past it in one step; stale cursors do nothing.
    gone = AbandonedEvent("r1", events[1].id, "key.created", 7, 5.0, 99.0, "HTTP 410")
    past = ReceiverState("r1", events[1].id)
    assert not await store.abandon_event(past, fresh.cursor, gone, 0.0)
    assert await store.abandon_event(past, events[0].id, gone, 0.0)
    assert await other.list_abandoned() == [gone]
    later = AbandonedEvent("r1", events[2].id, "key.created", 1, 200.0, 300.0, "HTTP 500")
    assert await store.abandon_event(ReceiverState("r1", events[2].id), events[1].id, later, 100.0)
    assert await store.list_abandoned() == [later]  # records older than forget_before go
    assert (await other.open_receiver("r1")).cursor == events[2].id


async def test_expiry_notices_are_claimed_once_per_key_threshold_and_expiry(
    store: KeyStore, other: KeyStore
) -> None:
    row = await store.create_key(new_key("noticed", expires_at=time.time() + 86_400), ACTOR)
    assert row.expires_at is not None
    expires = row.expires_at
    assert await store.claim_expiry_notices(row.id, "noticed", (14, 7), expires, 1.0) == (14, 7)
    assert await other.claim_expiry_notices(row.id, "noticed", (14, 7, 1), expires, 2.0) == (1,)
    assert await store.claim_expiry_notices(row.id, "noticed", (14, 7, 1), expires, 3.0) == ()
    assert await store.claim_expiry_notices(row.id, "noticed", (), expires, 3.0) == ()
    # A new expiry is a new series of notices.
    assert await store.claim_expiry_notices(row.id, "noticed", (14,), expires + 60, 4.0) == (14,)
    # Each claim that sent anything is audited with it (the webhooks' outbox): the nearest.
    notices = [e for e in await store.audit_after(0) if e.action == "expiring"]
    assert [(e.actor, e.key_name, e.details["threshold_days"]) for e in notices] == [
        ("keygate", "noticed", 7),
        ("keygate", "noticed", 1),
        ("keygate", "noticed", 14),
    ]
    assert [e.at for e in notices] == [1.0, 2.0, 4.0]


async def test_a_keys_own_rate_limit_is_stored_edited_followed_and_copied(
    store: KeyStore, other: KeyStore
) -> None:
    limit = RateLimit(100, "minute", 20)
    made = await store.create_key(dataclasses.replace(new_key("limited"), rate_limit=limit), ACTOR)
    plain = await store.create_key(new_key("plain"), ACTOR)
    assert made.rate_limit == limit and plain.rate_limit is None
    assert await other.get_key(made.id) == made
    rows, _ = await load_auth_rows(other)
    assert [row[8] for row in rows] == [limit, None]
    create_event = (await store.list_audit(key_id=made.id))[0]
    assert create_event.details["rate_limit"] == {"requests": 100, "per": "minute", "burst": 20}

    stricter = RateLimit(5, "second", 5)
    edited = await store.update_key(plain.id, KeyChanges(rate_limit=stricter), ACTOR)
    assert edited.rate_limit == stricter
    unchanged = await store.update_key(plain.id, KeyChanges(rate_limit=stricter), ACTOR)
    assert unchanged == edited  # equal: not a change
    event = (await store.list_audit(key_id=plain.id, limit=1))[0]
    assert event.details == {
        "before": {"rate_limit": None},
        "after": {"rate_limit": {"requests": 5, "per": "second", "burst": 5}},
    }
    changes = await other.changes_since(await other.current_seq() - 1)
    assert changes[-1].row is not None and changes[-1].row.rate_limit == stricter
    cleared = await store.update_key(made.id, KeyChanges(clear_rate_limit=True), ACTOR)
    assert cleared.rate_limit is None
    with pytest.raises(ValueError):
        await store.update_key(
            made.id, KeyChanges(rate_limit=stricter, clear_rate_limit=True), ACTOR
        )

    await other.import_contents(await store.export_contents(), replace=True)
    assert await other.get_key(plain.id) == edited
