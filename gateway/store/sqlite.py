"""SQLite key store: the dialect, connection and transactions of one WAL file (aiosqlite)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.store.base import (
    Grants,
    SortPosition,
    StoreMissingError,
    StoreUnavailableError,
)
from gateway.store.common import Params
from gateway.store.migrations.sqlite import (
    AUDIT_KEYS_FROM_DETAILS,
    SchemaTooNewError,
    apply_migrations,
)
from gateway.store.sql import Dialect, Tx, marks
from gateway.store.sql_store import SqlStore

log = logging.getLogger("keygate.store.sqlite")
# aiosqlite logs every statement with its parameters at DEBUG: names typed at the admin
# login prompt (possibly passwords) would reach the log whenever keygate runs at debug.
logging.getLogger("aiosqlite").setLevel(logging.INFO)

# Milliseconds a statement waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 5000
# Mode of a database file this store creates; SQLite gives its -wal and -shm files the same.
DB_FILE_MODE = 0o600

# Causes named by StoreUnavailableError, by SQLite primary result code; others are not
# store faults (a constraint is a conflict, a lock held too long is contention).
CAUSE_DELETED = "the database file was deleted (restore it; keygate picks it up by itself)"
CAUSE_FULL = "disk full"
CAUSE_READ_ONLY = "read-only"
CAUSE_CORRUPT = "corrupt"
CAUSE_IO = "I/O error"
CAUSE_CANNOT_OPEN = "cannot open the database file"
_CAUSES_BY_CODE = {
    sqlite3.SQLITE_FULL: CAUSE_FULL,
    sqlite3.SQLITE_READONLY: CAUSE_READ_ONLY,
    sqlite3.SQLITE_CORRUPT: CAUSE_CORRUPT,
    sqlite3.SQLITE_NOTADB: CAUSE_CORRUPT,
    sqlite3.SQLITE_IOERR: CAUSE_IO,
    sqlite3.SQLITE_CANTOPEN: CAUSE_CANNOT_OPEN,
}
# SQLite's companion files of a WAL database: the log and its shared-memory index.
_COMPANION_SUFFIXES = ("-wal", "-shm")
# Low byte of an extended SQLite result code: its primary code.
_PRIMARY_CODE_MASK = 0xFF

_PRAGMAS = (
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)

_INSERT_CHANGE = "INSERT INTO key_changes (key_id, digest, op, at) VALUES (?, ?, ?, ?)"
# The feed's latest sequence, even when pruning removed every entry.
_CURRENT_SEQ = (
    "SELECT MAX(COALESCE((SELECT MAX(seq) FROM key_changes), 0),"
    " (SELECT pruned_through FROM feed_state WHERE id = 1))"
)
# Sort orders of the key list: the indexed expression (migration 5) and its direction.
_SORT_EXPRESSIONS: dict[str, tuple[str, bool]] = {
    "name": ("name COLLATE NOCASE", False),
    "-name": ("name COLLATE NOCASE", True),
    "created_at": ("created_at", False),
    "-created_at": ("created_at", True),
    "last_used_at": ("IFNULL(last_used_at, -1)", False),
    "-last_used_at": ("IFNULL(last_used_at, -1)", True),
}


async def _retry_when_locked(db: aiosqlite.Connection, sql: str) -> list[Any]:
    """Run one statement, retrying for up to BUSY_TIMEOUT_MS while the file is locked.

    Switching a fresh file to WAL needs an exclusive lock, and when several processes
    open it at once SQLite reports "database is locked" at once instead of waiting
    (deadlock avoidance), so the busy timeout alone does not cover it.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            return list(await db.execute_fetchall(sql))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only, unless it already exists."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, DB_FILE_MODE)
    except FileExistsError:
        return
    os.close(descriptor)


