"""Behaviour of the SQLite key store, its migrations and the store factory, on real files."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from support.stores import new_key

from gateway.store.base import (
    KeyStore,
)
from gateway.store.factory import sqlite_path, store_from_url
from gateway.store.migrations import Migration, check_sequence
from gateway.store.migrations.sqlite import (
    LATEST_VERSION,
    MIGRATIONS,
    SchemaTooNewError,
    apply_migrations,
)
from gateway.store.sqlite import SqliteKeyStore

ACTOR = "alice"
REPO_ROOT = Path(__file__).resolve().parents[2]


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


# --------------------------------------------------------------------------- create / get


# --------------------------------------------------------------------------- list


# --------------------------------------------------------------------------- update


# --------------------------------------------------------------------------- revoke / delete


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


# --------------------------------------------------------------------------- change feed


# --------------------------------------------------------------------------- usage


# --------------------------------------------------------------------------- audit


# --------------------------------------------------------------------------- admins


# --------------------------------------------------------------------------- other processes


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
    "url", ["postgresql://u:p@localhost/keygate", "postgres://localhost/keygate?sslmode=require"]
)
def test_postgres_urls_make_a_postgres_store_without_showing_the_password(
    url: str, base_dir: Path
) -> None:
    from gateway.store.postgres import PostgresKeyStore

    store = store_from_url(url, base_dir, password="from-env", schema="fleet")
    assert isinstance(store, PostgresKeyStore)
    assert ":p@" not in store.location
    assert "from-env" not in repr(store)
    assert store.location.endswith("/keygate (schema fleet)")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://localhost/db", "scheme 'mysql' is not supported"),
        ("keygate.db", "has no scheme"),
        ("sqlite://keygate.db", "must be sqlite:/// followed by a file path"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///:memory:", "only a database file path"),
        ("postgresql://localhost/", "must name one database"),
        ("postgresql:///keygate", "names no server"),
        ("postgresql://h/db?sslmode=sometimes", "sslmode must be one of"),
        ("postgresql://h/db?options=-c", "parameter 'options' is not supported"),
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
