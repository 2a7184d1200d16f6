"""Key events for webhooks: audit entries read as events, and notices of keys near expiry.

The audit log is the outbox: every key change is audited in the same transaction as the
change, by the admin API and the CLI alike, and an expiry notice is audited (action
`expiring`) in the same transaction that records it as sent, so every event is as durable
as what it reports. `gateway.events.delivery` follows the log per receiver. Events carry the audit
entry's details, which never hold a secret. The expiry check runs in one process (the
admin listener's, worker 0), which also keeps the expiring-keys gauge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.events import webhooks as notify
from gateway.runtime.metrics import ProxyMetrics
from gateway.settings import ExpirySettings
from gateway.store.base import AuditEvent, KeyStore, StoreUnavailableError

log = logging.getLogger("keygate.outbox")

DAY = 86_400  # seconds
EXPIRY_PAGE = 1000  # expiring keys read per round trip
EXPIRING = "key.expiring"
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
    "expiring": EXPIRING,
}
EVENT_ACTIONS = tuple(EVENT_TYPES)


def event_id(audit_id: int) -> str:
    """Return the id of the event of audit entry `audit_id`: stable across retries, restarts."""
    return f"evt_{audit_id}"


def audit_event(entry: AuditEvent) -> dict[str, Any] | None:
    """Return the webhook event of an audit entry, or None for actions that send none."""
    kind = EVENT_TYPES.get(entry.action)
    if kind is None:
        return None
    data: dict[str, Any]
    if kind == EXPIRING:
        data = {"key_id": entry.key_id, "key_name": entry.key_name, **entry.details}
    else:
        data = {
            "audit_id": entry.id,
            "actor": entry.actor,
            "key_id": entry.key_id,
            "key_name": entry.key_name,
            "details": dict(entry.details),
        }
    item = notify.event(kind, data, entry.at)
    item["id"] = event_id(entry.id)
    return item


def sample_event(now: float) -> dict[str, Any]:
    """Return the event `keygate notify test` sends."""
    return notify.event("keygate.test", {"message": "a test event from keygate"}, now)


class Outbox:
    """Records expiry notices (as audit entries, so they are delivered); keeps the gauge."""

    def __init__(
        self,
        store: KeyStore,
        expiry: ExpirySettings,
        metrics: ProxyMetrics,
        *,
        notices: bool,
    ) -> None:
        self._store = store
        self._expiry = expiry
        self._metrics = metrics
        self._notices = notices  # False: no webhooks, only the gauge is kept

    async def run(self) -> None:
        """Check expiries every expiry.check_interval until cancelled; store failures retried."""
        failing = False
        while True:
            try:
                await self.check_expiry(time.time())
            except StoreUnavailableError as error:
                if not failing:
                    log.warning("expiry checks paused: %s", error)
                failing = True
            except Exception:
                if not failing:
                    log.exception("expiry check failed; retrying")
                failing = True
            else:
                failing = False
            await asyncio.sleep(self._expiry.check_interval)

    async def check_expiry(self, now: float) -> None:
        """Update the expiring-keys gauge; record each key's notice once per threshold."""
        expiry = self._expiry
        self._metrics.keys_expiring = await self._store.count_expiring(now, expiry.warn_days * DAY)
        if not self._notices or not expiry.notify_days:
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
                # Crossing several thresholds at once audits one notice, the nearest.
                await self._store.claim_expiry_notices(row.id, row.name, due, row.expires_at, now)
            if len(rows) < EXPIRY_PAGE:
                return
            after = rows[-1].id
