"""Behaviour of the SQLite key store, its migrations and the store factory, on real files."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from conftest import load_auth_rows

from gateway.store.base import (
    AdminAccount,
    AuthRow,
    KeyChanges,
    KeyRow,
    KeyStatus,
    KeyStore,
    NameConflictError,
    NewKey,
    NotFoundError,
)
from gateway.store.factory import ERROR_POSTGRES_UNAVAILABLE, sqlite_path, store_from_url
from gateway.store.migrations import Migration, check_sequence
from gateway.store.migrations.sqlite import (
    LATEST_VERSION,
    MIGRATIONS,
    SchemaTooNewError,
    apply_migrations,
)
from gateway.store.sqlite import LOAD_CHUNK, SqliteKeyStore

ACTOR = "alice"
REPO_ROOT = Path(__file__).resolve().parent.parent


def secret_for(name: str) -> str:
    """A stand-in secret per key name (the store only ever sees its digest)."""
    return f"kg_secret_of_{name}"


def new_key(
    name: str,
    roles: tuple[str, ...] = ("reader",),
    description: str = "",
    expires_at: float | None = None,
) -> NewKey:
    """A NewKey whose digest is the SHA-256 of secret_for(name)."""
    secret = secret_for(name)
    return NewKey(
        name=name,
        description=description,
        roles=roles,
        digest=hashlib.sha256(secret.encode()).digest(),
        prefix=secret[:10],
        expires_at=expires_at,
    )


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to the store's file, for looking behind the store's back."""
    return sqlite3.connect(path, isolation_level=None)


