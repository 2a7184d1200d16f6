"""The shared SQL store's footing: the dialect, the transaction handle, the base class."""

from __future__ import annotations

import abc
import functools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.store.base import Grants, KeyRow, NotFoundError, SortPosition
from gateway.store.common import KEY_COLUMNS, Params, details_json, key_row

# Distinct statement texts whose numbered form is kept (statements, not values: a bound).
TRANSLATED_STATEMENTS = 1024

INSERT_AUDIT = (
    "INSERT INTO audit (at, actor, action, key_id, key_name, details) VALUES (?, ?, ?, ?, ?, ?)"
)
PRUNED_THROUGH = "SELECT pruned_through FROM feed_state WHERE id = 1"


@functools.lru_cache(maxsize=TRANSLATED_STATEMENTS)
def numbered(sql: str) -> str:
    """Return `sql` with its positional `?` marks as PostgreSQL's `$1, $2, ...`.

    Shared statements are written with `?`; none holds a `?` inside a literal.
    """
    pieces = sql.split("?")
    out = [pieces[0]]
    for number, piece in enumerate(pieces[1:], start=1):
        out.append(f"${number}{piece}")
    return "".join(out)


def _positional(sql: str) -> str:
    """Return `sql` unchanged (SQLite takes `?` marks as written)."""
    return sql


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL of the backends, as values the shared methods use.

    Fragments that take values add them to a `Params` (written with `?`) in text order.
    """

    name: str
    # PostgreSQL's $n placeholders (True) or SQLite's positional ? (False).
    numbered: bool
    # The two-argument maximum: SQLite's scalar max(), PostgreSQL's GREATEST().
    greatest: str
    # Appended to a SELECT that reads a row the transaction then updates (SQLite's
    # BEGIN IMMEDIATE already holds the write lock: nothing to add).
    for_update: str
    # True when an exception is a unique-constraint violation on `table.column`.
    is_unique_violation: Callable[[BaseException, str], bool]
    # The key list's orders (other than by id): the indexed expression, and descending.
    sort_expressions: Mapping[str, tuple[str, bool]]
    # The condition of a sorted page after a position: (sort, expression, "<" or ">",
    # position, params); it must let the backend walk the sort's index from there.
    keyset: Callable[[str, str, str, SortPosition, Params], str]
    # A column's text with ASCII letters folded to lower case, for a text query's LIKE
    # ("{}" where LIKE folds them itself, as SQLite's does).
    like_fold: str
    # The condition "every role of the key lies within grants" (None: every key).
    within_grants: Callable[[Grants, Params], str]
    # The condition "the key holds this role" (its roles column is a JSON array).
    has_role: Callable[[str, Params], str]
    # A subquery of one column, `id`, holding the given ids (one parameter, any count).
    id_list: Callable[[list[int], Params], str]
    # The feed's latest sequence, even when pruning removed every entry.
    current_seq: str
    # Fills audit_keys from the key ids batch entries list in their details.
    audit_keys_from_details: str
    # Statements run last in an import (identity counters moved past the copied ids).
    after_import: tuple[str, ...] = ()

    def sql(self, text: str) -> str:
        """Return a shared statement (written with `?`) in this dialect's placeholders."""
        return numbered(text) if self.numbered else _positional(text)


def marks(count: int) -> str:
    """Return `count` comma-separated `?` marks for an IN list ("NULL" for none: no match)."""
    return ", ".join("?" * count) or "NULL"


class Tx(Protocol):
    """One open transaction of a backend: statements are written with `?` placeholders."""

    async def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; return how many rows it changed."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters."""

    async def fetch(self, sql: str, *params: Any) -> list[Any]:
        """Run one statement and return every row it yields."""

    async def insert_id(self, sql: str, *params: Any) -> int:
        """Run one INSERT into a table with an `id` identity; return the new row's id."""

    def chunks(self, sql: str, size: int) -> AsyncIterator[list[Any]]:
        """Yield the rows of one read statement, `size` at a time (a cursor, not one list)."""

    async def append_changes(
        self, entries: Sequence[tuple[int, bytes]], op: str, at: float
    ) -> None:
        """Append change-feed entries (key id, digest) with the next sequences, in order."""

    async def copy_rows(self, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows of `columns` (a comma-separated list) into `table`, ids included."""


class SqlBase(abc.ABC):
    """What every role's shared methods build on: a backend's dialect and transactions.

    A backend supplies its dialect, a write transaction (`_tx`), a consistent read-only
    snapshot (`_snapshot`) and a one-statement read (`_read`).
    """

    dialect: Dialect

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the data lives (a file path, a server), for messages."""

    @abc.abstractmethod
    def _tx(self, *, feed: bool) -> AbstractAsyncContextManager[Tx]:
        """Open one write transaction; `feed` when it appends change-feed entries."""

    @abc.abstractmethod
    def _snapshot(self) -> AbstractAsyncContextManager[Tx]:
        """Open one read-only transaction: every read in it sees the same moment."""

    @abc.abstractmethod
    async def _read(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one read statement (written with `?`) outside a transaction; return its rows."""

    async def _audit_tx(
        self,
        tx: Tx,
        at: float,
        actor: str,
        action: str,
        key_id: int | None = None,
        key_name: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append one audit row inside the transaction `tx`; return its id."""
        return await tx.insert_id(
            INSERT_AUDIT, at, actor, action, key_id, key_name, details_json(details)
        )

    async def _key_tx(self, tx: Tx, key_id: int) -> KeyRow:
        """Read one key inside the transaction `tx`; raise NotFoundError.

        Key writes are serialised (SQLite's write lock, PostgreSQL's feed counter row), so
        the row cannot change before the transaction ends.
        """
        rows = await tx.fetch(f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?", key_id)
        if not rows:
            raise NotFoundError(f"no key with id {key_id}")
        return key_row(rows[0])
