"""Moving every record between stores in SQL: `keygate store copy`'s export and import."""

from __future__ import annotations

import time

from gateway.store.base import StoreContents, StoreNotEmptyError
from gateway.store.common import (
    ADMIN_COLUMNS,
    AUDIT_COLUMNS,
    KEY_COLUMNS,
    admin_account,
    admin_values,
    audit_event,
    audit_values,
    key_row,
    key_values,
)
from gateway.store.sql import SqlBase


class SqlCopy(SqlBase):
    """The StoreCopy role, written once for both backends."""

    async def export_contents(self) -> StoreContents:
        """Return every key, admin account and audit event (one read-only snapshot)."""
        async with self._snapshot() as tx:
            keys = [
                key_row(row)
                for row in await tx.fetch(f"SELECT {KEY_COLUMNS} FROM keys ORDER BY id")
            ]
            admins = [
                admin_account(row)
                for row in await tx.fetch(f"SELECT {ADMIN_COLUMNS} FROM admins ORDER BY name")
            ]
            audit = [
                audit_event(row)
                for row in await tx.fetch(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id")
            ]
        return StoreContents(keys, admins, audit)

    async def import_contents(self, contents: StoreContents, *, replace: bool) -> None:
        """Write `contents` with their ids in one transaction, a feed entry per key.

        Raise StoreNotEmptyError when the store holds data, unless `replace` (then it is
        deleted first, each removed key announced on the feed).
        """
        now = time.time()
        async with self._tx(feed=True) as tx:
            held = await tx.fetch(
                "SELECT (SELECT COUNT(*) FROM keys) + (SELECT COUNT(*) FROM admins)"
                " + (SELECT COUNT(*) FROM audit)"
            )
            if int(held[0][0]) and not replace:
                raise StoreNotEmptyError(
                    f"{self.location} already holds keys, admins or audit events"
                )
            gone = await tx.fetch(
                "SELECT id, digest FROM keys UNION ALL SELECT id, previous_digest FROM keys"
                " WHERE previous_digest IS NOT NULL"
            )
            await tx.append_changes([(int(row[0]), bytes(row[1])) for row in gone], "delete", now)
            for table in ("keys", "admins", "audit"):
                await tx.execute(f"DELETE FROM {table}")
            await tx.copy_rows("keys", KEY_COLUMNS, [key_values(row) for row in contents.keys])
            await tx.append_changes([(row.id, row.digest) for row in contents.keys], "upsert", now)
            await tx.copy_rows(
                "admins", ADMIN_COLUMNS, [admin_values(account) for account in contents.admins]
            )
            await tx.copy_rows(
                "audit", AUDIT_COLUMNS, [audit_values(event) for event in contents.audit]
            )
            # Batch histories follow the audit rows; idempotency records named the old keys.
            await tx.execute("DELETE FROM audit_keys")
            await tx.execute(self.dialect.audit_keys_from_details)
            await tx.execute("DELETE FROM idempotency_keys")
            # Hourly usage is not copied, and what is here counted the keys just replaced
            # (an imported key may carry the id of one of them).
            await tx.execute("DELETE FROM key_usage")
            await tx.execute("DELETE FROM key_rule_usage")
            await tx.execute("DELETE FROM key_addresses")
            for statement in self.dialect.after_import:
                await tx.execute(statement)
