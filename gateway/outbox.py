"""Key events for webhooks: the audit log read as an outbox, and notices of keys near expiry.

One process sends (the admin listener's, worker 0). Every key change is audited in the same
transaction as the change, by the admin API and the CLI alike, so following the audit log by
id sees every change exactly as committed. The id delivered through is kept in the store
(claimed with a compare-and-set, so two instances never send one event twice) and so are the
expiry notices sent: a restart resends nothing. Events carry the audit entry's details, which
never hold a secret.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from gateway import notify
from gateway.clock import iso
from gateway.metrics import ProxyMetrics
from gateway.settings import ExpirySettings
from gateway.store.base import AuditEvent, KeyRow, KeyStore, StoreUnavailableError

log = logging.getLogger("keygate.outbox")

DAY = 86_400  # seconds
AUDIT_BATCH = 500  # audit events read per round trip
MAX_EVENT_AGE = DAY  # seconds; older events found when catching up are skipped, not sent
GAP_WAIT = 5.0  # seconds a hole in the audit ids may be a transaction still committing
EXPIRY_PAGE = 1000  # expiring keys read per round trip
# Audit actions that become events, and the event type each becomes.
EVENT_TYPES = {
    "create": "key.created",
    "edit": "key.updated",
    "roll": "key.rolled",
    "revoke": "key.revoked",
    "reinstate": "key.reinstated",
    "delete": "key.deleted",
    "revoke_all": "keys.revoked_all",
    "reinstate_all": "keys.reinstated_all",
    "delete_revoked": "keys.deleted_revoked",
}
EXPIRING = "key.expiring"


def audit_event(entry: AuditEvent) -> dict[str, Any] | None:
    """Return the webhook event of an audit entry, or None for actions that send none."""
    kind = EVENT_TYPES.get(entry.action)
    if kind is None:
        return None
    data = {
        "audit_id": entry.id,
        "actor": entry.actor,
        "key_id": entry.key_id,
        "key_name": entry.key_name,
        "details": dict(entry.details),
    }
    item = notify.event(kind, data, entry.at)
    item["id"] = f"audit-{entry.id}"  # stable: a receiver can drop a repeat
    return item


def expiring_event(row: KeyRow, threshold: int, now: float) -> dict[str, Any]:
    """Return the "key expiring soon" event of a key that crossed `threshold` days."""
    assert row.expires_at is not None
    data = {
        "key_id": row.id,
        "key_name": row.name,
        "expires_at": iso(row.expires_at),
        "days_left": math.ceil((row.expires_at - now) / DAY),
        "threshold_days": threshold,
    }
    item = notify.event(EXPIRING, data, now)
    item["id"] = f"expiry-{row.id}-{threshold}-{int(row.expires_at)}"
    return item


def sample_event(now: float) -> dict[str, Any]:
    """Return the event `keygate notify test` sends."""
    return notify.event("keygate.test", {"message": "a test event from keygate"}, now)


class Outbox:
    """Publishes audit-log events and expiry notices to a Notifier; keeps the expiring gauge."""

    def __init__(
        self,
        store: KeyStore,
        notifier: notify.Notifier | None,
        expiry: ExpirySettings,
        metrics: ProxyMetrics,
        poll_interval: float,
    ) -> None:
        self._store = store
        self._notifier = notifier  # None: no webhooks, only the gauge is kept
        self._expiry = expiry
        self._metrics = metrics
        self._poll_interval = poll_interval  # seconds between audit-log reads
        self._gap_since: float | None = None
        self._next_expiry_check = 0.0

    async def run(self) -> None:
        """Send events and check expiries until cancelled; store failures are retried."""
        failing = False
        while True:
            try:
                await self.step(time.time())
            except StoreUnavailableError as error:
                if not failing:
                    log.warning("webhook events paused: %s", error)
                failing = True
            except Exception:
                if not failing:
                    log.exception("webhook events failed; retrying")
                failing = True
            else:
                failing = False
            await asyncio.sleep(self._poll_interval)

    async def step(self, now: float) -> None:
        """Do one round: send new audit events, and check expiries when due."""
        if self._notifier is not None:
            while await self.send_audit(now) == AUDIT_BATCH:
                pass
        if now >= self._next_expiry_check:
            self._next_expiry_check = now + self._expiry.check_interval
            await self.check_expiry(now)

    async def send_audit(self, now: float) -> int:
        """Publish the audit events after the cursor, claimed first; return how many were read."""
        assert self._notifier is not None
        store = self._store
        cursor = await store.notify_cursor()
        if cursor is None:
            # First run: start at the newest entry; history before webhooks is not sent.
            newest = await store.list_audit(limit=1)
            await store.advance_notify_cursor(None, newest[0].id if newest else 0)
            return 0
        entries = await store.audit_after(cursor, AUDIT_BATCH)
        ready = self._contiguous(cursor, entries, now)
        if not ready or not await store.advance_notify_cursor(cursor, ready[-1].id):
            return 0  # nothing yet, or another process claimed these
        horizon = now - MAX_EVENT_AGE
        for entry in ready:
            item = audit_event(entry) if entry.at >= horizon else None
            if item is not None:
                self._notifier.publish(item)
        return len(ready)

    def _contiguous(self, cursor: int, entries: list[AuditEvent], now: float) -> list[AuditEvent]:
        """Return the entries that follow the cursor without a hole, or all after GAP_WAIT.

        Ids are taken before commit, so a hole may be a transaction about to commit (or one
        rolled back): it is waited for, but only GAP_WAIT seconds.
        """
        count = 0
        for expected, entry in enumerate(entries, start=cursor + 1):
            if entry.id != expected:
                break
            count += 1
        if count == len(entries):
            self._gap_since = None
            return entries
        if count:
            return entries[:count]
        if self._gap_since is None:
            self._gap_since = now
        if now - self._gap_since < GAP_WAIT:
            return []
        self._gap_since = None
        return entries

    async def check_expiry(self, now: float) -> None:
        """Update the expiring-keys gauge; send each key's notice once per threshold."""
        expiry = self._expiry
        self._metrics.keys_expiring = await self._store.count_expiring(now, expiry.warn_days * DAY)
        if self._notifier is None or not expiry.notify_days:
            return
        after = 0
        while True:
            rows = await self._store.list_keys(
                status="expiring",
                limit=EXPIRY_PAGE,
                after_id=after,
                now=now,
                expiring_within=max(expiry.notify_days) * DAY,
            )
            for row in rows:
                assert row.expires_at is not None
                left = row.expires_at - now
                due = tuple(days for days in expiry.notify_days if left <= days * DAY)
                claimed = await self._store.claim_expiry_notices(row.id, due, row.expires_at, now)
                if claimed:
                    # Crossing several thresholds at once sends one notice, the nearest.
                    self._notifier.publish(expiring_event(row, min(claimed), now))
            if len(rows) < EXPIRY_PAGE:
                return
            after = rows[-1].id
