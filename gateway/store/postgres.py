"""PostgreSQL key store: the KeyStore contract on a server several instances share (asyncpg)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import string
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

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
from gateway.store.migrations.postgres import (
    ASCII_FOLD,
    ASCII_LOWER,
    AUDIT_KEYS_FROM_DETAILS,
    NAME_FOLD,
    SchemaTooNewError,
    apply_migrations,
)
from gateway.store.sql import Dialect, SqlStore, Tx, numbered

log = logging.getLogger("keygate.store.postgres")

# Connections per process to the server (the admin API, the feed poll, the usage flush).
POOL_SIZE = 4
# Seconds to open one connection; past it the server counts as unreachable.
CONNECT_TIMEOUT = 2.0
# Seconds one pooled statement may run before the store counts as unavailable: a silently
# partitioned server fails an admin write in this, not in the minutes TCP takes to notice.
COMMAND_TIMEOUT = 3.0
# Seconds one statement on a maintenance connection may run (migrations, CREATE DATABASE).
MAINTENANCE_COMMAND_TIMEOUT = 60.0
# Seconds to wait for a free pooled connection.
ACQUIRE_TIMEOUT = 3.0
# Seconds between liveness checks of the LISTEN connection (a silent peer shows).
LISTEN_CHECK_INTERVAL = 2.0
# Seconds of back-off before the first and at most between LISTEN reconnects.
LISTEN_RETRY_MIN = 0.1
LISTEN_RETRY_MAX = 5.0
# asyncpg's logger, and the least severe of its records shown (its pool's reconnection
# warnings, each with a traceback, are not: the feed follower reports outages instead).
ASYNCPG_LOGGER = "asyncpg"
ASYNCPG_LOG_LEVEL = logging.ERROR
# Channel the stores NOTIFY on when a key write commits (suffixed with a non-default schema).
FEED_CHANNEL = "keygate_feed"
# Database every server has, for creating the configured one (`keygate init`).
MAINTENANCE_DATABASE = "postgres"

CAUSE_UNREACHABLE = "the PostgreSQL server cannot be reached"
CAUSE_LOST = "the connection to PostgreSQL was lost"
CAUSE_SHUTDOWN = "PostgreSQL is shutting down or refusing connections"
CAUSE_RESOURCES = "PostgreSQL is out of resources"
CAUSE_READ_ONLY = "read-only"
CAUSE_TIMEOUT = "PostgreSQL did not answer in time"

# Errors that mean the server cannot serve now; a constraint or a bug is not among them.
_FAULTS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
_LOCK_FEED = "SELECT seq FROM feed_state WHERE id = 1 FOR UPDATE"
_CURRENT_SEQ = "SELECT seq FROM feed_state WHERE id = 1"
_PRUNED_THROUGH = "SELECT pruned_through FROM feed_state WHERE id = 1"
# Only ASCII letters fold in a text query, as in SQLite's LIKE.
_UPPER, _LOWER = string.ascii_uppercase, string.ascii_lowercase
_ASCII_LOWER = str.maketrans(_UPPER, _LOWER)


def redact(url: str) -> str:
    """Return the URL without its password (and without query parameters), for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _cause_of(error: BaseException) -> str:
    """Return the operator's words for a fault (the driver's message in brackets)."""
    if isinstance(error, asyncpg.exceptions.ReadOnlySQLTransactionError):
        cause = CAUSE_READ_ONLY
    elif isinstance(error, asyncpg.exceptions.InsufficientResourcesError):
        cause = CAUSE_RESOURCES
    elif isinstance(error, asyncpg.exceptions.OperatorInterventionError):
        cause = CAUSE_SHUTDOWN
    elif isinstance(error, TimeoutError):
        cause = CAUSE_TIMEOUT
    elif isinstance(error, ConnectionRefusedError | OSError) and not isinstance(
        error, ConnectionResetError
    ):
        cause = CAUSE_UNREACHABLE
    else:
        cause = CAUSE_LOST
    detail = str(error) or type(error).__name__
    return f"{cause} ({detail})"


