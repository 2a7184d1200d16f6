"""Build the configured KeyStore from a store URL (sqlite:///path or postgresql://...)."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import Settings
from gateway.store.base import KeyStore
from gateway.store.urls import (
    ERROR_NO_ASYNCPG,
    POSTGRES_SCHEMES,
    SQLITE_PREFIX,
    postgres_url_problem,
    sqlite_path,
)

__all__ = ["ERROR_NO_ASYNCPG", "SQLITE_PREFIX", "sqlite_path", "store_for", "store_from_url"]


def store_for(settings: Settings) -> KeyStore:
    """Return the unopened store the settings name (URL, password, schema)."""
    return store_from_url(
        settings.store.url,
        settings.base_dir,
        password=settings.store.password,
        schema=settings.store.schema,
    )


def store_from_url(
    url: str, base_dir: Path, *, password: str | None = None, schema: str | None = None
) -> KeyStore:
    """Return an unopened KeyStore for `url`; raise ValueError for anything unsupported.

    `base_dir` is the config file's directory, against which relative SQLite paths resolve;
    `password` and `schema` apply to PostgreSQL only. Store modules are imported here,
    lazily, so one backend's driver is not needed by the other.
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme:
        raise ValueError(f"store URL {url!r} has no scheme; use sqlite:///path or postgresql://...")
    if scheme == "sqlite":
        from gateway.store.sqlite import SqliteKeyStore

        return SqliteKeyStore(sqlite_path(url, base_dir))
    if scheme in POSTGRES_SCHEMES:
        problem = postgres_url_problem(url)
        if problem is not None:
            raise ValueError(f"PostgreSQL store URL {problem}")
        try:
            from gateway.store.postgres import PostgresKeyStore
        except ModuleNotFoundError as error:
            if error.name != "asyncpg":
                raise
            raise ValueError(ERROR_NO_ASYNCPG) from None
        return PostgresKeyStore(url, password=password, schema=schema)
    raise ValueError(
        f"store URL scheme {scheme!r} is not supported; use sqlite:///path or postgresql://..."
    )
