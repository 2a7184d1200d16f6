"""Key usage counting: last-used time, use count and hourly counts kept in memory, flushed in
batches (the hot path never writes to the store)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from gateway.policy.rules import Rule, rule_ident, rule_number
from gateway.store.base import (
    KeyRecords,
    RuleUse,
    SeenAddress,
    StoreUnavailableError,
    UsageHour,
    UsageRecords,
)

log = logging.getLogger("keygate.usage")

HOUR = 3600
DAY = 86400
# The last client addresses kept per key (in memory between flushes, and in the store):
# the newest this many, each with when it was last seen.
ADDRESSES_KEPT = 20
# A key's in-memory address list is cut back to ADDRESSES_KEPT when it reaches this many
# (cutting on every new address would sort on the hot path).
_ADDRESSES_TRIM_AT = 4 * ADDRESSES_KEPT
# Distinct client addresses tracked per key and hour in one process; past it the count stops
# growing and the hour is marked capped (memory stays bounded under address variety).
ADDRESSES_PER_KEY_HOUR = 1000
# Index of each count in a key-hour's list (a list, not an object: the hot path's cost).
FORWARDED, DENIED, LIMITED, UPSTREAM_ERRORS, NEW_ADDRESSES, CAPPED = range(6)
# A key-hour is one int, key id above the hour (hashing an int is cheaper than a tuple);
# hours since 1970 fit in 32 bits for the next 490,000 years.
_HOUR_BITS = 32
_HOUR_MASK = (1 << _HOUR_BITS) - 1


class UsageCounter:
    """Counts key uses in memory and flushes them to the store in batches."""

    def __init__(self) -> None:
        self._pending: dict[int, list[float]] = {}
        # key-hour slot (see _slot) -> counts since the last flush (indexes above).
        self._hours: dict[int, list[int]] = {}
        # key-hour slot -> the addresses seen in that hour, kept across flushes so an
        # address is counted once per process and hour; hours before the last are dropped.
        self._seen: dict[int, set[str]] = {}
        # key-hour slot -> Rule.number -> [uses, last used at] (days are summed at take).
        self._rules: dict[int, dict[int, list[float]]] = {}
        # key id -> client address -> last seen at, since the last flush (bounded).
        self._recent: dict[int, dict[str, float]] = {}

    def record(
        self, key_id: int, now: float, address: str | None = None, rule: Rule | None = None
    ) -> None:
        """Note one forwarded use of a key at `now`, from `address`, allowed by `rule` (hot
        path: dict updates, no I/O)."""
        entry = self._pending.get(key_id)
        if entry is None:
            self._pending[key_id] = [now, 1.0]
        else:
            entry[0] = now
            entry[1] += 1.0
        # Inlined _count (the proxy's every admitted request comes here).
        slot = (key_id << _HOUR_BITS) | (int(now) // HOUR)
        counts = self._hours.get(slot)
        if counts is None:
            counts = self._hours[slot] = [1, 0, 0, 0, 0, 0]
        else:
            counts[FORWARDED] += 1
        if rule is not None:
            rules = self._rules.get(slot)
            if rules is None:
                self._rules[slot] = {rule.number: [1, now]}
            else:
                uses = rules.get(rule.number)
                if uses is None:
                    rules[rule.number] = [1, now]
                else:
                    uses[0] += 1
                    uses[1] = now
        if address is not None:
            self._note_address(slot, counts, address)
            # Inlined _note_recent's usual case: a known address, or room for a new one.
            recent = self._recent.get(key_id)
            if recent is not None and (address in recent or len(recent) < _ADDRESSES_TRIM_AT):
                recent[address] = now
            else:
                self._note_recent(key_id, address, now)

    def refused(self, key_id: int, now: float, *, limited: bool, address: str | None) -> None:
        """Note a key's request refused by the policy (403) or its rate limit (429)."""
        self._count(key_id, now, LIMITED if limited else DENIED, address)

    def upstream_error(self, key_id: int, now: float) -> None:
        """Note a key's forwarded request the upstream answered 5xx (or failed to answer)."""
        self._count(key_id, now, UPSTREAM_ERRORS, None)

    def _count(self, key_id: int, now: float, which: int, address: str | None) -> None:
        """Add one to a count of the key's hour, and note the address when new."""
        slot = (key_id << _HOUR_BITS) | (int(now) // HOUR)
        counts = self._hours.get(slot)
        if counts is None:
            counts = self._hours[slot] = [0, 0, 0, 0, 0, 0]
        counts[which] += 1
        if address is not None:
            self._note_address(slot, counts, address)
            self._note_recent(key_id, address, now)

    def _note_recent(self, key_id: int, address: str, now: float) -> None:
        """Note the key's client `address` last seen at `now` (its newest few kept)."""
        recent = self._recent.get(key_id)
        if recent is None:
            self._recent[key_id] = {address: now}
            return
        if len(recent) >= _ADDRESSES_TRIM_AT and address not in recent:
            newest = sorted(recent.items(), key=lambda item: item[1])[-ADDRESSES_KEPT:]
            recent.clear()
            recent.update(newest)
        recent[address] = now

    def _note_address(self, slot: int, counts: list[int], address: str) -> None:
        """Count `address` in the key-hour once; past the cap, mark the hour capped."""
        seen = self._seen.get(slot)
        if seen is None:
            self._seen[slot] = {address}
            counts[NEW_ADDRESSES] += 1
        elif address not in seen:
            if len(seen) >= ADDRESSES_PER_KEY_HOUR:
                counts[CAPPED] = 1
            else:
                seen.add(address)
                counts[NEW_ADDRESSES] += 1

    def take(self) -> dict[int, tuple[float, int]]:
        """Return and clear the pending counts as key id -> (last_used_at, uses)."""
        pending, self._pending = self._pending, {}
        return {key_id: (entry[0], int(entry[1])) for key_id, entry in pending.items()}

    def take_hours(self) -> list[UsageHour]:
        """Return and clear the hourly counts since the last flush (address sets of hours
        before the newest one's previous are forgotten)."""
        hours, self._hours = self._hours, {}
        if self._seen:
            newest = max(slot & _HOUR_MASK for slot in self._seen)
            self._seen = {
                slot: seen for slot, seen in self._seen.items() if slot & _HOUR_MASK >= newest - 1
            }
        return [
            UsageHour(
                slot >> _HOUR_BITS, slot & _HOUR_MASK, c[0], c[1], c[2], c[3], c[4], bool(c[5])
            )
            for slot, c in hours.items()
        ]

    def take_rules(self) -> list[RuleUse]:
        """Return and clear the rule counts since the last flush, summed per key and UTC day."""
        rules, self._rules = self._rules, {}
        days: dict[tuple[int, int, int], list[float]] = {}
        for slot, by_rule in rules.items():
            day = (slot & _HOUR_MASK) * HOUR // DAY
            for number, (count, last) in by_rule.items():
                summed = days.setdefault((slot >> _HOUR_BITS, day, number), [0, last])
                summed[0] += count
                summed[1] = max(summed[1], last)
        return [
            RuleUse(key_id, day, *rule_ident(number), int(count), last)
            for (key_id, day, number), (count, last) in days.items()
        ]

    def take_addresses(self) -> list[SeenAddress]:
        """Return and clear the client addresses seen since the last flush (the newest
        ADDRESSES_KEPT per key)."""
        recent, self._recent = self._recent, {}
        return [
            SeenAddress(key_id, address, seen)
            for key_id, addresses in recent.items()
            for address, seen in sorted(addresses.items(), key=lambda item: item[1])[
                -ADDRESSES_KEPT:
            ]
        ]

    def _put_back(
        self,
        batch: dict[int, tuple[float, int]],
        hours: list[UsageHour],
        rules: Sequence[RuleUse] = (),
        addresses: Sequence[SeenAddress] = (),
    ) -> None:
        """Merge a batch that failed to flush back into the pending counts."""
        for use in rules:
            # Back under the day's first hour (take_rules sums it into the same day again).
            hour = use.day * DAY // HOUR
            by_rule = self._rules.setdefault((use.key_id << _HOUR_BITS) | hour, {})
            number = rule_number((use.role, use.methods, use.path))
            counted = by_rule.setdefault(number, [0, use.last_used_at])
            counted[0] += use.count
            counted[1] = max(counted[1], use.last_used_at)
        for seen in addresses:
            recent = self._recent.setdefault(seen.key_id, {})
            recent[seen.address] = max(
                recent.get(seen.address, seen.last_seen_at), seen.last_seen_at
            )
        for key_id, (last_used, uses) in batch.items():
            entry = self._pending.setdefault(key_id, [last_used, 0.0])
            entry[0] = max(entry[0], last_used)
            entry[1] += uses
        for row in hours:
            counts = self._hours.setdefault(
                (row.key_id << _HOUR_BITS) | row.hour, [0, 0, 0, 0, 0, 0]
            )
            counts[FORWARDED] += row.forwarded
            counts[DENIED] += row.denied
            counts[LIMITED] += row.limited
            counts[UPSTREAM_ERRORS] += row.upstream_errors
            counts[NEW_ADDRESSES] += row.addresses
            counts[CAPPED] = max(counts[CAPPED], int(row.addresses_capped))

    async def flush(self, store: KeyRecords) -> None:
        """Write pending counts to the store; on failure they are merged back for next time."""
        batch = self.take()
        hours = self.take_hours()
        rules = self.take_rules()
        addresses = self.take_addresses()
        if not batch and not hours and not rules and not addresses:
            return
        try:
            await store.record_usage(batch, hours, rules, addresses)
        except Exception:
            self._put_back(batch, hours, rules, addresses)
            raise
        if addresses:
            try:  # best effort: the scheduled prune trims what this leaves
                await store.trim_addresses(sorted({a.key_id for a in addresses}), ADDRESSES_KEPT)
            except Exception as error:
                log.debug("trimming the kept client addresses failed: %s", error)

    async def run(self, store: KeyRecords, interval: float) -> None:
        """Flush every `interval` seconds until cancelled (then flush once more).

        Counts that fail to flush are kept for the next try; an outage is logged when it
        starts and when it ends, not at every attempt.
        """
        failing = False
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.flush(store)
                except StoreUnavailableError as error:
                    if not failing:
                        log.warning("usage flush failed, counts kept in memory: %s", error)
                    failing = True
                except Exception:
                    if not failing:
                        log.exception("usage flush failed, counts kept in memory; will retry")
                    failing = True
                else:
                    if failing:
                        log.info("usage flush recovered: pending counts written")
                    failing = False
        finally:
            await self.flush(store)


async def prune_usage_periodically(store: UsageRecords, keep_days: int, interval: float) -> None:
    """Delete hourly usage older than `keep_days` every `interval` seconds until cancelled;
    failures are retried at the next interval."""
    while True:
        try:
            pruned = await store.prune_usage(
                int(time.time()) // HOUR - keep_days * 24, ADDRESSES_KEPT
            )
        except StoreUnavailableError:
            pass  # the follower and the admin API report the outage
        except Exception:
            log.exception("usage prune failed; retrying later")
        else:
            if pruned:
                log.info("hourly usage pruned: %d old rows removed", pruned)
        await asyncio.sleep(interval)