# Sort orders of the key list: the indexed expression (migration 3) and its direction.
_SORT_EXPRESSIONS: dict[str, tuple[str, bool]] = {
    "name": (NAME_FOLD, False),
    "-name": (NAME_FOLD, True),
    "created_at": ("created_at", False),
    "-created_at": ("created_at", True),
    "last_used_at": ("COALESCE(last_used_at, -1)", False),
    "-last_used_at": ("COALESCE(last_used_at, -1)", True),
}


def _within_grants(grants: Grants, params: Params) -> str:
    """Return an SQL condition true for keys whose roles all lie within `grants`."""
    if grants is None:
        return "TRUE"
    inside = f"WHERE role <> ALL({params.add(sorted(grants))}::text[])" if grants else ""
    return f"NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(keys.roles::jsonb) role {inside})"


def _unique_violation(error: BaseException, column: str) -> bool:
    """Return True when `error` is a unique-constraint violation (each table has one)."""
    return isinstance(error, asyncpg.UniqueViolationError)


POSTGRES = Dialect(
    name="postgres",
    numbered=True,
    greatest="GREATEST",
    for_update=" FOR UPDATE",
    is_unique_violation=_unique_violation,
)


def _rows_changed(status: str) -> int:
    """Return the row count of a command status ("UPDATE 1", "INSERT 0 1", "DELETE 3")."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class PostgresTx:
    """A transaction on one pooled asyncpg connection, as the shared SQL store uses it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; return how many rows it changed."""
        return _rows_changed(await self._conn.execute(numbered(sql), *params))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters."""
        await self._conn.executemany(numbered(sql), rows)

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        """Run one statement and return every row it yields."""
        return list(await self._conn.fetch(numbered(sql), *params))

    async def insert_id(self, sql: str, *params: Any) -> int:
        """Run one INSERT; return the new row's id."""
        return int(await self._conn.fetchval(numbered(sql) + " RETURNING id", *params))


