"""The change-feed follower: keeps a process's key table in step with the store (no aiohttp)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.keytable import KeyTable
from gateway.store.base import KeyStore

log = logging.getLogger("keygate.feed")

# Change-feed entries fetched per store round trip.
FEED_BATCH = 10_000


async def catch_up(store: KeyStore, table: KeyTable) -> int:
    """Apply every change-feed entry newer than the table's sequence; return the count."""
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
        """Follow the feed until cancelled; store errors are logged and retried."""
        while True:
            try:
                await catch_up(self._store, self._table)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("change feed poll failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
