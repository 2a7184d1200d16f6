"""The shared SQL store's dialect: one statement text, each backend's placeholders."""

from __future__ import annotations

from gateway.store.postgres import POSTGRES
from gateway.store.sql import marks
from gateway.store.sqlite import SQLITE

STATEMENT = "SELECT 1 FROM t WHERE a = ? AND b IN (?, ?) AND c::text[] && ?::text[]"


def test_postgres_numbers_the_marks_in_order() -> None:
    """Each `?` becomes the next $n; casts after a mark are kept."""
    assert POSTGRES.sql(STATEMENT) == (
        "SELECT 1 FROM t WHERE a = $1 AND b IN ($2, $3) AND c::text[] && $4::text[]"
    )


def test_sqlite_takes_the_statement_as_written() -> None:
    """SQLite's placeholders are the shared ones."""
    assert SQLITE.sql(STATEMENT) == STATEMENT


def test_an_empty_in_list_matches_nothing() -> None:
    """No values give IN (NULL), true for no row, rather than a syntax error."""
    assert marks(0) == "NULL"
    assert marks(3) == "?, ?, ?"