class PostgresKeyStore(SqlStore):
    """KeyStore on a PostgreSQL database (optionally one schema of it), shared by a fleet.

    Every key write is one transaction that first locks the feed counter row, so key writes
    are serialised as SQLite's BEGIN IMMEDIATE serialises them, feed sequences commit in
    order without gaps, and a NOTIFY announces the commit to every instance's listener.
    Connection faults (server gone, connection terminated, timeouts) raise
    StoreUnavailableError; the pool opens fresh connections once the server answers again.
    """

    dialect = POSTGRES

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        schema: str | None = None,
        pool_size: int = POOL_SIZE,
    ) -> None:
        """Remember where the database is; nothing is opened until open()."""
        self._url = url
        self._password = password
        self.schema = schema
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._open_lock = asyncio.Lock()
        self.channel = FEED_CHANNEL if schema is None else f"{FEED_CHANNEL}_{schema}"

    def __repr__(self) -> str:
        return f"PostgresKeyStore({self.location!r})"

    @property
    def location(self) -> str:
        """The server and database (never the password), and the schema if one is set."""
        where = redact(self._url)
        return where if self.schema is None else f"{where} (schema {self.schema})"

    @property
    def generation(self) -> int:
        """Always 0: a server's database is never swapped underneath an open store."""
        return 0

    def _server_settings(self) -> dict[str, str]:
        """Session settings of every connection: the schema, and a name in pg_stat_activity."""
        settings = {"application_name": "keygate"}
        if self.schema is not None:
            settings["search_path"] = self.schema
        return settings

    async def _connect(self, database: str | None = None) -> asyncpg.Connection:
        """Open one plain connection (for migrations, LISTEN and creating the database)."""
        extra: dict[str, Any] = {} if database is None else {"database": database}
        return await asyncpg.connect(
            self._url,
            password=self._password,
            timeout=CONNECT_TIMEOUT,
            command_timeout=MAINTENANCE_COMMAND_TIMEOUT,
            server_settings=self._server_settings(),
            **extra,
        )

    # --- connection ------------------------------------------------------------
    async def open(self, *, create: bool = True) -> None:
        """Connect, apply migrations and open the pool; with `create`, make what is missing.

        Without `create` a missing database or schema raises StoreMissingError; an
        unreachable server raises StoreUnavailableError.
        """
        # asyncpg logs each failed reconnection of its pool with a traceback; the feed
        # follower reports an outage in one line when it starts and one when it ends.
        logging.getLogger(ASYNCPG_LOGGER).setLevel(ASYNCPG_LOG_LEVEL)
        async with self._open_lock:
            if self._pool is not None:
                return
            try:
                conn = await self._first_connection(create)
                try:
                    await self._prepare_schema(conn, create)
                    applied = await apply_migrations(conn)
                finally:
                    await conn.close()
                if applied:
                    log.info("PostgreSQL %s: applied schema migrations %s", self.location, applied)
                self._pool = await asyncpg.create_pool(
                    self._url,
                    password=self._password,
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=CONNECT_TIMEOUT,
                    command_timeout=COMMAND_TIMEOUT,
                    server_settings=self._server_settings(),
                )
            except SchemaTooNewError as error:
                raise SchemaTooNewError(f"store {self.location}: {error}") from None
            except _FAULTS as error:
                raise StoreUnavailableError(self.location, _cause_of(error)) from error

    async def _first_connection(self, create: bool) -> asyncpg.Connection:
        """Connect to the database, creating it first when missing and `create` is set."""
        try:
            return await self._connect()
        except asyncpg.exceptions.InvalidCatalogNameError:
            if not create:
                raise StoreMissingError(self.location) from None
        database = urlsplit(self._url).path.lstrip("/")
        maintenance = await self._connect(MAINTENANCE_DATABASE)
        try:
            # CREATE DATABASE takes no parameters: the name is quoted as an identifier.
            quoted = '"' + database.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.exceptions.DuplicateDatabaseError):
                await maintenance.execute(f"CREATE DATABASE {quoted}")
        finally:
            await maintenance.close()
        log.info("PostgreSQL: created database %s", self.location)
        return await self._connect()

    async def _prepare_schema(self, conn: asyncpg.Connection, create: bool) -> None:
        """Make sure the configured schema exists (created only with `create`)."""
        if self.schema is None:
            return
        exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema)
        if exists:
            return
        if not create:
            raise StoreMissingError(self.location)
        quoted = '"' + self.schema.replace('"', '""') + '"'
        # IF NOT EXISTS alone still races another instance creating it at the same moment.
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('keygate-schema:' || $1))", self.schema
            )
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")

    async def close(self) -> None:
        """Wait for running statements, then close the pool (idempotent)."""
        async with self._open_lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT)
                except _FAULTS:
                    pool.terminate()

    def _open_pool(self) -> asyncpg.Pool:
        """Return the pool; raise RuntimeError when the store is not open."""
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Lend a pooled connection; connection faults become StoreUnavailableError.

        Returning the connection never fails the call: a connection lost after the body
        finished (its reset on release fails) is dropped, and the pool opens a fresh one.
        """
        pool = self._open_pool()
        try:
            conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT)
        except _FAULTS as error:
            raise StoreUnavailableError(self.location, _cause_of(error)) from error
        try:
            yield conn
        except _FAULTS as error:
            # A terminated backend can leave its idle siblings half-broken too: replace
            # them all, so one failed call is the whole cost of an outage that has passed.
            with contextlib.suppress(*_FAULTS):  # already released when lost
                conn.terminate()
            await pool.expire_connections()
            await _release(pool, conn)
            raise StoreUnavailableError(self.location, _cause_of(error)) from error
        except BaseException:
            await _release(pool, conn)
            raise
        await _release(pool, conn)

    @contextlib.asynccontextmanager
    async def _write(self, *, feed: bool = True) -> AsyncIterator[asyncpg.Connection]:
        """Run the body in one transaction; a key write first takes the feed counter's lock.

        A connection lost while COMMIT is under way leaves the outcome unknown: the error
        says so (StoreUnavailableError.outcome_unknown) instead of "nothing was changed".
        """
        async with self._connection() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                if feed:
                    await conn.execute(_LOCK_FEED)
                yield conn
            except BaseException:
                with contextlib.suppress(*_FAULTS):  # a lost connection rolled back already
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except _FAULTS as error:
                with contextlib.suppress(*_FAULTS):
                    conn.terminate()
                raise StoreUnavailableError(
                    self.location, _cause_of(error), outcome_unknown=True
                ) from error

    async def _fetch(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        """Run one read statement and return every row."""
        async with self._connection() as conn:
            return list(await conn.fetch(sql, *params))

    @contextlib.asynccontextmanager
    async def _tx(self, *, feed: bool) -> AsyncIterator[Tx]:
        """Open one write transaction; a key write first takes the feed counter's lock."""
        async with self._write(feed=feed) as conn:
            yield PostgresTx(conn)

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one read statement outside a transaction; return its rows."""
        return await self._fetch(numbered(sql), *params)

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the store reads and takes a one-row write."""
        async with self._write(feed=False) as conn:
            await conn.execute(
                "INSERT INTO store_health (id, at) VALUES (1, $1)"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                time.time(),
            )

    # --- helpers inside a write ------------------------------------------------
    async def _append_changes(
        self, conn: asyncpg.Connection, entries: Sequence[tuple[int, bytes]], op: str, at: float
    ) -> None:
        """Append feed entries (key id, digest) with the next sequences, and NOTIFY them."""
        if not entries:
            return
        last = int(
            await conn.fetchval(
                "UPDATE feed_state SET seq = seq + $1 WHERE id = 1 RETURNING seq", len(entries)
            )
        )
        first = last - len(entries) + 1
        await conn.execute(
            "INSERT INTO key_changes (seq, key_id, digest, op, at)"
            " SELECT $1 + ordinality - 1, key_id, digest, $4, $5"
            " FROM unnest($2::bigint[], $3::bytea[]) WITH ORDINALITY AS e(key_id, digest)",
            first,
            [key_id for key_id, _ in entries],
            [digest for _, digest in entries],
            op,
            at,
        )
        await conn.execute("SELECT pg_notify($1, $2)", self.channel, str(last))

    async def _audit_in(
        self,
        conn: asyncpg.Connection,
        at: float,
        actor: str,
        action: str,
        key_id: int | None = None,
        key_name: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append one audit row inside the current transaction; return its id."""
        return await self._audit_tx(PostgresTx(conn), at, actor, action, key_id, key_name, details)

    async def _key_in(self, conn: asyncpg.Connection, key_id: int) -> KeyRow:
        """Read one key inside the current transaction; raise NotFoundError."""
        row = await conn.fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = $1", key_id)
        if row is None:
            raise NotFoundError(f"no key with id {key_id}")
        return key_row(row)

    # --- keys ------------------------------------------------------------------
    async def create_key(
        self, new: NewKey, actor: str, idempotency: IdempotencyClaim | None = None
    ) -> KeyRow:
        """Insert a key; raise NameConflictError if the name is taken.

        An idempotency claim made before by `actor` raises IdempotentReplayError (same
        fingerprint) or IdempotencyMismatchError; a new one is recorded with the key. Key
        writes are serialised by the feed counter's lock, so two claims never race.
        """
        now = time.time()
        roles_text = roles_json(new.roles)
        async with self._write() as conn:
            if idempotency is not None:
                await self._check_claim(conn, actor, idempotency)
            try:
                key_id = int(
                    await conn.fetchval(
                        "INSERT INTO keys (name, description, roles, status, digest, prefix,"
                        " created_at, created_by, updated_at, expires_at, rate_limit)"
                        " VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $8, $9, $10) RETURNING id",
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
                    )
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "keys_name_key":
                    raise NameConflictError(f"a key named {new.name!r} already exists") from None
                raise
            await self._append_changes(conn, [(key_id, new.digest)], "upsert", now)
            await self._audit_in(
                conn,
                now,
                actor,
                ACTION_CREATE,
                key_id,
                new.name,
                create_details(new),
            )
            if idempotency is not None:
                await conn.execute(
                    "INSERT INTO idempotency_keys"
                    " (actor, idem_key, fingerprint, key_id, created_at)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (actor, idem_key) DO UPDATE"
                    " SET fingerprint = excluded.fingerprint, key_id = excluded.key_id,"
                    " created_at = excluded.created_at",
                    actor,
                    idempotency.key,
                    idempotency.fingerprint,
                    key_id,
                    now,
                )
        return created_row(key_id, new, roles_text, actor, now)

    async def _check_claim(
        self, conn: asyncpg.Connection, actor: str, claim: IdempotencyClaim
    ) -> None:
        """Forget expired idempotency records; raise if `actor` made this claim before."""
        await conn.execute("DELETE FROM idempotency_keys WHERE created_at < $1", claim.not_before)
        found = await conn.fetchrow(
            "SELECT fingerprint, key_id FROM idempotency_keys WHERE actor = $1 AND idem_key = $2",
            actor,
            claim.key,
        )
        if found is None:
            return
        if str(found[0]) != claim.fingerprint:
            raise IdempotencyMismatchError(
                f"idempotency key {claim.key!r} was used for another request"
            )
        key_id = int(found[1])
        row = await conn.fetchrow(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = $1", key_id)
        raise IdempotentReplayError(key_id, None if row is None else key_row(row))

    async def _one_key(self, column: str, value: Any) -> KeyRow | None:
        """Return the key whose `column` equals `value`, or None."""
        rows = await self._fetch(f"SELECT {KEY_COLUMNS} FROM keys WHERE {column} = $1", value)
        return key_row(rows[0]) if rows else None

    async def get_key(self, key_id: int) -> KeyRow | None:
        """Return a key by id, or None."""
        return await self._one_key("id", key_id)

    async def get_key_by_name(self, name: str) -> KeyRow | None:
        """Return a key by exact name, or None."""
        return await self._one_key("name", name)

    async def get_key_by_digest(self, digest: bytes) -> KeyRow | None:
        """Return the key whose secret (or whose secret before its last roll) has this digest."""
        rows = await self._fetch(
            f"SELECT {KEY_COLUMNS} FROM keys WHERE digest = $1 OR previous_digest = $1", digest
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

        The same filters and orders as the SQLite store: "active" excludes expired keys, the
        query matches name, description or prefix with ASCII case folding and no wildcards,
        `digest` a secret's digest (current or rolled) exactly; every order walks an index
        from the position (keyset paging).
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        moment = time.time() if now is None else now
        params = Params(numbered=True)
        where: list[str] = []
        if sort == "id":
            where.append(f"id > {params.add(after_id)}")
            order = "id"
        else:
            expression, descending = _SORT_EXPRESSIONS[sort]
            direction, beyond = ("DESC", "<") if descending else ("ASC", ">")
            if after is not None:
                value, last_id = after
                mark, id_mark = params.add(value), params.add(last_id)
                if sort.endswith("name"):  # the cursor holds the name as stored: fold it too
                    mark = ASCII_FOLD.format(f"{mark}::text")
                where.append(f"({expression}, id) {beyond} ({mark}, {id_mark})")
            order = f"{expression} {direction}, id {direction}"
        condition = status_condition(status, moment, expiring_within, params)
        if condition is not None:
            where.append(condition)
        if query:
            mark = params.add(like_pattern(query).translate(_ASCII_LOWER))
            where.append(
                "("
                + " OR ".join(
                    f"{ASCII_LOWER.format(column)} LIKE {mark} ESCAPE '\\'"
                    for column in ("name", "description", "prefix")
                )
                + ")"
            )
        if digest is not None:
            mark = params.add(digest)
            where.append(f"(digest = {mark} OR previous_digest = {mark})")
        limit_mark = params.add(limit)
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._fetch(
            f"SELECT {KEY_COLUMNS} FROM keys {condition} ORDER BY {order} LIMIT {limit_mark}",
            *params.values,
        )
        return [key_row(row) for row in rows]

    async def batch_counts(self, grants: Grants = None) -> dict[str, BatchResult]:
        """Return what revoke_all, reinstate_all and delete_revoked would do now, by action."""
        params = Params(numbered=True)
        scope = _within_grants(grants, params)
        rows = await self._fetch(
            f"SELECT status, COUNT(*), COUNT(*) FILTER (WHERE {scope}) FROM keys GROUP BY status",
            *params.values,
        )
        return batch_counts_of({str(row[0]): (int(row[1]), int(row[2])) for row in rows})

    async def update_key(
        self, key_id: int, changes: KeyChanges, actor: str, grants: Grants = None
    ) -> KeyRow:
        """Apply a partial edit; raise NotFoundError, NameConflictError or OutsideGrantsError.

        An edit that changes nothing writes nothing (no feed entry, no audit event).
        """
        now = time.time()
        async with self._write() as conn:
            current = await self._key_in(conn, key_id)
            check_grants(current, grants)
            edits = wanted_edits(current, changes)
            if not edits:
                return current
            columns = column_values(edits)
            params = Params(numbered=True)
            assignments = ", ".join(f"{field} = {params.add(v)}" for field, v in columns.items())
            try:
                await conn.execute(
                    f"UPDATE keys SET {assignments}, updated_at = {params.add(now)}"
                    f" WHERE id = {params.add(key_id)}",
                    *params.values,
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name == "keys_name_key":
                    raise NameConflictError(
                        f"a key named {edits['name']!r} already exists"
                    ) from None
                raise
            await self._append_changes(conn, [(key_id, current.digest)], "upsert", now)
            await self._audit_in(
                conn,
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
        """Revoke or reinstate one key; raise NotFoundError, OutsideGrantsError, KeyExpiredError."""
        now = time.time()
        status: KeyStatus = "revoked" if revoked else "active"
        revoked_at = now if revoked else None
        async with self._write() as conn:
            current = await self._key_in(conn, key_id)
            check_grants(current, grants)
            if not revoked:
                check_reinstatable(current, now)
            if current.status == status:
                return current
            await conn.execute(
                "UPDATE keys SET status = $1, revoked_at = $2, updated_at = $3 WHERE id = $4",
                status,
                revoked_at,
                now,
                key_id,
            )
            await self._append_changes(conn, [(key_id, current.digest)], "upsert", now)
            action = ACTION_REVOKE if revoked else ACTION_REINSTATE
            await self._audit_in(conn, now, actor, action, key_id, current.name)
        return dataclasses.replace(current, status=status, revoked_at=revoked_at, updated_at=now)

    async def delete_key(self, key_id: int, actor: str, grants: Grants = None) -> KeyRow:
        """Delete one key for good and return it; raise NotFoundError, OutsideGrantsError."""
        now = time.time()
        async with self._write() as conn:
            current = await self._key_in(conn, key_id)
            check_grants(current, grants)
            await conn.execute("DELETE FROM keys WHERE id = $1", key_id)
            await self._append_changes(conn, digests_of(current), "delete", now)
            await self._audit_in(
                conn, now, actor, ACTION_DELETE, key_id, current.name, {"status": current.status}
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
        async with self._write() as conn:
            current = await self._key_in(conn, key_id)
            check_grants(current, grants)
            await conn.execute(
                "UPDATE keys SET digest = $1, prefix = $2, previous_digest = $3,"
                " previous_expires_at = $4, rolled_at = $5, updated_at = $5 WHERE id = $6",
                digest,
                prefix,
                current.digest,
                until,
                now,
                key_id,
            )
            if current.previous_digest is not None:
                await self._append_changes(conn, [(key_id, current.previous_digest)], "delete", now)
            await self._append_changes(conn, [(key_id, digest)], "upsert", now)
            await self._audit_in(
                conn,
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
        status: KeyStatus,
        write: str,
        values: tuple[object, ...],
        grants: Grants,
    ) -> BatchResult:
        """Change every key with `status` within `grants` in one transaction.

        `write` is the statement for the chosen keys: $1 is their id array, `values` follow.
        Feed entries, the write and one audit event (count, skipped, ids) commit together.
        """
        now = time.time()
        async with self._write() as conn:
            total = int(await conn.fetchval("SELECT COUNT(*) FROM keys WHERE status = $1", status))
            params = Params(status, numbered=True)
            chosen = await conn.fetch(
                "SELECT id, digest, previous_digest FROM keys WHERE status = $1"
                f" AND {_within_grants(grants, params)} ORDER BY id",
                *params.values,
            )
            key_ids = [int(row[0]) for row in chosen]
            entries = [(int(row[0]), bytes(row[1])) for row in chosen]
            if op == "delete":
                entries += [(int(row[0]), bytes(row[2])) for row in chosen if row[2] is not None]
            await self._append_changes(conn, entries, op, now)
            if key_ids:
                await conn.execute(write, key_ids, *values)
            result = BatchResult(len(key_ids), total - len(key_ids))
            audit_id = await self._audit_in(
                conn, now, actor, action, details=batch_details(result, key_ids)
            )
            await conn.execute(
                "INSERT INTO audit_keys (key_id, audit_id)"
                " SELECT k, $2 FROM unnest($1::bigint[]) k",
                key_ids,
                audit_id,
            )
        return result

    async def revoke_all(self, actor: str, grants: Grants = None) -> BatchResult:
        """Revoke every active key within `grants` in one transaction."""
        now = time.time()
        return await self._batch(
            actor,
            ACTION_REVOKE_ALL,
            "upsert",
            "active",
            "UPDATE keys SET status = 'revoked', revoked_at = $2, updated_at = $3"
            " WHERE id = ANY($1::bigint[])",
            (now, now),
            grants,
        )

    async def reinstate_all(self, actor: str, grants: Grants = None) -> BatchResult:
        """Reinstate every revoked key within `grants` in one transaction."""
        return await self._batch(
            actor,
            ACTION_REINSTATE_ALL,
            "upsert",
            "revoked",
            "UPDATE keys SET status = 'active', revoked_at = NULL, updated_at = $2"
            " WHERE id = ANY($1::bigint[])",
            (time.time(),),
            grants,
        )

    async def delete_revoked(self, actor: str, grants: Grants = None) -> BatchResult:
        """Delete every revoked key within `grants` in one transaction."""
        return await self._batch(
            actor,
            ACTION_DELETE_REVOKED,
            "delete",
            "revoked",
            "DELETE FROM keys WHERE id = ANY($1::bigint[])",
            (),
            grants,
        )

    # --- change feed and cache loading ----------------------------------------
    async def load_auth(self, sink: Callable[[list[AuthRow]], None]) -> int:
        """Feed every key's auth row to `sink` in chunks; return the feed sequence they reflect.

        One REPEATABLE READ snapshot holds both the rows and the sequence; a server-side
        cursor brings LOAD_CHUNK rows per round trip, role tuples interned, the cyclic
        collector paused.
        """
        with gc_paused():
            async with (
                self._connection() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                seq = int(await conn.fetchval(_CURRENT_SEQ))
                cursor = await conn.cursor(f"SELECT {AUTH_COLUMNS} FROM keys ORDER BY id")
                while chunk := await cursor.fetch(LOAD_CHUNK):
                    sink(auth_rows(chunk))
        return seq

    async def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Return change-feed entries with sequence > seq, oldest first.

        Each entry carries the key's current row, or None once it is gone. Raise
        FeedPrunedError when entries after `seq` were pruned (the caller reloads).
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT c.seq, c.digest, {KEY_COLUMNS_K} FROM key_changes c"
                # By id: a rolled key's entries name its old digest, yet carry its current row.
                " LEFT JOIN keys k ON k.id = c.key_id AND c.op = 'upsert'"
                " WHERE c.seq > $1 ORDER BY c.seq LIMIT $2",
                seq,
                limit,
            )
            # Read after the entries: a prune in between costs a needless reload at worst.
            pruned_through = int(await conn.fetchval(_PRUNED_THROUGH))
        if seq < pruned_through:
            raise FeedPrunedError(seq, pruned_through)
        return [
            Change(row[0], bytes(row[1]), None if row[2] is None else key_row(row[2:]))
            for row in rows
        ]

    async def current_seq(self) -> int:
        """Return the latest change-feed sequence number (0 when empty)."""
        async with self._connection() as conn:
            return int(await conn.fetchval(_CURRENT_SEQ))

    async def prune_feed(self, keep_entries: int, keep_before: float) -> int:
        """Delete the oldest feed entries, keeping the newest `keep_entries` and any at or
        after `keep_before`; return how many were deleted (a prefix of the feed)."""
        async with self._write() as conn:
            latest, pruned_through = await conn.fetchrow(
                "SELECT seq, pruned_through FROM feed_state WHERE id = 1"
            )
            young = await conn.fetchval(
                "SELECT MIN(seq) FROM key_changes WHERE at >= $1", keep_before
            )
            cutoff = min(latest - keep_entries, latest if young is None else young - 1)
            if cutoff <= pruned_through:
                return 0
            deleted = await conn.fetchval(
                "WITH gone AS (DELETE FROM key_changes WHERE seq <= $1 RETURNING 1)"
                " SELECT COUNT(*) FROM gone",
                cutoff,
            )
            await conn.execute("UPDATE feed_state SET pruned_through = $1 WHERE id = 1", cutoff)
            return int(deleted)

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` on every NOTIFY of a committed key write until cancelled.

        A dedicated connection LISTENs; when it is lost (server restarted, connection
        terminated, network cut) it is reopened with back-off, and `wake` is called on every
        (re)connect so the follower catches up what it missed meanwhile.
        """
        delay = LISTEN_RETRY_MIN
        failing = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(functools.partial(_set_when_closed, lost))
                await conn.add_listener(self.channel, lambda *_args: wake())
                delay = LISTEN_RETRY_MIN
                if failing:
                    log.info("change-feed notifications resumed (%s)", self.location)
                failing = False
                wake()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTEN_CHECK_INTERVAL)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=LISTEN_CHECK_INTERVAL)
                raise ConnectionResetError("LISTEN connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not failing:
                    log.warning(
                        "change-feed notifications lost (%s); polling meanwhile, reconnecting",
                        _cause_of(error) if isinstance(error, _FAULTS) else error,
                    )
                failing = True
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RETRY_MAX)

    # --- moving between stores -------------------------------------------------
    async def export_contents(self) -> StoreContents:
        """Return every key, admin account and audit event (one REPEATABLE READ snapshot)."""
        async with (
            self._connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            keys = [
                key_row(row)
                for row in await conn.fetch(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY id")
            ]
            admins = [
                admin_account(row)
                for row in await conn.fetch(f"SELECT {ADMIN_COLUMNS} FROM admins ORDER BY name")
            ]
            audit = [
                audit_event(row)
                for row in await conn.fetch(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id")
            ]
        return StoreContents(keys, admins, audit)

    async def import_contents(self, contents: StoreContents, *, replace: bool) -> None:
        """Write `contents` with their ids in one transaction, a feed entry per key.

        Raise StoreNotEmptyError when the store holds data, unless `replace`. Identity
        counters move past every copied id (and every key id the audit names), so ids are
        never reused.
        """
        now = time.time()
        async with self._write() as conn:
            held = await conn.fetchval(
                "SELECT (SELECT COUNT(*) FROM keys) + (SELECT COUNT(*) FROM admins)"
                " + (SELECT COUNT(*) FROM audit)"
            )
            if held and not replace:
                raise StoreNotEmptyError(f"{self.location} already holds keys, admins or audit")
            gone = await conn.fetch(
                "SELECT id, digest FROM keys UNION ALL SELECT id, previous_digest FROM keys"
                " WHERE previous_digest IS NOT NULL"
            )
            await self._append_changes(
                conn, [(int(row[0]), bytes(row[1])) for row in gone], "delete", now
            )
            await conn.execute("DELETE FROM keys")
            await conn.execute("DELETE FROM admins")
            await conn.execute("DELETE FROM audit")
            await conn.copy_records_to_table(
                "keys",
                columns=KEY_COLUMNS.split(", "),
                records=[key_values(row) for row in contents.keys],
                schema_name=self.schema,
            )
            await self._append_changes(
                conn, [(row.id, row.digest) for row in contents.keys], "upsert", now
            )
            await conn.copy_records_to_table(
                "admins",
                columns=ADMIN_COLUMNS.split(", "),
                records=[admin_values(account) for account in contents.admins],
                schema_name=self.schema,
            )
            await conn.copy_records_to_table(
                "audit",
                columns=AUDIT_COLUMNS.split(", "),
                records=[audit_values(event) for event in contents.audit],
                schema_name=self.schema,
            )
            # Batch histories follow the audit rows; idempotency records named the old keys.
            await conn.execute("DELETE FROM audit_keys")
            await conn.execute(AUDIT_KEYS_FROM_DETAILS)
            await conn.execute("DELETE FROM idempotency_keys")
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence('keys', 'id'),"
                " GREATEST((SELECT MAX(id) FROM keys), (SELECT MAX(key_id) FROM audit), 0) + 1,"
                " false)"
            )
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence('audit', 'id'),"
                " COALESCE((SELECT MAX(id) FROM audit), 0) + 1, false)"
            )


async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Return a connection to the pool; one that fails its reset is dropped, not reported."""
    try:
        await pool.release(conn)
    except _FAULTS:
        with contextlib.suppress(*_FAULTS):
            conn.terminate()


def _set_when_closed(event: asyncio.Event, _conn: object) -> None:
    """Set `event` (an asyncpg termination listener: the connection closed)."""
    event.set()
