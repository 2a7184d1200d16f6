"""The SQL store both backends share: a small dialect, a transaction handle, shared methods."""

from __future__ import annotations

import abc
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.store.base import (
    AbandonedEvent,
    AdminAccount,
    AdminSession,
    AuditEvent,
    LoginFailures,
    NameConflictError,
    NotFoundError,
    ReceiverState,
)
from gateway.store.common import (
    ABANDONED_COLUMNS,
    ACTION_ADMIN_ADD,
    ACTION_ADMIN_GRANTS,
    ACTION_ADMIN_PASSWD,
    ACTION_ADMIN_REMOVE,
    ACTION_EXPIRING,
    ADMIN_COLUMNS,
    AUDIT_COLUMNS,
    EXPIRY_ACTOR,
    RECEIVER_COLUMNS,
    SESSION_COLUMNS,
    Params,
    abandoned_event,
    abandoned_values,
    admin_account,
    audit_conditions,
    audit_event,
    details_json,
    expiry_details,
    grants_details,
    receiver_state,
    receiver_values,
    roles_json,
    session_of,
)

# Distinct statement texts whose numbered form is kept (statements, not values: a bound).
TRANSLATED_STATEMENTS = 1024

INSERT_AUDIT = (
    "INSERT INTO audit (at, actor, action, key_id, key_name, details) VALUES (?, ?, ?, ?, ?, ?)"
)


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
    """What differs between the SQL of the backends, as values the shared methods use."""

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


