"""SQLite key store: keys, change feed, audit log and admin accounts in one file (aiosqlite)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.store.base import (
    EXPIRING_WITHIN,
    AuthRow,
    BatchResult,
    Change,
    FeedPrunedError,
    Grants,
    IdempotencyClaim,
    IdempotencyMismatchError,
    IdempotentReplayError,
    KeyChanges,
    KeyFilter,
    KeyRow,
    KeySort,
    KeyStatus,
    NameConflictError,
    NewKey,
    NotFoundError,
    SortPosition,
    StoreContents,
    StoreMissingError,
    StoreNotEmptyError,
    StoreUnavailableError,
)
from gateway.store.common import (
    ACTION_CREATE,
    ACTION_DELETE,
    ACTION_DELETE_REVOKED,
    ACTION_EDIT,
    ACTION_REINSTATE,
    ACTION_REINSTATE_ALL,
    ACTION_REVOKE,
    ACTION_REVOKE_ALL,
    ACTION_ROLL,
    ADMIN_COLUMNS,
    AUDIT_COLUMNS,
    AUTH_COLUMNS,
    KEY_COLUMNS,
    KEY_COLUMNS_K,
    KEY_FIELDS,
    LOAD_CHUNK,
    Params,
    admin_account,
    admin_values,
    audit_event,
    audit_values,
    auth_rows,
    batch_counts_of,
    batch_details,
    check_grants,
    check_reinstatable,
    column_values,
    create_details,
    created_row,
    digests_of,
    edit_details,
    edited_row,
    gc_paused,
    key_row,
    key_values,
    like_pattern,
    rate_limit_json,
    roles_json,
    roll_details,
    rolled_row,
    status_condition,
    wanted_edits,
)
from gateway.store.migrations.sqlite import (
    AUDIT_KEYS_FROM_DETAILS,
    SchemaTooNewError,
    apply_migrations,
)
from gateway.store.sql import Dialect, SqlStore, Tx

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
_PRUNED_THROUGH = "SELECT pruned_through FROM feed_state WHERE id = 1"
# Sort orders of the key list: the indexed expression (migration 5) and its direction.
_SORT_EXPRESSIONS: dict[str, tuple[str, bool]] = {
    "name": ("name COLLATE NOCASE", False),
    "-name": ("name COLLATE NOCASE", True),
    "created_at": ("created_at", False),
    "-created_at": ("created_at", True),
    "last_used_at": ("IFNULL(last_used_at, -1)", False),
    "-last_used_at": ("IFNULL(last_used_at, -1)", True),
}
# Which keys each batch action touches (before the grant scope is applied).
_REVOKE_ALL_WHERE = "status = 'active'"
_REVOKED_WHERE = "status = 'revoked'"


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


def _is_unique_violation(exc: sqlite3.IntegrityError, column: str) -> bool:
    """Return True when `exc` is a UNIQUE/PRIMARY KEY failure on exactly `table.column`."""
    return str(exc) == f"UNIQUE constraint failed: {column}"


def _within_grants(grants: Grants) -> tuple[str, list[str]]:
    """Return an SQL condition (and its parameters) true for keys whose roles lie in grants."""
    if grants is None:
        return "1", []
    marks = ", ".join("?" for _ in grants)
    inside = f"value NOT IN ({marks})" if grants else "1"
    return f"NOT EXISTS (SELECT 1 FROM json_each(keys.roles) WHERE {inside})", sorted(grants)


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
    return isinstance(error, sqlite3.IntegrityError) and _is_unique_violation(error, column)


SQLITE = Dialect(
    name="sqlite",
    numbered=False,
    greatest="max",
    for_update="",
    is_unique_violation=_unique_violation,
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
        return int(cursor.lastrowid or 0)


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

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one read statement under the lock and return all rows."""
        async with self._lock:
            db = await self._ready()
            try:
                return list(await db.execute_fetchall(sql, params))
            except sqlite3.Error as error:
                self._raise_if_unavailable(error)
                raise

    @contextlib.asynccontextmanager
    async def _tx(self, *, feed: bool) -> AsyncIterator[Tx]:
        """Open one write transaction (BEGIN IMMEDIATE serialises every write, feed or not)."""
        async with self._transaction() as db:
            yield SqliteTx(db)

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one read statement outside a transaction; return its rows."""
        return await self._fetch(sql, params)

    async def _key_in(self, db: aiosqlite.Connection, key_id: int) -> KeyRow:
        """Read one key inside the current transaction; raise NotFoundError."""
        rows = list(
            await db.execute_fetchall(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,))
        )
        if not rows:
            raise NotFoundError(f"no key with id {key_id}")
        return key_row(rows[0])

    async def _audit_in(
        self,
        db: aiosqlite.Connection,
        at: float,
        actor: str,
        action: str,
        key_id: int | None = None,
        key_name: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append one audit row inside the current transaction; return its id."""
        return await self._audit_tx(SqliteTx(db), at, actor, action, key_id, key_name, details)

    # --- keys ------------------------------------------------------------------
    async def create_key(
        self, new: NewKey, actor: str, idempotency: IdempotencyClaim | None = None
    ) -> KeyRow:
        """Insert a key; raise NameConflictError if the name is taken.

        An idempotency claim made before by `actor` raises IdempotentReplayError (same
        fingerprint) or IdempotencyMismatchError; a new one is recorded with the key.
        """
        now = time.time()
        roles_text = roles_json(new.roles)
        async with self._transaction() as db:
            if idempotency is not None:
                await self._check_claim(db, actor, idempotency)
            try:
                cursor = await db.execute(
                    "INSERT INTO keys (name, description, roles, status, digest, prefix,"
                    " created_at, created_by, updated_at, expires_at, rate_limit)"
                    " VALUES (?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new.name,
                        new.description,
                        roles_text,
                        new.digest,
                        new.prefix,
                        now,
                        actor,
                        now,
                        new.expires_at,
                        rate_limit_json(new.rate_limit),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc, "keys.name"):
                    raise NameConflictError(f"a key named {new.name!r} already exists") from None
                raise
            key_id = cursor.lastrowid
            if key_id is None:  # pragma: no cover - SQLite always reports it after INSERT
                raise RuntimeError("SQLite returned no row id for the new key")
            await db.execute(_INSERT_CHANGE, (key_id, new.digest, "upsert", now))
            await self._audit_in(
                db,
                now,
                actor,
                ACTION_CREATE,
                key_id,
                new.name,
                create_details(new),
            )
            if idempotency is not None:
                await db.execute(
                    "INSERT OR REPLACE INTO idempotency_keys"
                    " (actor, idem_key, fingerprint, key_id, created_at) VALUES (?, ?, ?, ?, ?)",
                    (actor, idempotency.key, idempotency.fingerprint, key_id, now),
                )
        return created_row(key_id, new, roles_text, actor, now)

    async def _check_claim(
        self, db: aiosqlite.Connection, actor: str, claim: IdempotencyClaim
    ) -> None:
        """Forget expired idempotency records; raise if `actor` made this claim before."""
        await db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (claim.not_before,))
        rows = list(
            await db.execute_fetchall(
                "SELECT fingerprint, key_id FROM idempotency_keys WHERE actor = ? AND idem_key = ?",
                (actor, claim.key),
            )
        )
        if not rows:
            return
        fingerprint, key_id = str(rows[0][0]), int(rows[0][1])
        if fingerprint != claim.fingerprint:
            raise IdempotencyMismatchError(
                f"idempotency key {claim.key!r} was used for another request"
            )
        found = list(
            await db.execute_fetchall(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,))
        )
        raise IdempotentReplayError(key_id, key_row(found[0]) if found else None)

    async def get_key(self, key_id: int) -> KeyRow | None:
        """Return a key by id, or None."""
        rows = await self._fetch(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,))
        return key_row(rows[0]) if rows else None

    async def get_key_by_name(self, name: str) -> KeyRow | None:
        """Return a key by exact name, or None."""
        rows = await self._fetch(f"SELECT {KEY_COLUMNS} FROM keys WHERE name = ?", (name,))
        return key_row(rows[0]) if rows else None

    async def get_key_by_digest(self, digest: bytes) -> KeyRow | None:
        """Return the key whose secret (or whose secret before its last roll) has this digest."""
        rows = await self._fetch(
            f"SELECT {KEY_COLUMNS} FROM keys WHERE digest = ?1 OR previous_digest = ?1", (digest,)
        )
        return key_row(rows[0]) if rows else None

    async def list_keys(
        self,
        *,
        status: KeyFilter | None = None,
        query: str | None = None,
        limit: int = 100,
        after_id: int = 0,
        now: float | None = None,
        sort: KeySort = "id",
        after: SortPosition | None = None,
        expiring_within: float = EXPIRING_WITHIN,
        digest: bytes | None = None,
    ) -> list[KeyRow]:
        """List keys in `sort` order after a position, filtered by status and a text query.

        "active" excludes expired keys, "expired" is active with expires_at <= now, and the
        query matches name, description or display prefix case-insensitively (ASCII) with
        no wildcards; `digest` is an exact match on a secret's digest (current or rolled).
        Every order is an index walk from the position (keyset paging), so a page costs the
        same on the first page and the thousandth.
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        moment = time.time() if now is None else now
        where: list[str] = []
        params = Params(numbered=False)
        if sort == "id":
            where.append(f"id > {params.add(after_id)}")
            order = "id"
        else:
            expression, descending = _SORT_EXPRESSIONS[sort]
            direction, beyond = ("DESC", "<") if descending else ("ASC", ">")
            if after is not None:
                # "expr >= v AND (expr > v OR id > i)": the first term lets SQLite seek the index.
                value, last_id = after
                where.append(
                    f"{expression} {beyond}= ? AND ({expression} {beyond} ? OR id {beyond} ?)"
                )
                params.values += [value, value, last_id]
            order = f"{expression} {direction}, id {direction}"
        condition = status_condition(status, moment, expiring_within, params)
        if condition is not None:
            where.append(condition)
        if query:
            where.append(
                r"(name LIKE ? ESCAPE '\' OR description LIKE ? ESCAPE '\'"
                r" OR prefix LIKE ? ESCAPE '\')"
            )
            pattern = like_pattern(query)
            params.values += [pattern, pattern, pattern]
        if digest is not None:
            where.append("(digest = ? OR previous_digest = ?)")
            params.values += [digest, digest]
        params.values.append(limit)
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetch(
            f"SELECT {KEY_COLUMNS} FROM keys {condition} ORDER BY {order} LIMIT ?", params.values
        )
        return [key_row(row) for row in rows]

    async def batch_counts(self, grants: Grants = None) -> dict[str, BatchResult]:
        """Return what revoke_all, reinstate_all and delete_revoked would do now, by action."""
        scope, scope_params = _within_grants(grants)
        rows = await self._fetch(
            f"SELECT status, COUNT(*), COALESCE(SUM({scope}), 0) FROM keys GROUP BY status",
            scope_params,
        )
        return batch_counts_of({str(row[0]): (int(row[1]), int(row[2])) for row in rows})

    async def update_key(
        self, key_id: int, changes: KeyChanges, actor: str, grants: Grants = None
    ) -> KeyRow:
        """Apply a partial edit; raise NotFoundError, NameConflictError or OutsideGrantsError.

        Fields equal to their current value are not changes; an edit that changes nothing
        writes nothing (no updated_at, change-feed entry or audit event).
        """
        now = time.time()
        async with self._transaction() as db:
            current = await self._key_in(db, key_id)
            check_grants(current, grants)
            edits = wanted_edits(current, changes)
            if not edits:
                return current
            columns = column_values(edits)
            assignments = ", ".join(f"{field} = ?" for field in columns)
            try:
                await db.execute(
                    f"UPDATE keys SET {assignments}, updated_at = ? WHERE id = ?",
                    (*columns.values(), now, key_id),
                )
            except sqlite3.IntegrityError as exc:
                if _is_unique_violation(exc, "keys.name"):
                    raise NameConflictError(
                        f"a key named {edits['name']!r} already exists"
                    ) from None
                raise
            await db.execute(_INSERT_CHANGE, (key_id, current.digest, "upsert", now))
            await self._audit_in(
                db,
                now,
                actor,
                ACTION_EDIT,
                key_id,
                edits.get("name", current.name),
                edit_details(current, edits),
            )
        return edited_row(current, edits, columns, now)

    async def set_revoked(
        self, key_id: int, revoked: bool, actor: str, grants: Grants = None
    ) -> KeyRow:
        """Revoke or reinstate one key; raise NotFoundError, OutsideGrantsError, KeyExpiredError.

        Revoking a revoked key (or reinstating an active one) returns it unchanged and
        writes nothing; reinstating an expired key is refused, whatever its status.
        """
        now = time.time()
        status: KeyStatus = "revoked" if revoked else "active"
        revoked_at = now if revoked else None
        async with self._transaction() as db:
            current = await self._key_in(db, key_id)
            check_grants(current, grants)
            if not revoked:
                check_reinstatable(current, now)
            if current.status == status:
                return current
            await db.execute(
                "UPDATE keys SET status = ?, revoked_at = ?, updated_at = ? WHERE id = ?",
                (status, revoked_at, now, key_id),
            )
            await db.execute(_INSERT_CHANGE, (key_id, current.digest, "upsert", now))
            action = ACTION_REVOKE if revoked else ACTION_REINSTATE
            await self._audit_in(db, now, actor, action, key_id, current.name)
        return dataclasses.replace(current, status=status, revoked_at=revoked_at, updated_at=now)

    async def delete_key(self, key_id: int, actor: str, grants: Grants = None) -> KeyRow:
        """Delete one key for good and return it; raise NotFoundError, OutsideGrantsError."""
        now = time.time()
        async with self._transaction() as db:
            current = await self._key_in(db, key_id)
            check_grants(current, grants)
            await db.execute("DELETE FROM keys WHERE id = ?", (key_id,))
            await db.executemany(
                _INSERT_CHANGE, [(*entry, "delete", now) for entry in digests_of(current)]
            )
            await self._audit_in(
                db, now, actor, ACTION_DELETE, key_id, current.name, {"status": current.status}
            )
        return current

    async def roll_key(
        self,
        key_id: int,
        digest: bytes,
        prefix: str,
        overlap: float,
        actor: str,
        grants: Grants = None,
    ) -> KeyRow:
        """Give a key a new secret; the current one keeps working for `overlap` seconds.

        The feed forgets a previous roll's old secret (a delete entry for its digest) and
        announces the key under its new digest; followers map both until the overlap ends.
        """
        now = time.time()
        until = now + overlap
        async with self._transaction() as db:
            current = await self._key_in(db, key_id)
            check_grants(current, grants)
            await db.execute(
                "UPDATE keys SET digest = ?, prefix = ?, previous_digest = ?,"
                " previous_expires_at = ?, rolled_at = ?, updated_at = ? WHERE id = ?",
                (digest, prefix, current.digest, until, now, now, key_id),
            )
            if current.previous_digest is not None:
                await db.execute(_INSERT_CHANGE, (key_id, current.previous_digest, "delete", now))
            await db.execute(_INSERT_CHANGE, (key_id, digest, "upsert", now))
            await self._audit_in(
                db,
                now,
                actor,
                ACTION_ROLL,
                key_id,
                current.name,
                roll_details(overlap, until, prefix),
            )
        return rolled_row(current, digest, prefix, until, now)

    async def _batch(
        self,
        actor: str,
        action: str,
        op: str,
        where: str,
        write: str,
        values: tuple[object, ...],
        grants: Grants,
    ) -> BatchResult:
        """Log a change for every key matching `where` within `grants`, then `write` them.

        One transaction: the change rows (INSERT ... SELECT), the write and an audit event
        with the count, the skipped count and the ids touched. `values` are the write's
        parameters.
        """
        now = time.time()
        scope, scope_params = _within_grants(grants)
        chosen = f"({where}) AND {scope}"
        async with self._transaction() as db:
            total_rows = list(await db.execute_fetchall(f"SELECT COUNT(*) FROM keys WHERE {where}"))
            id_rows = await db.execute_fetchall(
                f"SELECT id FROM keys WHERE {chosen} ORDER BY id", scope_params
            )
            key_ids = [int(row[0]) for row in id_rows]
            await db.execute(
                "INSERT INTO key_changes (key_id, digest, op, at)"
                f" SELECT id, digest, ?, ? FROM keys WHERE {chosen} ORDER BY id",
                (op, now, *scope_params),
            )
            if op == "delete":
                await db.execute(
                    "INSERT INTO key_changes (key_id, digest, op, at)"
                    " SELECT id, previous_digest, 'delete', ? FROM keys"
                    f" WHERE {chosen} AND previous_digest IS NOT NULL ORDER BY id",
                    (now, *scope_params),
                )
            await db.execute(f"{write} WHERE {chosen}", (*values, *scope_params))
            result = BatchResult(len(key_ids), int(total_rows[0][0]) - len(key_ids))
            audit_id = await self._audit_in(
                db, now, actor, action, details=batch_details(result, key_ids)
            )
            await db.executemany(
                "INSERT INTO audit_keys (key_id, audit_id) VALUES (?, ?)",
                [(key_id, audit_id) for key_id in key_ids],
            )
        return result

    async def revoke_all(self, actor: str, grants: Grants = None) -> BatchResult:
        """Revoke every active key within `grants` in one transaction."""
        now = time.time()
        return await self._batch(
            actor,
            ACTION_REVOKE_ALL,
            "upsert",
            _REVOKE_ALL_WHERE,
            "UPDATE keys SET status = 'revoked', revoked_at = ?, updated_at = ?",
            (now, now),
            grants,
        )

    async def reinstate_all(self, actor: str, grants: Grants = None) -> BatchResult:
        """Reinstate every revoked key within `grants` in one transaction."""
        return await self._batch(
            actor,
            ACTION_REINSTATE_ALL,
            "upsert",
            _REVOKED_WHERE,
            "UPDATE keys SET status = 'active', revoked_at = NULL, updated_at = ?",
            (time.time(),),
            grants,
        )

    async def delete_revoked(self, actor: str, grants: Grants = None) -> BatchResult:
        """Delete every revoked key within `grants` in one transaction."""
        return await self._batch(
            actor,
            ACTION_DELETE_REVOKED,
            "delete",
            _REVOKED_WHERE,
            "DELETE FROM keys",
            (),
            grants,
        )

    # --- change feed and cache loading ----------------------------------------
    async def load_auth(self, sink: Callable[[list[AuthRow]], None]) -> int:
        """Feed every key's auth row to `sink` in chunks; return the feed sequence they reflect.

        One read snapshot, chunks of LOAD_CHUNK rows in id order, role tuples interned, and
        the cyclic garbage collector paused (auth rows hold no cycles, and collections
        triggered by a million new objects would cost more than the load). `sink` runs on
        the event loop.
        """
        with gc_paused():
            async with self._transaction("BEGIN") as db:
                seq_rows = list(await db.execute_fetchall(_CURRENT_SEQ))
                async with db.execute(f"SELECT {AUTH_COLUMNS} FROM keys ORDER BY id") as cursor:
                    while chunk := await cursor.fetchmany(LOAD_CHUNK):
                        sink(auth_rows(chunk))
        return int(seq_rows[0][0])

    async def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Return change-feed entries with sequence > seq, oldest first.

        Each entry carries the key's current row, or None when the key no longer exists.
        Raise FeedPrunedError when entries after `seq` were pruned (the caller reloads).
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        rows = await self._fetch(
            f"SELECT c.seq, c.digest, {KEY_COLUMNS_K} FROM key_changes c"
            # By id: a rolled key's entries name its old digest, yet carry its current row.
            " LEFT JOIN keys k ON k.id = c.key_id AND c.op = 'upsert'"
            " WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
            (seq, limit),
        )
        # Read after the entries: a prune in between is seen here (a needless reload at
        # worst), and one before them was already visible to the read above.
        pruned_through = int((await self._fetch(_PRUNED_THROUGH))[0][0])
        if seq < pruned_through:
            raise FeedPrunedError(seq, pruned_through)
        return [
            Change(row[0], row[1], None if row[2] is None else key_row(row[2:])) for row in rows
        ]

    async def current_seq(self) -> int:
        """Return the latest change-feed sequence number (0 when empty)."""
        rows = await self._fetch(_CURRENT_SEQ)
        return int(rows[0][0])

    async def prune_feed(self, keep_entries: int, keep_before: float) -> int:
        """Delete the oldest feed entries, keeping the newest `keep_entries` and any at or
        after `keep_before`; return how many were deleted.

        Only a prefix of the feed is ever removed, and its last sequence is remembered so a
        follower behind it learns to reload (FeedPrunedError) instead of missing changes.
        """
        async with self._transaction() as db:
            (latest,), (young,), (pruned_through,) = [
                tuple(next(iter(await db.execute_fetchall(sql, params))))
                for sql, params in (
                    (_CURRENT_SEQ, ()),
                    ("SELECT MIN(seq) FROM key_changes WHERE at >= ?", (keep_before,)),
                    (_PRUNED_THROUGH, ()),
                )
            ]
            cutoff = min(int(latest) - keep_entries, latest if young is None else young - 1)
            if cutoff <= pruned_through:
                return 0
            cursor = await db.execute("DELETE FROM key_changes WHERE seq <= ?", (cutoff,))
            await db.execute("UPDATE feed_state SET pruned_through = ? WHERE id = 1", (cutoff,))
            return int(cursor.rowcount)

    # --- moving between stores -------------------------------------------------
    async def export_contents(self) -> StoreContents:
        """Return every key, admin account and audit event (one read transaction)."""
        async with self._transaction("BEGIN") as db:
            keys = [
                key_row(row)
                for row in await db.execute_fetchall(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY id")
            ]
            admins = [
                admin_account(row)
                for row in await db.execute_fetchall(
                    f"SELECT {ADMIN_COLUMNS} FROM admins ORDER BY name"
                )
            ]
            audit = [
                audit_event(row)
                for row in await db.execute_fetchall(
                    f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"
                )
            ]
        return StoreContents(keys, admins, audit)

    async def import_contents(self, contents: StoreContents, *, replace: bool) -> None:
        """Write `contents` with their ids in one transaction, a feed entry per key.

        Raise StoreNotEmptyError when the store holds data, unless `replace` (then it is
        deleted first, each removed key announced on the feed).
        """
        now = time.time()
        async with self._transaction() as db:
            counts = list(
                await db.execute_fetchall(
                    "SELECT (SELECT COUNT(*) FROM keys) + (SELECT COUNT(*) FROM admins)"
                    " + (SELECT COUNT(*) FROM audit)"
                )
            )
            if int(counts[0][0]) and not replace:
                raise StoreNotEmptyError(f"{self.path} already holds keys, admins or audit events")
            await db.execute(
                "INSERT INTO key_changes (key_id, digest, op, at)"
                " SELECT id, digest, 'delete', ? FROM keys"
                " UNION ALL SELECT id, previous_digest, 'delete', ? FROM keys"
                " WHERE previous_digest IS NOT NULL",
                (now, now),
            )
            for table in ("keys", "admins", "audit"):
                await db.execute(f"DELETE FROM {table}")
            await db.executemany(
                f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ({', '.join('?' * len(KEY_FIELDS))})",
                [key_values(row) for row in contents.keys],
            )
            await db.executemany(
                _INSERT_CHANGE, [(row.id, row.digest, "upsert", now) for row in contents.keys]
            )
            await db.executemany(
                f"INSERT INTO admins ({ADMIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                [admin_values(account) for account in contents.admins],
            )
            await db.executemany(
                f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [audit_values(event) for event in contents.audit],
            )
            # Batch histories follow the audit rows; idempotency records named the old keys.
            await db.execute("DELETE FROM audit_keys")
            await db.execute(AUDIT_KEYS_FROM_DETAILS)
            await db.execute("DELETE FROM idempotency_keys")
