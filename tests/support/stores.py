"""Store backends under test (SQLite files, PostgreSQL schemas), raw SQL, rows and key tables."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.keys.table import KeyTable
from gateway.store.base import AuthRow, KeyRow, KeyStore, NewKey

# The PostgreSQL server the tests use; each run makes its own database there and drops it.
POSTGRES_ENV_VAR = "KEYGATE_TEST_POSTGRES"


DEFAULT_TEST_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


# Seconds to wait for the test server before calling it unreachable.
POSTGRES_PROBE_TIMEOUT = 3.0


def postgres_server_url() -> str:
    """The test server's URL: $KEYGATE_TEST_POSTGRES, else the local default."""
    return os.environ.get(POSTGRES_ENV_VAR) or DEFAULT_TEST_POSTGRES


def with_database(url: str, database: str) -> str:
    """Return `url` naming another database on the same server."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


_schema_counter = iter(range(1, 1_000_000))


def fresh_schema() -> str:
    """A schema name no test of this run has used."""
    return f"t{os.getpid()}_{next(_schema_counter)}"


# Catalog entries that make up a schema's structure: a migrated schema is reused only while
# its structure equals the template's (a test that added a trigger or function spoils it).
_STRUCTURE = """
SELECT coalesce(string_agg(part, ',' ORDER BY part), '') FROM (
    SELECT c.relkind::text || ':' || c.relname FROM pg_class c
    WHERE c.relnamespace = $1::regnamespace
    UNION ALL
    SELECT 'a:' || c.relname || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod)
        || ':' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = $1::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 't:' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE c.relnamespace = $1::regnamespace
    UNION ALL
    SELECT 'f:' || p.proname || ':' || md5(p.prosrc) FROM pg_proc p
    WHERE p.pronamespace = $1::regnamespace
    UNION ALL
    SELECT 'k:' || conname || ':' || pg_get_constraintdef(oid) FROM pg_constraint
    WHERE connamespace = $1::regnamespace
) AS parts(part)
"""
# Seconds a reset waits for a lock (a connection a test left open): past it, a new schema.
SCHEMA_RESET_LOCK_TIMEOUT = "2s"


def _quoted(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


class MigratedSchemas:
    """Schemas of the run's PostgreSQL database, each reset to just-migrated between tests.

    Migrating a fresh schema costs the server ~60-250 ms of DDL (most of a store test's
    setup); resetting a used one to the template's contents (every table emptied and
    refilled, every sequence set back) costs a few milliseconds. A schema is reused only when
    its structure still equals the template's; otherwise (or when a reset fails) it is left
    alone and a new name is handed out, which the store migrates on open as before. A test
    that must see migrations run asks for `fresh_schema()` instead.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.template = f"t{os.getpid()}_template"
        self._free: list[str] = []
        self._structure: str | None = None
        self._tables: list[str] = []
        self._sequences: list[tuple[str, int, bool]] = []

    async def _connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(self.url)

    async def _prepare(self) -> None:
        """Migrate the template schema once and note its structure, tables and sequences."""
        from gateway.store.postgres import PostgresKeyStore

        store = PostgresKeyStore(self.url, schema=self.template)
        await store.open(create=True)
        await store.close()
        conn = await self._connect()
        try:
            self._structure = await conn.fetchval(_STRUCTURE, self.template)
            self._tables = [
                row[0]
                for row in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename",
                    self.template,
                )
            ]
            self._sequences = [
                (row[0], row[1] if row[1] is not None else row[2], row[1] is not None)
                for row in await conn.fetch(
                    "SELECT sequencename, last_value, start_value FROM pg_sequences"
                    " WHERE schemaname = $1",
                    self.template,
                )
            ]
        finally:
            await conn.close()

    async def _reset(self, schema: str) -> bool:
        """Make `schema` equal the template again; False when it cannot be (left alone)."""
        import asyncpg

        conn = await self._connect()
        try:
            if await conn.fetchval(_STRUCTURE, schema) != self._structure:
                return False
            target, template = _quoted(schema), _quoted(self.template)
            # DELETE, not TRUNCATE: a truncate makes new files for every table and index,
            # which costs as much as migrating anew; the tables hold few rows (no foreign keys).
            statements = [
                f"SET LOCAL lock_timeout = '{SCHEMA_RESET_LOCK_TIMEOUT}'",
                *(f"DELETE FROM {target}.{_quoted(t)}" for t in self._tables),
                *(
                    f"INSERT INTO {target}.{_quoted(t)} SELECT * FROM {template}.{_quoted(t)}"
                    for t in self._tables
                ),
                *(
                    f"SELECT setval('{target}.{_quoted(name)}', {value}, {is_called})"
                    for name, value, is_called in self._sequences
                ),
            ]
            async with conn.transaction():
                await conn.execute(";".join(statements))
            return True
        except (asyncpg.PostgresError, OSError):
            return False
        finally:
            await conn.close()

    async def take(self) -> str:
        """A schema as the store's first open leaves it: a reset used one, or a new name."""
        if self._structure is None:
            await self._prepare()
        while self._free:
            schema = self._free.pop()
            if await self._reset(schema):
                return schema
        return fresh_schema()

    def give_back(self, schema: str) -> None:
        """Offer `schema` for reuse once its test has closed every store on it."""
        self._free.append(schema)


