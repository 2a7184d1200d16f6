"""The in-memory key table (digest -> auth record), its change-feed follower and usage counter.

No aiohttp here: the hot path only does dict lookups on this table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from gateway.store.base import AuthRow, Change, KeyRow, KeyStore

log = logging.getLogger("keygate.cache")

# Seconds between change-feed polls when no notification arrives.
DEFAULT_POLL_INTERVAL = 0.1
# Seconds between flushes of last-used times and use counts to the store.
DEFAULT_USAGE_FLUSH_INTERVAL = 2.0
# Change-feed entries fetched per store round trip.
FEED_BATCH = 10_000


class CachedKey:
    """The auth-relevant part of a key, as kept in memory for every key (kept small)."""

    __slots__ = ("expires_at", "id", "name", "revoked", "roles")

    def __init__(
        self,
        key_id: int,
        name: str,
        roles: frozenset[str],
        revoked: bool,
        expires_at: float | None,
    ) -> None:
        self.id = key_id
        self.name = name
        self.roles = roles
        self.revoked = revoked
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return f"CachedKey(id={self.id}, name={self.name!r}, revoked={self.revoked})"


class KeyTable:
    """Every key of the store by SHA-256 digest; role sets are interned to save memory."""

    def __init__(self) -> None:
        self._by_digest: dict[bytes, CachedKey] = {}
        self._role_sets: dict[tuple[str, ...], frozenset[str]] = {}
        self.seq = 0

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, digest: bytes) -> CachedKey | None:
        """Return the cached key for a digest, or None (one dict lookup)."""
        return self._by_digest.get(digest)

    def _roles(self, roles: tuple[str, ...]) -> frozenset[str]:
        interned = self._role_sets.get(roles)
        if interned is None:
            interned = self._role_sets[roles] = frozenset(roles)
        return interned

    def _record(self, row: KeyRow) -> CachedKey:
        return CachedKey(
            row.id, row.name, self._roles(row.roles), row.status == "revoked", row.expires_at
        )

    def load(self, rows: Iterable[KeyRow], seq: int) -> None:
        """Replace the whole table with `rows`, reflecting change-feed sequence `seq`."""
        table = {row.digest: self._record(row) for row in rows}
        self._by_digest = table
        self.seq = seq

    def loader(self) -> TableLoader:
        """Return a loader that builds a replacement table chunk by chunk (cold start)."""
        return TableLoader(self)

    def _install(self, entries: dict[bytes, CachedKey], seq: int) -> None:
        self._by_digest = entries
        self.seq = seq

    def put(self, row: KeyRow) -> None:
        """Insert or replace one key (used for this process's own writes)."""
        self._by_digest[row.digest] = self._record(row)

    def drop(self, digest: bytes) -> None:
        """Remove one key by digest (missing is fine)."""
        self._by_digest.pop(digest, None)

    def apply(self, changes: Iterable[Change]) -> int:
        """Apply change-feed entries in order; return how many were applied."""
        applied = 0
        for change in changes:
            if change.seq <= self.seq:
                continue
            if change.row is None:
                self.drop(change.digest)
            else:
                self.put(change.row)
            self.seq = change.seq
            applied += 1
        return applied


class TableLoader:
    """Builds a whole table from lean auth rows without full KeyRow objects, then swaps it in."""

    def __init__(self, table: KeyTable) -> None:
        self._table = table
        self._entries: dict[bytes, CachedKey] = {}

    def add(self, rows: Iterable[AuthRow]) -> None:
        """Add a chunk of (digest, id, name, roles, status, expires_at) rows."""
        entries = self._entries
        intern_roles = self._table._roles
        for digest, key_id, name, roles, status, expires_at in rows:
            entries[digest] = CachedKey(
                key_id, name, intern_roles(roles), status == "revoked", expires_at
            )

    def finish(self, seq: int) -> None:
        """Replace the table's contents with what was loaded, at feed sequence `seq`."""
        self._table._install(self._entries, seq)
        self._entries = {}


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

    def __init__(
        self, store: KeyStore, table: KeyTable, poll_interval: float = DEFAULT_POLL_INTERVAL
    ) -> None:
        self._store = store
        self._table = table
        self._poll_interval = poll_interval
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

    async def flush(self, store: KeyStore) -> None:
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

    async def run(self, store: KeyStore, interval: float = DEFAULT_USAGE_FLUSH_INTERVAL) -> None:
        """Flush every `interval` seconds until cancelled (then flush once more)."""
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.flush(store)
                except Exception:
                    log.exception("usage flush failed; will retry")
        finally:
            await self.flush(store)


def now() -> float:
    """Return the current unix time in seconds."""
    return time.time()
