"""The change-feed follower: keeps a process's key table in step with the store (no aiohttp)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.keytable import KeyTable
from gateway.store.base import KeyStore, StoreUnavailableError

log = logging.getLogger("keygate.feed")

# Change-feed entries fetched per store round trip.
FEED_BATCH = 10_000


async def load_table(store: KeyStore, table: KeyTable) -> None:
    """Replace the table's contents with every key of the store (the cold load)."""
    # Read before loading: a replacement seen meanwhile leaves a mismatch, so a reload.
    generation = store.generation
    loader = table.loader()
    seq = await store.load_auth(loader.add)
    loader.finish(seq)
    table.generation = generation


async def catch_up(store: KeyStore, table: KeyTable) -> int:
    """Apply every change-feed entry newer than the table's sequence; return the count.

    When the store reopened a replaced database file, its feed is unrelated to the
    table's sequence: the whole table is reloaded instead (and 0 returned).
    """
    if table.generation != store.generation:
        await load_table(store, table)
        log.warning("key table reloaded from the replaced database (%d keys)", len(table))
        return 0
    total = 0
    while True:
        changes = await store.changes_since(table.seq, FEED_BATCH)
        total += table.apply(changes)
        if len(changes) < FEED_BATCH:
            return total


class FeedFollower:
    """Keeps a KeyTable in step with the store's change feed by polling (or being woken)."""

    def __init__(self, store: KeyStore, table: KeyTable, poll_interval: float) -> None:
        self._store = store
        self._table = table
        self._poll_interval = poll_interval  # seconds between polls without a wake-up
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Ask for an immediate catch-up (e.g. on a PostgreSQL NOTIFY)."""
        self._wake.set()

    async def run(self) -> None:
        """Follow the feed until cancelled; store errors are retried, logged once per outage.

        The table keeps serving what it holds while the store fails.
        """
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
