"""Numbered schema migrations, one module per store backend (SQLite, PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store.base import StoreError


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: its version number, a short description and its SQL statements."""

    version: int
    description: str
    statements: tuple[str, ...]


class SchemaTooNewError(StoreError, RuntimeError):
    """The database was migrated by a newer keygate than this one."""


def too_new(current: int, latest: int) -> SchemaTooNewError:
    """Return the error for a database at schema `current` when this code knows `latest`."""
    return SchemaTooNewError(
        f"database schema version {current} is newer than this keygate supports "
        f"({latest}); upgrade keygate"
    )


def check_sequence(migrations: tuple[Migration, ...]) -> None:
    """Raise ValueError unless versions run 1, 2, 3, ... with no gap or repeat."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(
                f"migration {migration.description!r} has version {migration.version}, "
                f"expected {expected}"
            )
