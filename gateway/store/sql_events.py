"""The audit log and the notification state (receivers, abandoned events, expiry notices) in SQL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.store.base import AbandonedEvent, AuditEvent, ReceiverState
from gateway.store.common import (
    ABANDONED_COLUMNS,
    ACTION_EXPIRING,
    AUDIT_COLUMNS,
    EXPIRY_ACTOR,
    RECEIVER_COLUMNS,
    Params,
    abandoned_event,
    abandoned_values,
    audit_conditions,
    audit_event,
    expiry_details,
    receiver_state,
    receiver_values,
)
from gateway.store.sql import SqlBase, Tx, marks


class SqlEvents(SqlBase):
    """The AuditLog and NotifyState roles, written once for both backends."""

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
        actions: Sequence[str] | None = None,
        until: float | None = None,
        text: str | None = None,
    ) -> list[AuditEvent]:
        """List audit events newest first (id < before_id), filtered; since and until are
        inclusive; `text` is a substring of key name, actor or details (ASCII case folded)."""
        if limit < 0:
            raise ValueError("limit must not be negative")
        params = Params(numbered=False)
        condition = audit_conditions(
            params,
            key_id=key_id,
            key_name=key_name,
            actor=actor,
            since=since,
            before_id=before_id,
            actions=actions,
            until=until,
            text=text,
            fold=self.dialect.like_fold,
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

    # --- notification state (the audit log is their outbox) --------------------
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
