"""Store URL rules: which sqlite:/// and postgresql:// URLs are usable (pure, no drivers)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Query parameters a PostgreSQL store URL may carry.
POSTGRES_URL_PARAMETERS = ("sslmode", "application_name")

ERROR_NO_ASYNCPG = "the PostgreSQL store needs the asyncpg driver: pip install 'keygate[postgres]'"


def postgres_url_problem(url: str) -> str | None:
    """Return what is wrong with a postgresql:// store URL, or None when it is usable."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as error:
        return f"is not a valid URL: {error}"
    if parts.scheme.lower() not in POSTGRES_SCHEMES:
        return "must start with postgresql://"
    if not parts.hostname:
        return "names no server (postgresql://user@host:5432/database)"
    database = parts.path.lstrip("/")
    if not database or "/" in database:
        return "must name one database (postgresql://user@host:5432/database)"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in POSTGRES_URL_PARAMETERS:
            allowed = ", ".join(POSTGRES_URL_PARAMETERS)
            return f"parameter {name!r} is not supported (only {allowed})"
        if name == "sslmode" and value not in SSL_MODES:
            return f"sslmode must be one of {', '.join(SSL_MODES)}"
    if parts.fragment:
        return "must have no fragment"
    return None


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
