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
