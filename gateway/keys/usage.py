"""Key usage counting: last-used time and use count kept in memory, flushed in batches."""

from __future__ import annotations

import asyncio
import logging

from gateway.store.base import KeyRecords, StoreUnavailableError

log = logging.getLogger("keygate.usage")


class UsageCounter:
    """Counts key uses in memory and flushes them to the store in batches."""

    def __init__(self) -> None:
        self._pending: dict[int, list[float]] = {}

    def record(self, key_id: int, now: float) -> None:
        """Note one use of a key at `now` (hot path: a dict update, no I/O)."""
        entry = self._pending.get(key_id)
        if entry is None:
            self._pending[key_id] = [now, 1.0]
        else:
            entry[0] = now
            entry[1] += 1.0

    def take(self) -> dict[int, tuple[float, int]]:
        """Return and clear the pending counts as key id -> (last_used_at, uses)."""
        pending, self._pending = self._pending, {}
        return {key_id: (entry[0], int(entry[1])) for key_id, entry in pending.items()}

    async def flush(self, store: KeyRecords) -> None:
        """Write pending counts to the store; on failure they are merged back for next time."""
        batch = self.take()
        if not batch:
            return
        try:
            await store.record_usage(batch)
        except Exception:
            for key_id, (last_used, uses) in batch.items():
                entry = self._pending.setdefault(key_id, [last_used, 0.0])
                entry[0] = max(entry[0], last_used)
                entry[1] += uses
            raise

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