class SqlStore(abc.ABC):
    """The store methods whose SQL and control flow are the same on SQLite and PostgreSQL.

    A backend supplies its dialect, a transaction (`_tx`) and a one-statement read
    (`_read`); the methods here are written once against them.
    """

    dialect: Dialect

    @abc.abstractmethod
    def _tx(self, *, feed: bool) -> AbstractAsyncContextManager[Tx]:
        """Open one write transaction; `feed` when it appends change-feed entries."""

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

    # --- notifications (the audit log is their outbox) ---------------------------
    async def count_expiring(self, now: float, within: float) -> int:
        """Return how many active keys expire after `now` and within `within` seconds."""
        rows = await self._read(
            "SELECT COUNT(*) FROM keys WHERE status = 'active'"
            " AND expires_at > ? AND expires_at <= ?",
            (now, now + within),
        )
        return int(rows[0][0])

    async def open_receiver(self, receiver: str) -> ReceiverState:
        """Return a receiver's state; a new receiver starts after the newest audit event."""
        async with self._tx(feed=False) as tx:
            await tx.execute(
                "INSERT INTO notify_receivers (receiver, cursor_id)"
                # WHERE true: SQLite's parser needs it before ON CONFLICT after a SELECT.
                " SELECT ?, COALESCE(MAX(id), 0) FROM audit WHERE true ON CONFLICT DO NOTHING",
                receiver,
            )
            rows = await tx.fetch(
                f"SELECT {RECEIVER_COLUMNS} FROM notify_receivers WHERE receiver = ?", receiver
            )
        return receiver_state(rows[0])

    async def list_receivers(self) -> list[ReceiverState]:
        """Return every receiver's state, by receiver id."""
        rows = await self._read(
            f"SELECT {RECEIVER_COLUMNS} FROM notify_receivers ORDER BY receiver", ()
        )
        return [receiver_state(row) for row in rows]

    async def lease_receiver(self, receiver: str, owner: str, now: float, until: float) -> bool:
        """Take or renew the right to deliver to `receiver` until `until`; False if held."""
        async with self._tx(feed=False) as tx:
            changed = await tx.execute(
                "UPDATE notify_receivers SET owner = ?, lease_until = ? WHERE receiver = ?"
                " AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until <= ?)",
                owner,
                until,
                receiver,
                owner,
                now,
            )
        return changed == 1

    async def save_receiver(self, state: ReceiverState, expected_cursor: int) -> bool:
        """Write a receiver's cursor and retry state if its cursor is still `expected_cursor`."""
        async with self._tx(feed=False) as tx:
            return await self._save_receiver_tx(tx, state, expected_cursor)

    async def _save_receiver_tx(self, tx: Tx, state: ReceiverState, expected_cursor: int) -> bool:
        """Write a receiver's state inside the transaction `tx` (compare-and-set)."""
        changed = await tx.execute(
            "UPDATE notify_receivers SET cursor_id = ?, attempts = ?, first_attempt = ?,"
            " next_attempt = ?, last_error = ? WHERE receiver = ? AND cursor_id = ?",
            *receiver_values(state),
            expected_cursor,
        )
        return changed == 1

    async def abandon_event(
        self,
        state: ReceiverState,
        expected_cursor: int,
        event: AbandonedEvent,
        forget_before: float,
    ) -> bool:
        """Record an abandoned event and save `state` (past it) in one transaction."""
        async with self._tx(feed=False) as tx:
            if not await self._save_receiver_tx(tx, state, expected_cursor):
                return False
            await tx.execute("DELETE FROM notify_abandoned WHERE abandoned_at < ?", forget_before)
            await tx.execute(
                f"INSERT INTO notify_abandoned ({ABANDONED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                *abandoned_values(event),
            )
            return True

    async def list_abandoned(self, limit: int = 100) -> list[AbandonedEvent]:
        """Return abandoned events, newest first."""
        rows = await self._read(
            f"SELECT {ABANDONED_COLUMNS} FROM notify_abandoned ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [abandoned_event(row) for row in rows]

    async def claim_expiry_notices(
        self, key_id: int, key_name: str, days: tuple[int, ...], expires_at: float, at: float
    ) -> tuple[int, ...]:
        """Record notices (key, days before expiry, expiry); return the days not sent before.

        When any is new, the nearest is audited (action `expiring`) in the same transaction.
        """
        claimed: list[int] = []
        async with self._tx(feed=False) as tx:
            for day in days:
                inserted = await tx.execute(
                    "INSERT INTO expiry_notices (key_id, days, expires_at, sent_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    key_id,
                    day,
                    expires_at,
                    at,
                )
                if inserted == 1:
                    claimed.append(day)
            if claimed:
                details = expiry_details(min(claimed), expires_at, at)
                await self._audit_tx(
                    tx, at, EXPIRY_ACTOR, ACTION_EXPIRING, key_id, key_name, details
                )
        return tuple(claimed)

    # --- usage -----------------------------------------------------------------
    async def record_usage(self, usage: dict[int, tuple[float, int]]) -> None:
        """Add use counts and raise last_used_at for many keys in one transaction.

        Unknown ids (keys deleted meanwhile) are ignored; no change-feed entry is written.
        Rows are updated in id order, so two instances flushing at once never deadlock.
        """
        if not usage:
            return
        rows = [
            (uses, last_used, last_used, key_id)
            for key_id, (last_used, uses) in sorted(usage.items())
        ]
        async with self._tx(feed=False) as tx:
            await tx.executemany(
                "UPDATE keys SET use_count = use_count + ?,"
                f" last_used_at = {self.dialect.greatest}(COALESCE(last_used_at, ?), ?)"
                " WHERE id = ?",
                rows,
            )

    # --- audit -----------------------------------------------------------------
    async def append_audit(
        self,
        actor: str,
        action: str,
        key_id: int | None = None,
        key_name: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record one audit event (for actions not already audited by a key write)."""
        async with self._tx(feed=False) as tx:
            await self._audit_tx(tx, time.time(), actor, action, key_id, key_name, details)

    async def list_audit(
        self,
        *,
        key_id: int | None = None,
        key_name: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[AuditEvent]:
        """List audit events newest first (id < before_id), filtered; since is inclusive."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        params = Params(numbered=False)
        condition = audit_conditions(
            params, key_id=key_id, key_name=key_name, actor=actor, since=since, before_id=before_id
        )
        limit_mark = params.add(limit)
        rows = await self._read(
            f"SELECT {AUDIT_COLUMNS} FROM audit {condition} ORDER BY id DESC LIMIT {limit_mark}",
            params.values,
        )
        return [audit_event(row) for row in rows]

    async def audit_after(self, after_id: int, limit: int = 500) -> list[AuditEvent]:
        """Return audit events with id > after_id, oldest first."""
        rows = await self._read(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [audit_event(row) for row in rows]

    async def count_audit_after(self, after_id: int, actions: tuple[str, ...]) -> int:
        """Return how many audit events with id > after_id have one of `actions`."""
        rows = await self._read(
            f"SELECT COUNT(*) FROM audit WHERE id > ? AND action IN ({marks(len(actions))})",
            (after_id, *actions),
        )
        return int(rows[0][0])

    # --- failed-login throttle -------------------------------------------------
    async def record_login_failure(
        self, subjects: tuple[str, ...], at: float, forget_before: float
    ) -> None:
        """Count one failed login against each subject; forget failures older than forget_before."""
        async with self._tx(feed=False) as tx:
            await tx.execute("DELETE FROM login_failures WHERE at < ?", forget_before)
            await tx.executemany(
                "INSERT INTO login_failures (subject, at) VALUES (?, ?)",
                [(subject, at) for subject in subjects],
            )

    async def login_failures(
        self, subjects: tuple[str, ...], since: float
    ) -> dict[str, LoginFailures]:
        """Return the failures since `since` of each subject that has any."""
        if not subjects:
            return {}
        rows = await self._read(
            "SELECT subject, COUNT(*), MAX(at) FROM login_failures"
            f" WHERE subject IN ({marks(len(subjects))}) AND at >= ? GROUP BY subject",
            (*subjects, since),
        )
        return {str(row[0]): LoginFailures(int(row[1]), float(row[2])) for row in rows}

    async def record_login_success(self, account: str, address: str, at: float) -> None:
        """Note that `account` logged in from `address` at `at` (its lockout spares it)."""
        async with self._tx(feed=False) as tx:
            await tx.execute(
                "INSERT INTO trusted_logins (account, address, at) VALUES (?, ?, ?)"
                " ON CONFLICT (account, address) DO UPDATE SET at = excluded.at",
                account,
                address,
                at,
            )

    async def trusted_login(self, account: str, address: str, since: float) -> bool:
        """Return True when `account` logged in from `address` at or after `since`."""
        rows = await self._read(
            "SELECT 1 FROM trusted_logins WHERE account = ? AND address = ? AND at >= ?",
            (account, address, since),
        )
        return bool(rows)

    # --- admin accounts --------------------------------------------------------
    async def add_admin(
        self, name: str, password_hash: str, grants: tuple[str, ...], grant_all: bool, actor: str
    ) -> AdminAccount:
        """Create an admin account; raise NameConflictError."""
        now = time.time()
        async with self._tx(feed=False) as tx:
            try:
                await tx.execute(
                    f"INSERT INTO admins ({ADMIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    name,
                    password_hash,
                    roles_json(grants),
                    grant_all,
                    now,
                    now,
                )
            except Exception as error:
                if self.dialect.is_unique_violation(error, "admins.name"):
                    raise NameConflictError(f"an admin named {name!r} already exists") from None
                raise
            await self._audit_tx(
                tx,
                now,
                actor,
                ACTION_ADMIN_ADD,
                details={"admin": name, "grants": list(grants), "grant_all": grant_all},
            )
        return AdminAccount(name, password_hash, tuple(grants), grant_all, now, now)

    async def get_admin(self, name: str) -> AdminAccount | None:
        """Return an admin account by name, or None."""
        rows = await self._read(f"SELECT {ADMIN_COLUMNS} FROM admins WHERE name = ?", (name,))
        return admin_account(rows[0]) if rows else None

    async def list_admins(self) -> list[AdminAccount]:
        """Return every admin account ordered by name."""
        rows = await self._read(f"SELECT {ADMIN_COLUMNS} FROM admins ORDER BY name", ())
        return [admin_account(row) for row in rows]

    async def set_admin_password(self, name: str, password_hash: str, actor: str) -> None:
        """Replace an admin's password hash; raise NotFoundError."""
        now = time.time()
        async with self._tx(feed=False) as tx:
            changed = await tx.execute(
                "UPDATE admins SET password_hash = ?, updated_at = ? WHERE name = ?",
                password_hash,
                now,
                name,
            )
            if changed == 0:
                raise NotFoundError(f"no admin named {name!r}")
            await tx.execute("DELETE FROM admin_sessions WHERE admin = ?", name)
            await self._audit_tx(tx, now, actor, ACTION_ADMIN_PASSWD, details={"admin": name})

    async def set_admin_grants(
        self, name: str, grants: tuple[str, ...], grant_all: bool, actor: str
    ) -> AdminAccount:
        """Replace an admin's grant set; raise NotFoundError."""
        now = time.time()
        async with self._tx(feed=False) as tx:
            rows = await tx.fetch(
                f"SELECT {ADMIN_COLUMNS} FROM admins WHERE name = ?{self.dialect.for_update}", name
            )
            if not rows:
                raise NotFoundError(f"no admin named {name!r}")
            current = admin_account(rows[0])
            await tx.execute(
                "UPDATE admins SET grants = ?, grant_all = ?, updated_at = ? WHERE name = ?",
                roles_json(grants),
                grant_all,
                now,
                name,
            )
            await tx.execute("DELETE FROM admin_sessions WHERE admin = ?", name)
            await self._audit_tx(
                tx,
                now,
                actor,
                ACTION_ADMIN_GRANTS,
                details=grants_details(current, grants, grant_all),
            )
        return dataclasses.replace(
            current, grants=tuple(grants), grant_all=grant_all, updated_at=now
        )

    async def remove_admin(self, name: str, actor: str) -> None:
        """Delete an admin account; raise NotFoundError."""
        now = time.time()
        async with self._tx(feed=False) as tx:
            if await tx.execute("DELETE FROM admins WHERE name = ?", name) == 0:
                raise NotFoundError(f"no admin named {name!r}")
            await tx.execute("DELETE FROM admin_sessions WHERE admin = ?", name)
            await self._audit_tx(tx, now, actor, ACTION_ADMIN_REMOVE, details={"admin": name})

    # --- web sessions ------------------------------------------------------------
    async def create_session(
        self, session: AdminSession, *, idle_before: float, started_before: float
    ) -> None:
        """Store a new session; forget sessions idle since or started before the cut-offs."""
        async with self._tx(feed=False) as tx:
            await tx.execute(
                "DELETE FROM admin_sessions WHERE last_seen < ? OR created_at < ?",
                idle_before,
                started_before,
            )
            await tx.execute(
                f"INSERT INTO admin_sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                session.token_hash,
                session.admin,
                session.stamp,
                session.created_at,
                session.last_seen,
            )

    async def get_session(self, token_hash: bytes) -> AdminSession | None:
        """Return the session with this token hash, or None."""
        rows = await self._read(
            f"SELECT {SESSION_COLUMNS} FROM admin_sessions WHERE token_hash = ?", (token_hash,)
        )
        return session_of(rows[0]) if rows else None

    async def touch_session(self, token_hash: bytes, at: float) -> None:
        """Record activity on a session (its idle timeout starts again)."""
        async with self._tx(feed=False) as tx:
            await tx.execute(
                f"UPDATE admin_sessions SET last_seen = {self.dialect.greatest}(last_seen, ?)"
                " WHERE token_hash = ?",
                at,
                token_hash,
            )

    async def delete_session(self, token_hash: bytes) -> bool:
        """End one session; return False when there was none."""
        async with self._tx(feed=False) as tx:
            return (
                await tx.execute("DELETE FROM admin_sessions WHERE token_hash = ?", token_hash) > 0
            )
