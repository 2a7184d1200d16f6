"""The in-memory key table: SHA-256 digest -> small auth record, for every key (no aiohttp).

The hot path does one dict lookup here; the table is filled by a TableLoader at start-up and
kept current by the change-feed follower (gateway.feed).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.store.base import AuthRow, Change, KeyRow


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
        # The store generation (database file) `seq` belongs to; another one means reload.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, digest: bytes) -> CachedKey | None:
        """Return the cached key for a digest, or None (one dict lookup)."""
        return self._by_digest.get(digest)

    def interned_roles(self, roles: tuple[str, ...]) -> frozenset[str]:
        """Return the one shared frozenset for a role tuple (a million keys, few role sets)."""
        interned = self._role_sets.get(roles)
        if interned is None:
            interned = self._role_sets[roles] = frozenset(roles)
        return interned

    def loader(self) -> TableLoader:
        """Return a loader that builds a replacement table chunk by chunk (cold start)."""
        return TableLoader(self)

    def replace(self, entries: dict[bytes, CachedKey], seq: int) -> None:
        """Swap in a whole new table reflecting change-feed sequence `seq`."""
        self._by_digest = entries
        self.seq = seq

    def put(self, row: KeyRow) -> None:
        """Insert or replace one key."""
        roles = self.interned_roles(row.roles)
        revoked = row.status == "revoked"
        self._by_digest[row.digest] = CachedKey(row.id, row.name, roles, revoked, row.expires_at)

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
        intern_roles = self._table.interned_roles
        for digest, key_id, name, roles, status, expires_at in rows:
            entries[digest] = CachedKey(
                key_id, name, intern_roles(roles), status == "revoked", expires_at
            )

    def finish(self, seq: int) -> None:
        """Replace the table's contents with what was loaded, at feed sequence `seq`."""
        self._table.replace(self._entries, seq)
        self._entries = {}