def _cause_of(error: sqlite3.Error) -> str | None:
    """Return the store-fault cause of an SQLite error ("disk full (...)"), or None."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return None
    cause = _CAUSES_BY_CODE.get(code & _PRIMARY_CODE_MASK)
    return None if cause is None else f"{cause} ({error})"


def _identity(path: Path) -> tuple[int, int]:
    """Return the (device, inode) of the file at `path`; raise OSError when it is gone."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _unique_violation(error: BaseException, column: str) -> bool:
    """Return True when `error` is a UNIQUE/PRIMARY KEY failure on exactly `table.column`."""
    return isinstance(error, sqlite3.IntegrityError) and (
        str(error) == f"UNIQUE constraint failed: {column}"
    )


def _keyset(sort: str, expression: str, beyond: str, after: SortPosition, params: Params) -> str:
    """Return the condition of a sorted page after `after` (the sort's index is sought)."""
    value, last_id = after
    # "expr >= v AND (expr > v OR id > i)": the first term lets SQLite seek the index.
    return (
        f"{expression} {beyond}= {params.add(value)}"
        f" AND ({expression} {beyond} {params.add(value)} OR id {beyond} {params.add(last_id)})"
    )


def _within_grants(grants: Grants, params: Params) -> str:
    """Return an SQL condition true for keys whose roles all lie within `grants`."""
    if grants is None:
        return "1"
    inside = "1"
    if grants:
        inside = f"value NOT IN ({', '.join(params.add(role) for role in sorted(grants))})"
    return f"NOT EXISTS (SELECT 1 FROM json_each(keys.roles) WHERE {inside})"


def _has_role(role: str, params: Params) -> str:
    """Return an SQL condition true for keys holding `role`."""
    return f"EXISTS (SELECT 1 FROM json_each(keys.roles) WHERE value = {params.add(role)})"


def _id_list(ids: list[int], params: Params) -> str:
    """Return a subquery of the ids, passed as one JSON array."""
    return f"(SELECT value AS id FROM json_each({params.add(json.dumps(ids))}))"


SQLITE = Dialect(
    name="sqlite",
    numbered=False,
    greatest="max",
    for_update="",
    is_unique_violation=_unique_violation,
    sort_expressions=_SORT_EXPRESSIONS,
    keyset=_keyset,
    like_fold="{}",  # SQLite's LIKE folds ASCII letters itself
    within_grants=_within_grants,
    has_role=_has_role,
    id_list=_id_list,
    current_seq=_CURRENT_SEQ,
    audit_keys_from_details=AUDIT_KEYS_FROM_DETAILS,
)


