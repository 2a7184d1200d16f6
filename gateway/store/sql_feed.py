"""The change feed in SQL: the cold-start load, entries since a sequence, pruning."""

from __future__ import annotations

from collections.abc import Callable

from gateway.store.base import AuthRow, Change, FeedPrunedError
from gateway.store.common import (
    AUTH_COLUMNS,
    KEY_COLUMNS_K,
    LOAD_CHUNK,
    auth_rows,
    gc_paused,
    key_row,
)
from gateway.store.sql import PRUNED_THROUGH, SqlBase


class SqlFeed(SqlBase):
    """The Feed role, written once for both backends (appending is the backend's `Tx`)."""

    async def load_auth(self, sink: Callable[[list[AuthRow]], None]) -> int:
        """Feed every key's auth row to `sink` in chunks; return the feed sequence they reflect.

        One read snapshot holds both the rows and the sequence; chunks of LOAD_CHUNK rows in
        id order, role tuples interned, and the cyclic garbage collector paused (auth rows
        hold no cycles, and collections triggered by a million new objects would cost more
        than the load). `sink` runs on the event loop.
        """
        with gc_paused():
            async with self._snapshot() as tx:
                seq = int((await tx.fetch(self.dialect.current_seq))[0][0])
                async for chunk in tx.chunks(
                    f"SELECT {AUTH_COLUMNS} FROM keys ORDER BY id", LOAD_CHUNK
                ):
                    sink(auth_rows(chunk))
        return seq

    async def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        """Return change-feed entries with sequence > seq, oldest first.

        Each entry carries the key's current row, or None when the key no longer exists.
        Raise FeedPrunedError when entries after `seq` were pruned (the caller reloads).
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        rows = await self._read(
            f"SELECT c.seq, c.digest, {KEY_COLUMNS_K} FROM key_changes c"
            # By id: a rolled key's entries name its old digest, yet carry its current row.
            " LEFT JOIN keys k ON k.id = c.key_id AND c.op = 'upsert'"
            " WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
            (seq, limit),
        )
        # Read after the entries: a prune in between is seen here (a needless reload at
        # worst), and one before them was already visible to the read above.
        pruned_through = int((await self._read(PRUNED_THROUGH, ()))[0][0])
        if seq < pruned_through:
            raise FeedPrunedError(seq, pruned_through)
        return [
            Change(row[0], bytes(row[1]), None if row[2] is None else key_row(row[2:]))
            for row in rows
        ]

    async def current_seq(self) -> int:
        """Return the latest change-feed sequence number (0 when empty)."""
        rows = await self._read(self.dialect.current_seq, ())
        return int(rows[0][0])

    async def prune_feed(self, keep_entries: int, keep_before: float) -> int:
        """Delete the oldest feed entries, keeping the newest `keep_entries` and any at or
        after `keep_before`; return how many were deleted.

        Only a prefix of the feed is ever removed, and its last sequence is remembered so a
        follower behind it learns to reload (FeedPrunedError) instead of missing changes.
        """
        async with self._tx(feed=True) as tx:
            latest = int((await tx.fetch(self.dialect.current_seq))[0][0])
            young_rows = await tx.fetch(
                "SELECT MIN(seq) FROM key_changes WHERE at >= ?", keep_before
            )
            young = young_rows[0][0]
            pruned_through = int((await tx.fetch(PRUNED_THROUGH))[0][0])
            cutoff = min(latest - keep_entries, latest if young is None else young - 1)
            if cutoff <= pruned_through:
                return 0
            deleted = await tx.execute("DELETE FROM key_changes WHERE seq <= ?", cutoff)
            await tx.execute("UPDATE feed_state SET pruned_through = ? WHERE id = 1", cutoff)
            return deleted
