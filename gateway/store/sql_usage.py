"""Usage per key and hour in SQL: the additive upsert a flush writes, the reads, pruning."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.base import UsageHour
from gateway.store.sql import SqlBase, Tx

USAGE_COLUMNS = (
    "key_id, hour, forwarded, denied, limited, upstream_errors, addresses, addresses_capped"
)


def upsert_usage_sql(greatest: str) -> str:
    """Return the additive upsert: every instance's flush adds to the row of that key-hour."""
    return (
        f"INSERT INTO key_usage ({USAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (key_id, hour) DO UPDATE SET"
        " forwarded = key_usage.forwarded + excluded.forwarded,"
        " denied = key_usage.denied + excluded.denied,"
        " limited = key_usage.limited + excluded.limited,"
        " upstream_errors = key_usage.upstream_errors + excluded.upstream_errors,"
        " addresses = key_usage.addresses + excluded.addresses,"
        f" addresses_capped = {greatest}(key_usage.addresses_capped, excluded.addresses_capped)"
    )


async def add_usage_hours(tx: Tx, greatest: str, hours: Sequence[UsageHour]) -> None:
    """Add `hours` to their rows inside `tx`, in (key, hour) order (no deadlock between
    instances flushing at once)."""
    if not hours:
        return
    rows = [
        (
            h.key_id,
            h.hour,
            h.forwarded,
            h.denied,
            h.limited,
            h.upstream_errors,
            h.addresses,
            int(h.addresses_capped),
        )
        for h in sorted(hours, key=lambda h: (h.key_id, h.hour))
    ]
    await tx.executemany(upsert_usage_sql(greatest), rows)


class SqlUsage(SqlBase):
    """The UsageRecords role, written once for both backends."""

    async def usage_hours(self, key_id: int, first_hour: int, last_hour: int) -> list[UsageHour]:
        """Return a key's rows with first_hour <= hour <= last_hour, oldest first."""
        rows = await self._read(
            f"SELECT {USAGE_COLUMNS} FROM key_usage"
            " WHERE key_id = ? AND hour >= ? AND hour <= ? ORDER BY hour",
            (key_id, first_hour, last_hour),
        )
        return [
            UsageHour(
                int(r[0]),
                int(r[1]),
                int(r[2]),
                int(r[3]),
                int(r[4]),
                int(r[5]),
                int(r[6]),
                bool(r[7]),
            )
            for r in rows
        ]

    async def prune_usage(self, before_hour: int) -> int:
        """Delete usage rows of hours before `before_hour`; return how many."""
        async with self._tx(feed=False) as tx:
            return await tx.execute("DELETE FROM key_usage WHERE hour < ?", before_hour)