class SqliteTx:
    """A transaction on the shared aiosqlite connection, as the shared SQL store uses it."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; return how many rows it changed."""
        cursor = await self._db.execute(sql, params)
        return int(cursor.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters."""
        await self._db.executemany(sql, rows)

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        """Run one statement and return every row it yields."""
        return list(await self._db.execute_fetchall(sql, params))

    async def insert_id(self, sql: str, *params: Any) -> int:
        """Run one INSERT; return the new row's id."""
        cursor = await self._db.execute(sql, params)
        if cursor.lastrowid is None:  # pragma: no cover - SQLite always reports it
            raise RuntimeError("SQLite returned no row id for the new row")
        return int(cursor.lastrowid)

    async def chunks(self, sql: str, size: int) -> AsyncIterator[list[Any]]:
        """Yield the rows of one read statement, `size` at a time."""
        async with self._db.execute(sql) as cursor:
            while chunk := await cursor.fetchmany(size):
                yield list(chunk)

    async def append_changes(
        self, entries: Sequence[tuple[int, bytes]], op: str, at: float
    ) -> None:
        """Append change-feed entries; SQLite numbers them (AUTOINCREMENT), followers poll."""
        await self._db.executemany(
            _INSERT_CHANGE, [(key_id, digest, op, at) for key_id, digest in entries]
        )

    async def copy_rows(self, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows of `columns` into `table`, ids included."""
        count = len(columns.split(", "))
        await self._db.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks(count)})", rows)


class SqliteKeyStore(SqlStore):
    """KeyStore on one SQLite file in WAL mode; one connection, writes under an asyncio.Lock.

    Every call first checks (one stat) that the file at the path is still the one open:
    deleted, it answers StoreUnavailableError; replaced, it reopens on the new file. The
    store never opens the database file itself while SQLite has it open: closing any
    descriptor of a file drops every POSIX lock this process holds on it, SQLite's too.

    Every write runs in BEGIN IMMEDIATE ... COMMIT, so it is whole or absent, and other
    processes using the same file serialise on SQLite's write lock. Reads take the same
    asyncio.Lock, so they never see another task's transaction half-done on the shared
    connection.
    """

    dialect = SQLITE

    def __init__(self, path: str | Path) -> None:
        """Remember the database path; nothing is opened until open()."""
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._opened = False  # between open() and close(); _db is None while reopening fails
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        # Identities of the -wal and -shm files that belong to the open file.
        self._companions: dict[str, tuple[int, int]] = {}
        self._generation = 0

    def __repr__(self) -> str:
        return f"SqliteKeyStore({str(self.path)!r})"

    @property
    def location(self) -> str:
        """The database file's path."""
        return str(self.path)

    @property
    def generation(self) -> int:
        """How many times the store reopened a replaced database file since open()."""
        return self._generation

    # --- connection ------------------------------------------------------------
    async def open(self, *, create: bool = True) -> None:
        """Connect, set pragmas and apply migrations; with `create`, make the file first.

        Without `create` a missing file raises StoreMissingError and nothing is created;
        a file SQLite cannot use raises StoreUnavailableError naming it and the cause.
        """
        async with self._lock:
            if self._opened:
                return
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _create_private(self.path)
            elif not self.path.exists():
                raise StoreMissingError(str(self.path))
            self._db = await self._connect()
            self._opened = True

    async def _connect(self) -> aiosqlite.Connection:
        """Connect to the file now at the path and migrate it; remember its identity."""
        identity = self._current_identity()
        # isolation_level=None: no implicit transactions; every write says BEGIN itself.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in _PRAGMAS:
                rows = await _retry_when_locked(db, pragma)
                if pragma.startswith("PRAGMA journal_mode") and rows[0][0] != "wal":
                    log.warning("SQLite %s: journal mode %s, not WAL", self.path, rows[0][0])
            applied = await apply_migrations(db)
        except BaseException as error:
            await db.close()
            if isinstance(error, SchemaTooNewError):
                raise SchemaTooNewError(f"store {self.path}: {error}") from None
            if isinstance(error, sqlite3.Error):
                self._raise_if_unavailable(error)
            raise
        if applied:
            log.info("SQLite %s: applied schema migrations %s", self.path, applied)
        self._identity = identity
        self._companions = {}
        for suffix in _COMPANION_SUFFIXES:
            with contextlib.suppress(OSError):
                self._companions[suffix] = _identity(Path(f"{self.path}{suffix}"))
        return db

    def _remove_stale_companions(self) -> None:
        """Remove the -wal and -shm files of the database that was replaced or deleted.

        SQLite would otherwise replay the old file's log onto the new one. Only the files
        this store had open are removed: another process that already reopened the new file
        has made its own, which stay.
        """
        for suffix, identity in self._companions.items():
            companion = Path(f"{self.path}{suffix}")
            with contextlib.suppress(OSError):
                if _identity(companion) == identity:
                    companion.unlink()
                    log.warning("SQLite %s: removed the replaced database's %s", self.path, suffix)
        self._companions = {}

    def _current_identity(self) -> tuple[int, int]:
        """Return the identity of the file at the path; StoreUnavailableError when gone."""
        try:
            return _identity(self.path)
        except FileNotFoundError:
            raise StoreUnavailableError(str(self.path), CAUSE_DELETED) from None
        except OSError as error:
            raise StoreUnavailableError(str(self.path), f"{CAUSE_IO} ({error})") from None

    def _raise_if_unavailable(self, error: sqlite3.Error) -> None:
        """Raise StoreUnavailableError for an SQLite error that is a store fault."""
        cause = _cause_of(error)
        if cause is not None:
            raise StoreUnavailableError(str(self.path), cause) from error

    async def _ready(self) -> aiosqlite.Connection:
        """Return the connection after checking the file is still the one open (under the lock).

        A deleted file is never recreated: every call fails until it is back. A file that
        is not the one opened (an operator restored a backup over it) is opened in its place
        and the generation counted, so followers reload instead of mixing two feeds.
        """
        if not self._opened:
            raise RuntimeError(f"{self!r} is not open")
        identity = self._current_identity()
        if self._db is None or identity != self._identity:
            old, self._db = self._db, None
            if old is not None:
                # SQLite neither checkpoints nor deletes the log of a moved database.
                with contextlib.suppress(sqlite3.Error):
                    await old.close()
            self._remove_stale_companions()
            self._db = await self._connect()
            self._generation += 1
            log.warning(
                "SQLite %s: the database file was replaced; reopened it (generation %d)",
                self.path,
                self._generation,
            )
        return self._db

    async def close(self) -> None:
        """Wait for running statements, then close the connection (idempotent)."""
        if not self._opened:
            return
        async with self._lock:
            db, self._db = self._db, None
            self._opened = False
            if db is not None:
                await db.close()

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the store reads and takes a one-row write.

        The write is what shows a full or read-only disk. Another process holding the write
        lock is not waited for: that it writes shows the store takes writes.
        """
        async with self._lock:
            db = await self._ready()
            try:
                await db.execute("PRAGMA busy_timeout = 0")
                try:
                    await db.execute("BEGIN IMMEDIATE")
                    await db.execute(
                        "INSERT INTO store_health (id, at) VALUES (1, ?)"
                        " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                        (time.time(),),
                    )
                    await db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                    raise
                finally:
                    await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            except sqlite3.Error as error:
                if (
                    getattr(error, "sqlite_errorcode", 0) & _PRIMARY_CODE_MASK
                    == sqlite3.SQLITE_BUSY
                ):
                    return
                self._raise_if_unavailable(error)
                raise

    def _conn(self) -> aiosqlite.Connection:
        """Return the open connection; raise RuntimeError when the store is not open."""
        if self._db is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def _transaction(
        self, begin: str = "BEGIN IMMEDIATE"
    ) -> AsyncIterator[aiosqlite.Connection]:
        """Run the body in one transaction on the shared connection, under the lock.

        Rolls back on any exception, cancellation included: aiosqlite runs statements in
        queue order on its thread, so the ROLLBACK follows whatever was already queued.
        """
        async with self._lock:
            db = await self._ready()
            try:
                await db.execute(begin)
                yield db
                await db.execute("COMMIT")
            except BaseException as error:
                # Fails harmlessly when BEGIN itself failed or COMMIT already happened.
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                if isinstance(error, sqlite3.Error):
                    self._raise_if_unavailable(error)
                raise

    @contextlib.asynccontextmanager
    async def _tx(self, *, feed: bool) -> AsyncIterator[Tx]:
        """Open one write transaction (BEGIN IMMEDIATE serialises every write, feed or not)."""
        async with self._transaction() as db:
            yield SqliteTx(db)

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Tx]:
        """Open one read transaction (WAL: it sees the moment of its first read)."""
        async with self._transaction("BEGIN") as db:
            yield SqliteTx(db)

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one read statement outside a transaction, under the lock; return its rows."""
        async with self._lock:
            db = await self._ready()
            try:
                return list(await db.execute_fetchall(sql, params))
            except sqlite3.Error as error:
                self._raise_if_unavailable(error)
                raise
