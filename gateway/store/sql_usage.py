"""Usage per key in SQL: hours and policy rules (the additive upserts a flush writes), the
last client addresses, their reads and pruning."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.base import RuleTotal, RuleUse, SeenAddress, UsageHour
from gateway.store.sql import SqlBase, Tx, marks

HOURS_PER_DAY = 24
SECONDS_PER_HOUR = 3600

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


def upsert_rules_sql(greatest: str) -> str:
    """Return the additive upsert of a key's uses of one rule in one day."""
    return (
        "INSERT INTO key_rule_usage (key_id, day, role, methods, path, count, last_used_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (key_id, day, role, methods, path) DO UPDATE SET"
        " count = key_rule_usage.count + excluded.count,"
        f" last_used_at = {greatest}(key_rule_usage.last_used_at, excluded.last_used_at)"
    )


def upsert_addresses_sql(greatest: str) -> str:
    """Return the upsert raising a key's address's last_seen_at."""
    return (
        "INSERT INTO key_addresses (key_id, address, last_seen_at) VALUES (?, ?, ?)"
        " ON CONFLICT (key_id, address) DO UPDATE SET"
        f" last_seen_at = {greatest}(key_addresses.last_seen_at, excluded.last_seen_at)"
    )


async def add_rule_uses(tx: Tx, greatest: str, rules: Sequence[RuleUse]) -> None:
    """Add `rules` to their rows inside `tx`, in primary-key order (no deadlock)."""
    if not rules:
        return
    rows = [
        (r.key_id, r.day, r.role, r.methods, r.path, r.count, r.last_used_at)
        for r in sorted(rules, key=lambda r: (r.key_id, r.day, r.role, r.methods, r.path))
    ]
    await tx.executemany(upsert_rules_sql(greatest), rows)


async def note_addresses(tx: Tx, greatest: str, addresses: Sequence[SeenAddress]) -> None:
    """Raise the addresses' last_seen_at inside `tx`, in primary-key order (no deadlock)."""
    if not addresses:
        return
    rows = [
        (a.key_id, a.address, a.last_seen_at)
        for a in sorted(addresses, key=lambda a: (a.key_id, a.address))
    ]
    await tx.executemany(upsert_addresses_sql(greatest), rows)


# Rows of key_addresses with at least `keep` newer rows of the same key (ties: by address).
_BEYOND_KEPT = (
    "(SELECT COUNT(*) FROM key_addresses newer WHERE newer.key_id = key_addresses.key_id"
    " AND (newer.last_seen_at > key_addresses.last_seen_at"
    " OR (newer.last_seen_at = key_addresses.last_seen_at"
    " AND newer.address < key_addresses.address))) >= ?"
)


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

    async def prune_usage(self, before_hour: int, addresses_kept: int | None = None) -> int:
        """Delete usage rows of hours before `before_hour` (rule rows of days before its day,
        addresses last seen before it); with `addresses_kept`, keep only each key's newest
        that many addresses. Return how many rows went."""
        async with self._tx(feed=False) as tx:
            pruned = await tx.execute("DELETE FROM key_usage WHERE hour < ?", before_hour)
            pruned += await tx.execute(
                "DELETE FROM key_rule_usage WHERE day < ?", before_hour // HOURS_PER_DAY
            )
            pruned += await tx.execute(
                "DELETE FROM key_addresses WHERE last_seen_at < ?",
                float(before_hour * SECONDS_PER_HOUR),
            )
            if addresses_kept is not None:
                pruned += await tx.execute(
                    f"DELETE FROM key_addresses WHERE {_BEYOND_KEPT}", addresses_kept
                )
            return pruned

    async def rule_totals(self, key_id: int, first_day: int) -> list[RuleTotal]:
        """Return a key's uses per rule in the days from `first_day`, most used first."""
        rows = await self._read(
            "SELECT role, methods, path, SUM(count), MAX(last_used_at) FROM key_rule_usage"
            " WHERE key_id = ? AND day >= ? GROUP BY role, methods, path"
            " ORDER BY SUM(count) DESC, role, methods, path",
            (key_id, first_day),
        )
        return [RuleTotal(str(r[0]), str(r[1]), str(r[2]), int(r[3]), float(r[4])) for r in rows]

    async def seen_addresses(self, key_id: int, limit: int) -> list[SeenAddress]:
        """Return a key's last `limit` client addresses, newest first."""
        rows = await self._read(
            "SELECT key_id, address, last_seen_at FROM key_addresses WHERE key_id = ?"
            " ORDER BY last_seen_at DESC, address LIMIT ?",
            (key_id, limit),
        )
        return [SeenAddress(int(r[0]), str(r[1]), float(r[2])) for r in rows]

    async def trim_addresses(self, key_ids: Sequence[int], keep: int) -> int:
        """Keep only the newest `keep` addresses of each key in `key_ids`; return how many went."""
        if not key_ids:
            return 0
        async with self._tx(feed=False) as tx:
            return await tx.execute(
                f"DELETE FROM key_addresses WHERE key_id IN ({marks(len(key_ids))})"
                f" AND {_BEYOND_KEPT}",
                *key_ids,
                keep,
            )