def raw_rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one query on a fresh plain connection and return every row."""
    connection = raw(path)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the store's file lives: a directory that does not exist yet."""
    return tmp_path / "data" / "nested" / "keygate.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteKeyStore]:
    """An open SQLite store on a fresh file."""
    opened = SqliteKeyStore(db_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def other(db_path: Path, store: SqliteKeyStore) -> AsyncIterator[SqliteKeyStore]:
    """A second store instance on the same file, standing in for another process."""
    opened = SqliteKeyStore(db_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# --------------------------------------------------------------------------- open / migrations


async def test_open_creates_directory_and_sets_pragmas(
    store: SqliteKeyStore, db_path: Path
) -> None:
    assert db_path.is_file()
    assert raw_rows(db_path, "PRAGMA journal_mode") == [("wal",)]
    db = store._conn()
    assert list(await db.execute_fetchall("PRAGMA synchronous")) == [(1,)]  # NORMAL
    assert list(await db.execute_fetchall("PRAGMA foreign_keys")) == [(1,)]
    assert list(await db.execute_fetchall("PRAGMA busy_timeout")) == [(5000,)]
    tables = {row[0] for row in raw_rows(db_path, "SELECT name FROM sqlite_master")}
    assert {"keys", "key_changes", "audit", "admins", "schema_version"} <= tables
    versions = raw_rows(db_path, "SELECT version FROM schema_version ORDER BY version")
    assert [row[0] for row in versions] == [m.version for m in MIGRATIONS]


async def test_store_satisfies_the_protocol(db_path: Path) -> None:
    typed: KeyStore = SqliteKeyStore(db_path)
    assert repr(typed) == f"SqliteKeyStore({str(db_path)!r})"


async def test_reopen_keeps_data_and_does_not_rerun_migrations(db_path: Path) -> None:
    first = SqliteKeyStore(db_path)
    await first.open()
    created = await first.create_key(new_key("keep-me"), ACTOR)
    await first.close()
    applied_before = raw_rows(db_path, "SELECT version, applied_at FROM schema_version")

    second = SqliteKeyStore(db_path)
    await second.open()
    try:
        assert await second.get_key(created.id) == created
        assert await apply_migrations(second._conn()) == []
    finally:
        await second.close()
    assert raw_rows(db_path, "SELECT version, applied_at FROM schema_version") == applied_before


async def test_open_twice_and_close_twice_are_harmless(db_path: Path) -> None:
    opened = SqliteKeyStore(db_path)
    await asyncio.gather(opened.open(), opened.open())
    await opened.open()
    await opened.ping()  # raises unless it reads and writes
    await opened.close()
    await opened.close()
    with pytest.raises(RuntimeError, match="not open"):
        await opened.ping()


async def test_concurrent_first_opens_migrate_once(db_path: Path) -> None:
    stores = [SqliteKeyStore(db_path) for _ in range(8)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        versions = raw_rows(db_path, "SELECT version FROM schema_version")
        assert sorted(row[0] for row in versions) == [m.version for m in MIGRATIONS]
        for opened in stores:
            await opened.ping()  # raises unless it reads and writes
    finally:
        for opened in stores:
            await opened.close()


async def test_each_migration_runs_in_its_own_transaction(tmp_path: Path) -> None:
    path = tmp_path / "partial.db"
    good = Migration(1, "a table", ("CREATE TABLE t1 (x INTEGER)",))
    bad = Migration(2, "breaks half way", ("CREATE TABLE t2 (x INTEGER)", "NOT SQL AT ALL"))
    async with aiosqlite.connect(path, isolation_level=None) as db:
        with pytest.raises(sqlite3.OperationalError):
            await apply_migrations(db, (good, bad))
        assert not db.in_transaction
    tables = {row[0] for row in raw_rows(path, "SELECT name FROM sqlite_master")}
    assert "t1" in tables
    assert "t2" not in tables
    assert raw_rows(path, "SELECT version FROM schema_version") == [(1,)]


async def test_open_refuses_a_schema_newer_than_this_code(db_path: Path) -> None:
    first = SqliteKeyStore(db_path)
    await first.open()
    await first.close()
    connection = raw(db_path)
    connection.execute(
        "INSERT INTO schema_version VALUES (?, 'from the future', 0)", (LATEST_VERSION + 1,)
    )
    connection.close()

    second = SqliteKeyStore(db_path)
    with pytest.raises(SchemaTooNewError, match="newer"):
        await second.open()
    with pytest.raises(RuntimeError, match="not open"):
        await second.ping()


def test_migration_versions_must_be_consecutive() -> None:
    check_sequence(MIGRATIONS)
    with pytest.raises(ValueError, match="expected 2"):
        check_sequence((Migration(1, "one", ()), Migration(3, "three", ())))


async def test_using_a_closed_store_fails_clearly(db_path: Path) -> None:
    closed = SqliteKeyStore(db_path)
    with pytest.raises(RuntimeError, match="not open"):
        await closed.get_key(1)


# --------------------------------------------------------------------------- create / get


async def test_create_key_returns_the_stored_row(store: SqliteKeyStore) -> None:
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


async def test_unknown_keys_are_none(store: SqliteKeyStore) -> None:
    assert await store.get_key(12345) is None
    assert await store.get_key_by_name("nobody") is None


async def test_create_key_name_conflict(store: SqliteKeyStore, db_path: Path) -> None:
    await store.create_key(new_key("dup"), ACTOR)
    seq = await store.current_seq()
    with pytest.raises(NameConflictError, match="dup"):
        await store.create_key(dataclasses.replace(new_key("other"), name="dup"), ACTOR)
    assert await store.current_seq() == seq
    assert raw_rows(db_path, "SELECT COUNT(*) FROM keys") == [(1,)]
    assert [e.action for e in await store.list_audit()] == ["create"]


async def test_names_are_case_sensitive(store: SqliteKeyStore) -> None:
    await store.create_key(new_key("bot"), ACTOR)
    other_case = await store.create_key(new_key("Bot"), ACTOR)
    assert await store.get_key_by_name("Bot") == other_case


async def test_rows_read_back_are_ordinary_keyrows(store: SqliteKeyStore) -> None:
    created = await store.create_key(new_key("plain", ("a", "b")), ACTOR)
    (loaded,) = await store.list_keys()
    rebuilt = KeyRow(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(KeyRow)})
    assert loaded == rebuilt == created
    assert hash(loaded) == hash(rebuilt)
    assert type(loaded) is KeyRow
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.name = "changed"  # type: ignore[misc]
    assert dataclasses.replace(loaded, name="x").name == "x"


# --------------------------------------------------------------------------- list


async def test_list_keys_filters_by_status(store: SqliteKeyStore) -> None:
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


async def test_list_keys_query_matches_name_or_description(store: SqliteKeyStore) -> None:
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


async def test_list_keys_pages_by_id(store: SqliteKeyStore) -> None:
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


# --------------------------------------------------------------------------- update


async def test_update_key_applies_only_given_fields(store: SqliteKeyStore) -> None:
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


async def test_update_key_sets_and_clears_expiry(store: SqliteKeyStore) -> None:
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


async def test_rename_key_and_rename_conflict(store: SqliteKeyStore) -> None:
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


async def test_update_key_without_a_real_change_writes_nothing(store: SqliteKeyStore) -> None:
    row = await store.create_key(new_key("same", ("a",), "words"), ACTOR)
    seq = await store.current_seq()
    unchanged = await store.update_key(
        row.id, KeyChanges(name="same", description="words", roles=("a",)), ACTOR
    )
    assert unchanged == row
    assert await store.current_seq() == seq
    assert [e.action for e in await store.list_audit()] == ["create"]


async def test_writes_to_unknown_keys_raise_not_found(store: SqliteKeyStore) -> None:
    with pytest.raises(NotFoundError):
        await store.update_key(99, KeyChanges(description="x"), ACTOR)
    with pytest.raises(NotFoundError):
        await store.set_revoked(99, True, ACTOR)
    with pytest.raises(NotFoundError):
        await store.delete_key(99, ACTOR)
    assert await store.current_seq() == 0
    assert await store.list_audit() == []


# --------------------------------------------------------------------------- revoke / delete


async def test_revoke_and_reinstate_one_key(store: SqliteKeyStore) -> None:
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


async def test_delete_key_removes_it_for_good(store: SqliteKeyStore) -> None:
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


async def test_batch_actions(store: SqliteKeyStore) -> None:
    keys = [await store.create_key(new_key(f"b{i}"), ACTOR) for i in range(5)]
    early = await store.set_revoked(keys[0].id, True, ACTOR)

    assert await store.revoke_all("bob") == (4, 0)
    rows = await store.list_keys()
    assert {row.status for row in rows} == {"revoked"}
    assert all(row.revoked_at is not None for row in rows)
    assert rows[0] == early  # the key revoked earlier is untouched
    assert all(row.revoked_at == row.updated_at for row in rows)
    assert await store.revoke_all("bob") == (0, 0)

    assert await store.reinstate_all("carol") == (5, 0)
    rows = await store.list_keys()
    assert {row.status for row in rows} == {"active"}
    assert all(row.revoked_at is None for row in rows)

    await store.set_revoked(keys[1].id, True, ACTOR)
    await store.set_revoked(keys[3].id, True, ACTOR)
    assert await store.delete_revoked("dave") == (2, 0)
    assert [row.name for row in await store.list_keys()] == ["b0", "b2", "b4"]
    assert await store.delete_revoked("dave") == (0, 0)

    batch = [
        (e.action, e.actor, e.details)
        for e in await store.list_audit(limit=100)
        if e.action in ("revoke_all", "reinstate_all", "delete_revoked")
    ]
    assert batch == [
        ("delete_revoked", "dave", {"count": 0, "skipped": 0, "key_ids": []}),
        ("delete_revoked", "dave", {"count": 2, "skipped": 0, "key_ids": [keys[1].id, keys[3].id]}),
        ("reinstate_all", "carol", {"count": 5, "skipped": 0, "key_ids": [k.id for k in keys]}),
        ("revoke_all", "bob", {"count": 0, "skipped": 0, "key_ids": []}),
        ("revoke_all", "bob", {"count": 4, "skipped": 0, "key_ids": [k.id for k in keys[1:]]}),
    ]


async def test_batch_action_is_all_or_nothing(store: SqliteKeyStore, db_path: Path) -> None:
    for i in range(5):
        await store.create_key(new_key(f"t{i}"), ACTOR)
    seq = await store.current_seq()
    audit_count = len(await store.list_audit())
    connection = raw(db_path)
    connection.execute(
        "CREATE TRIGGER refuse_t3 BEFORE UPDATE ON keys WHEN OLD.name = 't3'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    connection.execute(
        "CREATE TRIGGER refuse_delete BEFORE DELETE ON keys WHEN OLD.name = 't3'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    connection.close()

    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        await store.revoke_all(ACTOR)
    assert {row.status for row in await store.list_keys()} == {"active"}
    assert await store.current_seq() == seq
    assert len(await store.list_audit()) == audit_count

    # Revoke every key, then make delete_revoked trip over t3.
    raw_rows(db_path, "DROP TRIGGER refuse_t3")
    assert await store.revoke_all(ACTOR) == (5, 0)
    seq = await store.current_seq()
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        await store.delete_revoked(ACTOR)
    assert len(await store.list_keys()) == 5
    assert await store.current_seq() == seq

    # The connection is not left inside a transaction: the next write works.
    assert (await store.create_key(new_key("after"), ACTOR)).name == "after"


async def test_single_key_write_is_all_or_nothing(store: SqliteKeyStore, db_path: Path) -> None:
    connection = raw(db_path)
    connection.execute(
        "CREATE TRIGGER no_audit BEFORE INSERT ON audit"
        " BEGIN SELECT RAISE(ABORT, 'audit down'); END"
    )
    connection.close()
    with pytest.raises(sqlite3.IntegrityError, match="audit down"):
        await store.create_key(new_key("half"), ACTOR)
    assert await store.get_key_by_name("half") is None
    assert await store.current_seq() == 0
    raw_rows(db_path, "DROP TRIGGER no_audit")
    assert (await store.create_key(new_key("half"), ACTOR)).name == "half"


async def test_cancelled_writes_leave_no_partial_state(store: SqliteKeyStore) -> None:
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


async def test_cancel_while_waiting_for_another_writer(
    store: SqliteKeyStore, db_path: Path
) -> None:
    blocker = raw(db_path)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        task = asyncio.create_task(store.create_key(new_key("waiting"), ACTOR))
        await asyncio.sleep(0.2)  # create_key is now stuck in BEGIN IMMEDIATE
        assert not task.done()
        task.cancel()
        await asyncio.sleep(0.05)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The BEGIN that completed after the cancellation was rolled back, not left open.
    assert await store.get_key_by_name("waiting") is None
    assert (await store.create_key(new_key("next"), ACTOR)).name == "next"
    assert raw_rows(db_path, "SELECT name FROM keys") == [("next",)]


async def test_write_fails_cleanly_when_another_writer_never_lets_go(
    store: SqliteKeyStore, db_path: Path
) -> None:
    await store._conn().execute("PRAGMA busy_timeout = 100")
    blocker = raw(db_path)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.create_key(new_key("blocked"), ACTOR)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert (await store.create_key(new_key("unblocked"), ACTOR)).name == "unblocked"


async def test_reads_never_see_another_tasks_unfinished_transaction(
    store: SqliteKeyStore, db_path: Path
) -> None:
    for i in range(3):
        await store.create_key(new_key(f"r{i}"), ACTOR)
    seq = await store.current_seq()
    connection = raw(db_path)
    connection.execute(
        "CREATE TRIGGER fail_late BEFORE INSERT ON audit WHEN NEW.action = 'revoke_all'"
        " BEGIN SELECT RAISE(ABORT, 'late failure'); END"
    )
    connection.close()
    seen: list[tuple[int, set[KeyStatus]]] = []

    async def watch() -> None:
        while not writer.done():
            current = await store.current_seq()
            statuses = {row.status for row in await store.list_keys()}
            seen.append((current, statuses))

    writer = asyncio.create_task(store.revoke_all(ACTOR))
    watcher = asyncio.create_task(watch())
    with pytest.raises(sqlite3.IntegrityError, match="late failure"):
        await writer
    await watcher
    assert seen
    assert all(entry == (seq, {"active"}) for entry in seen)


async def test_concurrent_writes_on_one_store_are_serialised(store: SqliteKeyStore) -> None:
    rows = await asyncio.gather(*(store.create_key(new_key(f"c{i}"), ACTOR) for i in range(30)))
    assert len({row.id for row in rows}) == 30
    changes = await store.changes_since(0)
    assert [c.seq for c in changes] == list(range(1, 31))
    assert {c.digest for c in changes} == {row.digest for row in rows}


# --------------------------------------------------------------------------- change feed


async def test_every_key_write_appends_to_the_change_feed(store: SqliteKeyStore) -> None:
    a = await store.create_key(new_key("a"), ACTOR)
    b = await store.create_key(new_key("b"), ACTOR)
    c = await store.create_key(new_key("c"), ACTOR)
    await store.update_key(a.id, KeyChanges(description="edited"), ACTOR)
    await store.set_revoked(b.id, True, ACTOR)
    await store.delete_key(c.id, ACTOR)
    assert await store.revoke_all(ACTOR) == (1, 0)  # a
    assert await store.reinstate_all(ACTOR) == (2, 0)  # a, b
    await store.set_revoked(b.id, True, ACTOR)
    assert await store.delete_revoked(ACTOR) == (1, 0)  # b
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
    ops = raw_rows(store.path, "SELECT op FROM key_changes ORDER BY seq")
    assert [op for (op,) in ops] == ["upsert"] * 5 + ["delete"] + ["upsert"] * 4 + ["delete"]
    assert await store.current_seq() == 11


async def test_changes_since_pages_in_sequence_order(store: SqliteKeyStore) -> None:
    rows = [await store.create_key(new_key(f"p{i}"), ACTOR) for i in range(5)]
    first = await store.changes_since(0, limit=2)
    assert [(c.seq, c.row) for c in first] == [(1, rows[0]), (2, rows[1])]
    rest = await store.changes_since(2, limit=10)
    assert [c.row for c in rest] == rows[2:]
    assert await store.changes_since(5) == []
    assert await store.changes_since(0, limit=0) == []


async def test_empty_store(store: SqliteKeyStore) -> None:
    assert await store.current_seq() == 0
    assert await load_auth_rows(store) == ([], 0)
    assert await store.changes_since(0) == []
    assert await store.list_keys() == []
    assert await store.list_admins() == []
    await store.ping()  # raises unless it reads and writes


async def test_load_auth_returns_every_row_and_its_sequence(store: SqliteKeyStore) -> None:
    made = [
        await store.create_key(new_key(f"l{i}", ("r1", "r2") if i % 2 else ("r3",)), ACTOR)
        for i in range(6)
    ]
    made[2] = await store.set_revoked(made[2].id, True, ACTOR)
    rows, seq = await load_auth_rows(store)
    assert rows == [(r.digest, r.id, r.name, r.roles, r.status, r.expires_at) for r in made]
    assert seq == await store.current_seq() == 7
    # Rows with the same roles share one tuple object.
    assert rows[1][3] is rows[3][3] is rows[5][3]
    assert rows[0][3] is rows[2][3] is rows[4][3]


async def test_load_auth_handles_many_keys(store: SqliteKeyStore, db_path: Path) -> None:
    count = 30_000
    connection = raw(db_path)
    role_sets = ['["a","b"]', '["c"]', "[]"]
    connection.execute("BEGIN")
    connection.executemany(
        "INSERT INTO keys (name, roles, status, digest, prefix, created_at, created_by,"
        " updated_at) VALUES (?, ?, 'active', ?, 'kg_x', 1.0, 'cli:root', 1.0)",
        ((f"bulk-{i}", role_sets[i % 3], os.urandom(32)) for i in range(count)),
    )
    connection.execute("COMMIT")
    connection.close()
    rows, seq = await load_auth_rows(store)
    assert len(rows) == count
    assert seq == 0
    assert [row[1] for row in rows] == sorted(row[1] for row in rows)
    assert len({id(row[3]) for row in rows}) == 3
    assert rows[4][3] == ("c",)
    assert rows[5][3] == ()


async def test_load_auth_feeds_lean_rows_and_the_sequence(store: SqliteKeyStore) -> None:
    a = await store.create_key(new_key("lean-a", ("r1", "r2"), expires_at=9.0), ACTOR)
    b = await store.create_key(new_key("lean-b", ("r1", "r2")), ACTOR)
    b = await store.set_revoked(b.id, True, ACTOR)
    c = await store.create_key(new_key("lean-c", ()), ACTOR)
    chunks: list[list[AuthRow]] = []
    seq = await store.load_auth(chunks.append)
    assert seq == await store.current_seq() == 4
    assert chunks == [
        [
            (a.digest, a.id, "lean-a", ("r1", "r2"), "active", 9.0),
            (b.digest, b.id, "lean-b", ("r1", "r2"), "revoked", None),
            (c.digest, c.id, "lean-c", (), "active", None),
        ]
    ]
    assert chunks[0][0][3] is chunks[0][1][3]


async def test_load_auth_streams_many_keys_in_chunks(store: SqliteKeyStore, db_path: Path) -> None:
    count = LOAD_CHUNK + LOAD_CHUNK // 2
    connection = raw(db_path)
    connection.execute("BEGIN")
    connection.executemany(
        "INSERT INTO keys (name, roles, status, digest, prefix, created_at, created_by,"
        " updated_at) VALUES (?, ?, 'active', ?, 'kg_x', 1.0, 'cli:root', 1.0)",
        ((f"bulk-{i}", '["a","b"]' if i % 2 else "[]", os.urandom(32)) for i in range(count)),
    )
    connection.execute("COMMIT")
    connection.close()
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


async def test_load_auth_sink_failure_propagates(store: SqliteKeyStore) -> None:
    await store.create_key(new_key("x"), ACTOR)

    def sink(rows: list[AuthRow]) -> None:
        raise LookupError("sink broke")

    with pytest.raises(LookupError, match="sink broke"):
        await store.load_auth(sink)
    assert (await store.create_key(new_key("y"), ACTOR)).name == "y"


# --------------------------------------------------------------------------- usage


async def test_record_usage_adds_counts_and_keeps_latest_time(store: SqliteKeyStore) -> None:
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


# --------------------------------------------------------------------------- audit


async def test_key_lifecycle_is_audited_without_secrets_or_digests(store: SqliteKeyStore) -> None:
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
    for blob in raw_rows(store.path, "SELECT details FROM audit"):
        assert row.digest.hex() not in blob[0]


async def test_list_audit_filters_and_pages_newest_first(store: SqliteKeyStore) -> None:
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


# --------------------------------------------------------------------------- admins


async def test_admin_accounts(store: SqliteKeyStore) -> None:
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


# --------------------------------------------------------------------------- other processes


async def test_two_instances_follow_each_other(
    store: SqliteKeyStore, other: SqliteKeyStore
) -> None:
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


async def test_two_instances_writing_at_once(store: SqliteKeyStore, other: SqliteKeyStore) -> None:
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


WRITER_SCRIPT = """
import asyncio, hashlib, sys
from gateway.store.base import NewKey
from gateway.store.sqlite import SqliteKeyStore

async def main() -> None:
    store = SqliteKeyStore(sys.argv[1])
    await store.open()
    digest = hashlib.sha256(b"kg_from_another_process").digest()
    row = await store.create_key(NewKey("proc-key", "", ("r",), digest, "kg_from_an"), "cli:x")
    await store.set_revoked(row.id, True, "cli:x")
    await store.close()

asyncio.run(main())
"""


async def test_a_separate_process_writes_are_seen(store: SqliteKeyStore) -> None:
    seq = await store.current_seq()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER_SCRIPT,
        str(store.path),
        cwd=REPO_ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    changes = await store.changes_since(seq)
    assert len(changes) == 2
    assert changes[0].digest == hashlib.sha256(b"kg_from_another_process").digest()
    assert changes[0].row == changes[1].row
    assert changes[1].row is not None
    assert (changes[1].row.name, changes[1].row.status) == ("proc-key", "revoked")
    assert [e.actor for e in await store.list_audit()] == ["cli:x", "cli:x"]


# --------------------------------------------------------------------------- factory


@pytest.fixture
def base_dir(tmp_path: Path) -> Iterator[Path]:
    """The directory a config file would live in."""
    yield tmp_path / "conf"


def test_relative_sqlite_url_resolves_against_the_config_dir(base_dir: Path) -> None:
    store = store_from_url("sqlite:///var/keygate.db", base_dir)
    assert isinstance(store, SqliteKeyStore)
    assert store.path == base_dir / "var" / "keygate.db"


def test_four_slashes_make_an_absolute_sqlite_path(base_dir: Path) -> None:
    assert sqlite_path("sqlite:////var/lib/keygate/k.db", base_dir) == Path("/var/lib/keygate/k.db")
    store = store_from_url("sqlite:////srv/keys.db", base_dir)
    assert isinstance(store, SqliteKeyStore)
    assert store.path == Path("/srv/keys.db")


async def test_factory_store_opens_where_the_url_says(base_dir: Path) -> None:
    store = store_from_url("sqlite:///state/k.db", base_dir)
    await store.open()
    try:
        await store.ping()  # raises unless it reads and writes
    finally:
        await store.close()
    assert (base_dir / "state" / "k.db").is_file()


@pytest.mark.parametrize(
    "url", ["postgresql://u:p@localhost/keygate", "postgres://localhost/keygate"]
)
def test_postgres_urls_are_not_available_yet(url: str, base_dir: Path) -> None:
    with pytest.raises(ValueError, match=ERROR_POSTGRES_UNAVAILABLE):
        store_from_url(url, base_dir)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://localhost/db", "scheme 'mysql' is not supported"),
        ("keygate.db", "has no scheme"),
        ("sqlite://keygate.db", "must be sqlite:/// followed by a file path"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///:memory:", "only a database file path"),
    ],
)
def test_bad_store_urls_are_refused(url: str, message: str, base_dir: Path) -> None:
    with pytest.raises(ValueError, match=message):
        store_from_url(url, base_dir)


# --------------------------------------------------------------------------- issue 9


async def test_database_and_its_wal_and_shm_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "private" / "keygate.db"
    opened = SqliteKeyStore(path)
    await opened.open()
    try:
        await opened.create_key(new_key("any"), ACTOR)
        files = [path, path.with_name("keygate.db-wal"), path.with_name("keygate.db-shm")]
        for file in files:
            assert file.exists(), file
            assert file.stat().st_mode & 0o777 == 0o600, (file, oct(file.stat().st_mode))
    finally:
        await opened.close()


async def test_get_key_by_digest(store: SqliteKeyStore) -> None:
    row = await store.create_key(new_key("by-digest"), ACTOR)
    assert await store.get_key_by_digest(row.digest) == row
    assert await store.get_key_by_digest(hashlib.sha256(b"nothing").digest()) is None


async def test_list_keys_query_matches_the_display_prefix(store: SqliteKeyStore) -> None:
    await store.create_key(dataclasses.replace(new_key("a"), prefix="kg_AbCdEfG"), ACTOR)
    await store.create_key(dataclasses.replace(new_key("b"), prefix="kg_ZzZzZzZ"), ACTOR)
    assert [row.name for row in await store.list_keys(query="kg_abcd")] == ["a"]


async def test_audit_details_hold_iso_times(store: SqliteKeyStore) -> None:
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
    store: SqliteKeyStore, other: SqliteKeyStore
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


async def test_batches_can_be_limited_to_keys_within_a_grant_set(store: SqliteKeyStore) -> None:
    inside = await store.create_key(new_key("inside", ("reader",)), ACTOR)
    outside = await store.create_key(new_key("outside", ("reader", "writer")), ACTOR)
    assert await store.revoke_all(ACTOR, grants=frozenset({"reader"})) == (1, 1)
    assert (await store.get_key(inside.id)).status == "revoked"  # type: ignore[union-attr]
    assert (await store.get_key(outside.id)).status == "active"  # type: ignore[union-attr]
    assert await store.revoke_all(ACTOR) == (1, 0)
    assert await store.delete_revoked(ACTOR, grants=frozenset()) == (0, 2)
    event = (await store.list_audit(limit=1))[0]
    assert event.details == {"count": 0, "skipped": 2, "key_ids": []}
