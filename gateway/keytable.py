"""The in-memory key table: SHA-256 digest -> small auth record, for every key (no aiohttp).

The hot path does one dict lookup here; the table is filled by a TableLoader at start-up and
kept current by the change-feed follower (gateway.feed). A rolled key is mapped under both
digests: its old secret's record expires when the overlap ends and says so (`rolled_until`),
so authenticating any key still costs one lookup and the expiry check it always had.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.ratelimit import RateLimit
from gateway.store.base import AuthRow, Change, KeyRow


class CachedKey:
    """The auth-relevant part of a key, as kept in memory for every key (kept small)."""

    __slots__ = ("expires_at", "id", "name", "rate_limit", "revoked", "roles", "rolled_until")

    def __init__(
        self,
        key_id: int,
        name: str,
        roles: frozenset[str],
        revoked: bool,
        expires_at: float | None,
        rolled_until: float | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.id = key_id
        self.name = name
        self.roles = roles
        self.revoked = revoked
        self.expires_at = expires_at
        # The key's own limit; None: its roles' default (if any) applies.
        self.rate_limit = rate_limit
        # Set on a rolled key's old secret only: when its overlap ends (then key_rolled).
        self.rolled_until = rolled_until

    def __repr__(self) -> str:
        return f"CachedKey(id={self.id}, name={self.name!r}, revoked={self.revoked})"


def previous_record(current: CachedKey, until: float | None) -> CachedKey:
    """Return the record of a rolled key's old secret: it expires when the overlap ends."""
    ends = until if until is not None else 0.0
    if current.expires_at is not None:
        ends = min(ends, current.expires_at)
    return CachedKey(
        current.id,
        current.name,
        current.roles,
        current.revoked,
        ends,
        ends if until is None else until,
        current.rate_limit,
    )


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
        """Insert or replace one key (and a rolled key's old secret)."""
        roles = self.interned_roles(row.roles)
        revoked = row.status == "revoked"
        record = CachedKey(row.id, row.name, roles, revoked, row.expires_at, None, row.rate_limit)
        self._by_digest[row.digest] = record
        if row.previous_digest is not None:
            self._by_digest[row.previous_digest] = previous_record(record, row.previous_expires_at)

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
        """Add a chunk of AuthRows (a rolled key also under its old digest)."""
        entries = self._entries
        intern_roles = self._table.interned_roles
        for digest, key_id, name, roles, status, expires_at, previous, until, limit in rows:
            record = CachedKey(
                key_id, name, intern_roles(roles), status == "revoked", expires_at, None, limit
            )
            entries[digest] = record
            if previous is not None:
                entries[previous] = previous_record(record, until)

    def finish(self, seq: int) -> None:
        """Replace the table's contents with what was loaded, at feed sequence `seq`."""
        self._table.replace(self._entries, seq)
        self._entries = {}