@dataclass
class StoreBackend:
    """One store backend under test: how to make stores on one fresh database, and raw SQL."""

    name: str
    location: str  # the SQLite file, or the PostgreSQL URL
    schema: str | None = None  # PostgreSQL: the schema this test's store lives in

    def make(self) -> KeyStore:
        """Return a new, unopened store on this test's database (another "process")."""
        if self.name == "sqlite":
            from gateway.store.sqlite import SqliteKeyStore

            return SqliteKeyStore(self.location)
        from gateway.store.postgres import PostgresKeyStore

        return PostgresKeyStore(self.location, schema=self.schema)

    @property
    def refused(self) -> type[Exception]:
        """The error a refusal trigger (see `refuse`) makes the store raise."""
        if self.name == "sqlite":
            import sqlite3

            return sqlite3.IntegrityError
        import asyncpg

        return asyncpg.RaiseError  # type: ignore[no-any-return]

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run SQL behind the store's back ($1-style parameters) and return every row."""
        if self.name == "sqlite":
            import re
            import sqlite3

            connection = sqlite3.connect(self.location, isolation_level=None)
            try:
                return connection.execute(re.sub(r"\$\d+", "?", sql), params).fetchall()
            finally:
                connection.close()
        import asyncpg

        conn = await asyncpg.connect(self.location, server_settings={"search_path": self.schema})
        try:
            return [tuple(row) for row in await conn.fetch(sql, *params)]
        finally:
            await conn.close()

    async def insert_bulk_keys(self, rows: Sequence[tuple[str, str, bytes]]) -> None:
        """Insert (name, roles JSON, digest) keys directly, without feed entries or audit."""
        if self.name == "sqlite":
            import sqlite3

            connection = sqlite3.connect(self.location, isolation_level=None)
            try:
                connection.execute("BEGIN")
                connection.executemany(
                    "INSERT INTO keys (name, roles, status, digest, prefix, created_at,"
                    " created_by, updated_at) VALUES (?, ?, 'active', ?, 'kg_x', 1.0,"
                    " 'cli:root', 1.0)",
                    rows,
                )
                connection.execute("COMMIT")
            finally:
                connection.close()
            return
        import asyncpg

        conn = await asyncpg.connect(self.location, server_settings={"search_path": self.schema})
        try:
            await conn.copy_records_to_table(
                "keys",
                columns=[
                    *("name", "roles", "status", "digest", "prefix"),
                    *("created_at", "created_by", "updated_at"),
                ],
                records=[
                    (name, roles, "active", digest, "kg_x", 1.0, "cli:root", 1.0)
                    for name, roles, digest in rows
                ],
                schema_name=self.schema,
            )
        finally:
            await conn.close()

    async def refuse(self, name: str, event: str, table: str, when: str, message: str) -> None:
        """Add a trigger that makes `event` (INSERT/UPDATE/DELETE) on `table` fail when
        `when` (SQL on OLD/NEW) holds, with `message`."""
        if self.name == "sqlite":
            await self.rows(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {when}"
                f" BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
            return
        await self.rows(
            f"CREATE FUNCTION {name}_fn() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN RAISE EXCEPTION '{message}'; END $$"
        )
        await self.rows(
            f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW WHEN ({when})"
            f" EXECUTE FUNCTION {name}_fn()"
        )

    async def allow(self, name: str, table: str) -> None:
        """Remove a trigger added by `refuse`."""
        if self.name == "sqlite":
            await self.rows(f"DROP TRIGGER {name}")
        else:
            await self.rows(f"DROP TRIGGER {name} ON {table}")


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


def fill_table(table: KeyTable, rows: Iterable[KeyRow], seq: int) -> None:
    """Replace a key table's contents with `rows` at feed sequence `seq`, as a cold load does."""
    loader = table.loader()
    loader.add(
        (r.digest, r.id, r.name, r.roles, r.status, r.expires_at, None, None, r.rate_limit)
        for r in rows
    )
    loader.finish(seq)


async def load_auth_rows(store: KeyStore) -> tuple[list[AuthRow], int]:
    """Return every auth row the store's cold load gives, and the sequence they reflect."""
    rows: list[AuthRow] = []
    seq = await store.load_auth(rows.extend)
    return rows, seq


async def load_table_from(store: KeyStore, table: KeyTable) -> None:
    """Fill `table` from the store the way a starting gateway does."""
    loader = table.loader()
    loader.finish(await store.load_auth(loader.add))
