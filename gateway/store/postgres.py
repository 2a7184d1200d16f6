"""PostgreSQL key store: the dialect, pool, transactions and LISTEN/NOTIFY of a shared server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway.store.base import (
    Grants,
    SortPosition,
    StoreMissingError,
    StoreUnavailableError,
)
from gateway.store.common import Params
from gateway.store.migrations.postgres import (
    ASCII_FOLD,
    ASCII_LOWER,
    AUDIT_KEYS_FROM_DETAILS,
    NAME_FOLD,
    SchemaTooNewError,
    apply_migrations,
)
from gateway.store.sql import Dialect, Tx, numbered
from gateway.store.sql_store import SqlStore

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


def _keyset(sort: str, expression: str, beyond: str, after: SortPosition, params: Params) -> str:
    """Return the condition of a sorted page after `after`: one row comparison on the index."""
    value, last_id = after
    mark, id_mark = params.add(value), params.add(last_id)
    if sort.endswith("name"):  # the cursor holds the name as stored: fold it too
        mark = ASCII_FOLD.format(f"{mark}::text")
    return f"({expression}, id) {beyond} ({mark}, {id_mark})"


def _within_grants(grants: Grants, params: Params) -> str:
    """Return an SQL condition true for keys whose roles all lie within `grants`."""
    if grants is None:
        return "TRUE"
    inside = f"WHERE role <> ALL({params.add(sorted(grants))}::text[])" if grants else ""
    return f"NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(keys.roles::jsonb) role {inside})"


def _has_role(role: str, params: Params) -> str:
    """Return an SQL condition true for keys holding `role`."""
    return (
        "EXISTS (SELECT 1 FROM jsonb_array_elements_text(keys.roles::jsonb) role"
        f" WHERE role = {params.add(role)})"
    )


def _id_list(ids: list[int], params: Params) -> str:
    """Return a subquery of the ids, passed as one array."""
    return f"(SELECT unnest({params.add(ids)}::bigint[]) AS id)"


# The unique constraint of each `table.column` the store maps to a name conflict.
_UNIQUE_CONSTRAINTS = {"keys.name": "keys_name_key", "admins.name": "admins_pkey"}


def _unique_violation(error: BaseException, column: str) -> bool:
    """Return True when `error` is a violation of `table.column`'s unique constraint."""
    return isinstance(
        error, asyncpg.UniqueViolationError
    ) and error.constraint_name == _UNIQUE_CONSTRAINTS.get(column)


POSTGRES = Dialect(
    name="postgres",
    numbered=True,
    greatest="GREATEST",
    for_update=" FOR UPDATE",
    is_unique_violation=_unique_violation,
    sort_expressions=_SORT_EXPRESSIONS,
    keyset=_keyset,
    like_fold=ASCII_LOWER,
    within_grants=_within_grants,
    has_role=_has_role,
    id_list=_id_list,
    current_seq=_CURRENT_SEQ,
    audit_keys_from_details=AUDIT_KEYS_FROM_DETAILS,
    after_import=(
        # Identity counters move past every copied id (and every key id the audit names),
        # so ids are never reused.
        "SELECT setval(pg_get_serial_sequence('keys', 'id'),"
        " GREATEST((SELECT MAX(id) FROM keys), (SELECT MAX(key_id) FROM audit), 0) + 1,"
        " false)",
        "SELECT setval(pg_get_serial_sequence('audit', 'id'),"
        " COALESCE((SELECT MAX(id) FROM audit), 0) + 1, false)",
    ),
)


def _rows_changed(status: str) -> int:
    """Return the row count of a command status ("UPDATE 1", "INSERT 0 1", "DELETE 3")."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class PostgresTx:
    """A transaction on one pooled asyncpg connection, as the shared SQL store uses it."""

    def __init__(self, conn: asyncpg.Connection, channel: str, schema: str | None) -> None:
        self._conn = conn
        self._channel = channel
        self._schema = schema

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

    async def chunks(self, sql: str, size: int) -> AsyncIterator[list[Any]]:
        """Yield the rows of one read statement, `size` per round trip (a server-side cursor)."""
        cursor = await self._conn.cursor(numbered(sql))
        while chunk := await cursor.fetch(size):
            yield chunk

    async def append_changes(
        self, entries: Sequence[tuple[int, bytes]], op: str, at: float
    ) -> None:
        """Append feed entries with the next sequences of the counter row, and NOTIFY them.

        The caller's transaction holds the counter row's lock (`_write(feed=True)`), so
        sequences commit in order without gaps.
        """
        if not entries:
            return
        last = int(
            await self._conn.fetchval(
                "UPDATE feed_state SET seq = seq + $1 WHERE id = 1 RETURNING seq", len(entries)
            )
        )
        first = last - len(entries) + 1
        await self._conn.execute(
            "INSERT INTO key_changes (seq, key_id, digest, op, at)"
            " SELECT $1 + ordinality - 1, key_id, digest, $4, $5"
            " FROM unnest($2::bigint[], $3::bytea[]) WITH ORDINALITY AS e(key_id, digest)",
            first,
            [key_id for key_id, _ in entries],
            [digest for _, digest in entries],
            op,
            at,
        )
        await self._conn.execute("SELECT pg_notify($1, $2)", self._channel, str(last))

    async def copy_rows(self, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows of `columns` into `table` with COPY, ids included."""
        await self._conn.copy_records_to_table(
            table, columns=columns.split(", "), records=rows, schema_name=self._schema
        )


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

    @contextlib.asynccontextmanager
    async def _tx(self, *, feed: bool) -> AsyncIterator[Tx]:
        """Open one write transaction; a key write first takes the feed counter's lock."""
        async with self._write(feed=feed) as conn:
            yield self._tx_on(conn)

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Tx]:
        """Open one REPEATABLE READ, read-only transaction: every read sees one snapshot."""
        async with (
            self._connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield self._tx_on(conn)

    def _tx_on(self, conn: asyncpg.Connection) -> PostgresTx:
        """Return the shared store's handle on a transaction open on `conn`."""
        return PostgresTx(conn, self.channel, self.schema)

    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one read statement outside a transaction, on a pooled connection."""
        async with self._connection() as conn:
            return list(await conn.fetch(numbered(sql), *params))

    async def ping(self) -> None:
        """Raise StoreUnavailableError unless the store reads and takes a one-row write."""
        async with self._write(feed=False) as conn:
            await conn.execute(
                "INSERT INTO store_health (id, at) VALUES (1, $1)"
                " ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                time.time(),
            )

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
