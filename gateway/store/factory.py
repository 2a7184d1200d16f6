"""Build the configured KeyStore from a store URL (sqlite:///path or postgresql://...)."""

from __future__ import annotations

from pathlib import Path

from gateway.store.base import KeyStore

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")

ERROR_POSTGRES_UNAVAILABLE = "PostgreSQL store is not available yet"


def sqlite_path(url: str, base_dir: Path) -> Path:
    """Return the database file of a sqlite:/// URL; relative paths are under base_dir.

    `sqlite:///data/keygate.db` is base_dir/data/keygate.db; `sqlite:////var/lib/k.db`
    (four slashes) is the absolute /var/lib/k.db.
    """
    if not url.lower().startswith(SQLITE_PREFIX):
        raise ValueError(
            f"SQLite store URL {url!r} must be sqlite:/// followed by a file path "
            "(e.g. sqlite:///keygate.db, or sqlite:////var/lib/keygate/keygate.db)"
        )
    raw = url[len(SQLITE_PREFIX) :]
    if not raw:
        raise ValueError(f"SQLite store URL {url!r} names no database file")
    if raw == ":memory:" or raw.startswith("file:"):
        raise ValueError(
            f"SQLite store URL {url!r}: only a database file path is supported "
            "(the key table is shared between processes through the file)"
        )
    path = Path(raw)
    return path if path.is_absolute() else base_dir / path


def store_from_url(url: str, base_dir: Path) -> KeyStore:
    """Return an unopened KeyStore for `url`; raise ValueError for anything unsupported.

    `base_dir` is the config file's directory, against which relative SQLite paths resolve.
    Store modules are imported here, lazily, so one backend's driver is not needed by
    the other.
    """
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme:
        raise ValueError(f"store URL {url!r} has no scheme; use sqlite:///path or postgresql://...")
    if scheme == "sqlite":
        from gateway.store.sqlite import SqliteKeyStore

        return SqliteKeyStore(sqlite_path(url, base_dir))
    if scheme in POSTGRES_SCHEMES:
        raise ValueError(ERROR_POSTGRES_UNAVAILABLE)
    raise ValueError(
        f"store URL scheme {scheme!r} is not supported; use sqlite:///path or postgresql://..."
    )
