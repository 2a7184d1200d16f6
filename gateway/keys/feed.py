"""The change-feed follower: keeps a process's key table in step with the store (no aiohttp)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gateway.keys.table import KeyTable
from gateway.store.base import (
    AuthRow,
    FeedNotifier,
    FeedPrunedError,
    KeyStore,
    StoreUnavailableError,
)

log = logging.getLogger("keygate.feed")

# Change-feed entries fetched per store round trip.
FEED_BATCH = 10_000


async def load_table(
    store: KeyStore, table: KeyTable, tee: Callable[[list[AuthRow]], None] | None = None
) -> None:
    """Replace the table's contents with every key of the store (the cold load).

    `tee`, when given, also gets every chunk of rows (the snapshot writer).
    """
    # Read before loading: a replacement seen meanwhile leaves a mismatch, so a reload.
    generation = store.generation
    loader = table.loader()
    sink = loader.add
    if tee is not None:

        def both(rows: list[AuthRow]) -> None:
            sink(rows)
            tee(rows)

        seq = await store.load_auth(both)
    else:
        seq = await store.load_auth(sink)
    loader.finish(seq)
    table.generation = generation


async def catch_up(store: KeyStore, table: KeyTable) -> int:
    """Apply every change-feed entry newer than the table's sequence; return the count.

    When the store reopened a replaced database file, its feed is unrelated to the
    table's sequence, and when entries the table has not seen were pruned it cannot catch
    up by sequence: either way the whole table is reloaded instead (and 0 returned).
    """
    if table.generation != store.generation:
        await load_table(store, table)
        log.warning("key table reloaded from the replaced database (%d keys)", len(table))
        return 0
    total = 0
    while True:
        try:
            changes = await store.changes_since(table.seq, FEED_BATCH)
        except FeedPrunedError as error:
            await load_table(store, table)
            log.warning("key table reloaded: %s (%d keys)", error, len(table))
            return 0
        total += table.apply(changes)
        if len(changes) < FEED_BATCH:
            return total


async def prune_periodically(
    store: KeyStore, keep_entries: int, keep_seconds: float, interval: float
) -> None:
    """Prune the change feed every `interval` seconds until cancelled; failures are retried.

    Keeps the newest `keep_entries` entries and every entry younger than `keep_seconds`;
    a follower that falls behind what was pruned reloads the whole table (catch_up).
    """
    while True:
        await asyncio.sleep(interval)
        try:
            pruned = await store.prune_feed(keep_entries, time.time() - keep_seconds)
        except StoreUnavailableError:
            continue  # the follower and the admin API report the outage
        except Exception:
            log.exception("change-feed prune failed; retrying later")
            continue
        if pruned:
            log.info("change feed pruned: %d old entries removed", pruned)


class FeedFollower:
    """Keeps a KeyTable in step with the store's change feed by polling (or being woken).

    With a notifier (PostgreSQL's LISTEN), every committed write wakes the follower at
    once; polling stays as the safety net for a lost notification or connection.
    """

    def __init__(
        self,
        store: KeyStore,
        table: KeyTable,
        poll_interval: float,
        notifier: FeedNotifier | None = None,
    ) -> None:
        self._store = store
        self._table = table
        self._poll_interval = poll_interval  # seconds between polls without a wake-up
        self._notifier = notifier
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Ask for an immediate catch-up (e.g. on a PostgreSQL NOTIFY)."""
        self._wake.set()

    async def run(self) -> None:
        """Follow the feed until cancelled; store errors are retried, logged once per outage.

        The table keeps serving what it holds while the store fails.
        """
        listening: asyncio.Task[None] | None = None
        if self._notifier is not None:
            listening = asyncio.create_task(
                self._notifier.listen(self.wake), name="keygate-feed-listen"
            )
        try:
            await self._follow()
        finally:
            if listening is not None:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening

    async def _follow(self) -> None:
        """Catch up, then wait for a wake-up or the poll interval; forever."""
        failing = False
        while True:
            try:
                await catch_up(self._store, self._table)
            except StoreUnavailableError as error:
                if not failing:
                    log.warning("change feed paused, serving keys from memory: %s", error)
                failing = True
            except Exception:
                if not failing:
                    log.exception("change feed poll failed; serving keys from memory, retrying")
                failing = True
            else:
                if failing:
                    log.info("change feed recovered: the store answers again")
                failing = False
            # Cleared before the next catch-up, so a wake-up arriving now is never lost.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
