"""The in-memory key table: SHA-256 digest -> packed auth record, for every key (no aiohttp).

A million keys have to fit in a worker, so a key is not a Python object here but one entry
of a dict from a small int (the digest's first PREFIX_BYTES bytes) to one packed `bytes`
record: the rest of the digest first (so a lookup compares all 256 bits with one
`startswith`), then a flags byte (revoked, has an expiry, wide fields), the id, role-set and
rate-limit indexes into per-table lists, the expiry if any, and the UTF-8 name. Two digests
sharing a prefix are rare (about one pair in 10**5 tables of a million keys); the second one
lives in an overflow dict under its full digest. A rolled key's old secret (rare too) is
kept as a full CachedKey under its digest: its record expires when the overlap ends and
says so (`rolled_until`).

A lookup decodes the record into a CachedKey through a bounded cache keyed by the record
itself; every write makes a new record, so a decode is never stale and revocation is seen
at once. The table is filled by a TableLoader at start-up and kept current by the
change-feed follower (gateway.keys.feed).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from gateway.ratelimit.limiters import RateLimit

if TYPE_CHECKING:  # the store's row types, for mypy: the table imports no store at run time
    from gateway.store.base import AuthRow, Change, KeyRow

# Digest bytes that make the dict key: 56 bits is an int of the smallest size (32 bytes).
PREFIX_BYTES = 7
# Decoded records kept per table (least recently used out): a worker's busy keys.
DECODED_LIMIT = 4096

_REST = 32 - PREFIX_BYTES
# Flags (the byte after the digest's rest) and the layout of the fields after it. Most keys
# have a small id, few role sets and limits and no expiry: the narrow layout without expiry
# is 16 bytes shorter than the widest, one allocation size class for most names.
_REVOKED = 1
_EXPIRES = 2
_WIDE = 4
_NARROW_ID_MAX = 0xFFFF_FFFF
_NARROW_INDEX_MAX = 0xFFFF  # role-set and rate-limit indexes
_LAYOUTS = {
    0: struct.Struct(f"<{_REST}sBIHH"),
    _EXPIRES: struct.Struct(f"<{_REST}sBIHHd"),
    _WIDE: struct.Struct(f"<{_REST}sBqII"),
    _WIDE | _EXPIRES: struct.Struct(f"<{_REST}sBqIId"),
}
_NAME_ENCODING = "utf-8"
# Lone surrogates survive the round trip: the table never refuses a name the store holds.
_NAME_ERRORS = "surrogatepass"
_from_bytes = int.from_bytes

# What a lookup needs from a digest: (prefix, rest, digest); worth caching per key.
Probe = tuple[int, bytes, bytes]


class CachedKey:
    """The auth-relevant part of a key, as a lookup returns it."""

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


def probe(digest: bytes) -> Probe:
    """Return the (prefix, rest, digest) a lookup of `digest` uses."""
    return _from_bytes(digest[:PREFIX_BYTES], "big"), digest[PREFIX_BYTES:], digest


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


def _pack(
    digest: bytes,
    key_id: int,
    name: str,
    role_index: int,
    limit_index: int,
    revoked: bool,
    expires_at: float | None,
) -> bytes:
    """Return one key's packed record (the fields' indexes already resolved)."""
    wide = not (
        0 <= key_id <= _NARROW_ID_MAX
        and role_index <= _NARROW_INDEX_MAX
        and limit_index <= _NARROW_INDEX_MAX
    )
    flags = (_REVOKED if revoked else 0) | (_WIDE if wide else 0)
    rest = digest[PREFIX_BYTES:]
    if expires_at is None:
        head = _LAYOUTS[flags & _WIDE].pack(rest, flags, key_id, role_index, limit_index)
    else:
        flags |= _EXPIRES
        head = _LAYOUTS[flags & ~_REVOKED].pack(
            rest, flags, key_id, role_index, limit_index, expires_at
        )
    return head + name.encode(_NAME_ENCODING, _NAME_ERRORS)


def _decoder(
    role_sets: list[frozenset[str]], limits: list[RateLimit | None]
) -> Callable[[bytes], CachedKey]:
    # Closes over the lists only (no cycle through the table); an index never changes
    # meaning in them, so the cache is valid for as long as they are.
    @functools.lru_cache(maxsize=DECODED_LIMIT)
    def decode(record: bytes) -> CachedKey:
        flags = record[_REST]
        layout = _LAYOUTS[flags & ~_REVOKED]
        _, _, key_id, role_index, limit_index, *expires = layout.unpack_from(record)
        return CachedKey(
            key_id,
            record[layout.size :].decode(_NAME_ENCODING, _NAME_ERRORS),
            role_sets[role_index],
            bool(flags & _REVOKED),
            expires[0] if expires else None,
            None,
            limits[limit_index],
        )

    return decode


class PackedRecords:
    """One generation of the table's contents: packed records and the lists they index."""

    def __init__(self) -> None:
        self.packed: dict[int, bytes] = {}
        # Full digest -> record, for a digest whose prefix another digest already holds.
        self.overflow: dict[bytes, bytes] = {}
        # Full digest -> a rolled key's old-secret record.
        self.rolled: dict[bytes, CachedKey] = {}
        self.role_sets: list[frozenset[str]] = []
        self.role_index: dict[tuple[str, ...], int] = {}
        self.limits: list[RateLimit | None] = [None]
        self.limit_index: dict[RateLimit | None, int] = {None: 0}
        self.decode = _decoder(self.role_sets, self.limits)

    def __len__(self) -> int:
        return len(self.packed) + len(self.overflow) + len(self.rolled)

    def roles_at(self, roles: tuple[str, ...]) -> int:
        """Return the index of a role tuple's one shared frozenset (few sets, many keys)."""
        index = self.role_index.get(roles)
        if index is None:
            index = self.role_index[roles] = len(self.role_sets)
            self.role_sets.append(frozenset(roles))
        return index

    def limit_at(self, limit: RateLimit | None) -> int:
        """Return the index of a rate limit in the table's list of distinct limits."""
        index = self.limit_index.get(limit)
        if index is None:
            index = self.limit_index[limit] = len(self.limits)
            self.limits.append(limit)
        return index

    def pack(
        self,
        digest: bytes,
        key_id: int,
        name: str,
        roles: tuple[str, ...],
        revoked: bool,
        expires_at: float | None,
        limit: RateLimit | None,
    ) -> bytes:
        """Return the packed record of one key."""
        return _pack(
            digest, key_id, name, self.roles_at(roles), self.limit_at(limit), revoked, expires_at
        )

    def find_spilled(self, digest: bytes) -> CachedKey | None:
        """Return the record of a digest outside the prefix dict (overflow, rolled), or None."""
        record = self.overflow.get(digest)
        if record is not None:
            return self.decode(record)
        return self.rolled.get(digest)

    def store(self, digest: bytes, record: bytes) -> None:
        """Put a packed record under its digest, replacing whatever the digest had."""
        if self.rolled:
            self.rolled.pop(digest, None)
        prefix = _from_bytes(digest[:PREFIX_BYTES], "big")
        current = self.packed.get(prefix)
        if current is None or current.startswith(digest[PREFIX_BYTES:]):
            self.packed[prefix] = record
        else:
            self.overflow[digest] = record

    def store_previous(
        self,
        digest: bytes,
        key: tuple[int, str, tuple[str, ...], bool, float | None, RateLimit | None],
        until: float | None,
    ) -> None:
        """Keep a rolled key's old secret under its digest: it expires when the overlap ends.

        `key` is the current key's (id, name, roles, revoked, expires_at, rate_limit).
        """
        key_id, name, roles, revoked, expires_at, limit = key
        roles_set = self.role_sets[self.roles_at(roles)]
        current = CachedKey(key_id, name, roles_set, revoked, expires_at, None, limit)
        self.store_rolled(digest, previous_record(current, until))

    def store_rolled(self, digest: bytes, record: CachedKey) -> None:
        """Put a rolled key's old-secret record under its digest, replacing what it had."""
        self.discard(digest)
        self.rolled[digest] = record

    def discard(self, digest: bytes) -> None:
        """Remove whatever a digest has (missing is fine)."""
        if self.rolled.pop(digest, None) is not None:
            return
        if self.overflow.pop(digest, None) is not None:
            return
        prefix = _from_bytes(digest[:PREFIX_BYTES], "big")
        current = self.packed.get(prefix)
        if current is None or not current.startswith(digest[PREFIX_BYTES:]):
            return
        del self.packed[prefix]
        # An overflow record only exists while its prefix is held: promote one.
        head = digest[:PREFIX_BYTES]
        for other in self.overflow:
            if other.startswith(head):
                self.packed[prefix] = self.overflow.pop(other)
                return


class KeyTable:
    """Every key of the store by SHA-256 digest, packed; role sets and limits are shared."""

    def __init__(self) -> None:
        self._records = PackedRecords()
        self.seq = 0
        # The store generation (database file) `seq` belongs to; another one means reload.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._records)

    def lookup(self, digest: bytes) -> CachedKey | None:
        """Return the cached key for a digest, or None."""
        return self.find(probe(digest))

    def find(self, probe: Probe) -> CachedKey | None:
        """Return the cached key for a probe (see `probe`), or None: the hot path's lookup."""
        records = self._records
        prefix, rest, digest = probe
        record = records.packed.get(prefix)
        if record is not None and record.startswith(rest):
            return records.decode(record)
        return records.find_spilled(digest)

    def loader(self) -> TableLoader:
        """Return a loader that builds a replacement table chunk by chunk (cold start)."""
        return TableLoader(self)

    def replace(self, records: PackedRecords, seq: int) -> None:
        """Swap in a whole new table reflecting change-feed sequence `seq`."""
        self._records = records
        self.seq = seq

    def put(self, row: KeyRow) -> None:
        """Insert or replace one key (and a rolled key's old secret)."""
        records = self._records
        revoked = row.status == "revoked"
        records.store(
            row.digest,
            records.pack(
                row.digest, row.id, row.name, row.roles, revoked, row.expires_at, row.rate_limit
            ),
        )
        if row.previous_digest is not None:
            records.store_previous(
                row.previous_digest,
                (row.id, row.name, row.roles, revoked, row.expires_at, row.rate_limit),
                row.previous_expires_at,
            )

    def drop(self, digest: bytes) -> None:
        """Remove one key by digest (missing is fine)."""
        self._records.discard(digest)

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
        self._records = PackedRecords()

    def add(self, rows: Iterable[AuthRow]) -> None:
        """Add a chunk of AuthRows (a rolled key also under its old digest)."""
        records = self._records
        packed, rolled = records.packed, records.rolled
        role_index, roles_at = records.role_index, records.roles_at
        limit_at = records.limit_at
        for digest, key_id, name, roles, status, expires_at, previous, until, limit in rows:
            index = role_index.get(roles)
            record = _pack(
                digest,
                key_id,
                name,
                roles_at(roles) if index is None else index,
                0 if limit is None else limit_at(limit),
                status == "revoked",
                expires_at,
            )
            held = packed.setdefault(_from_bytes(digest[:PREFIX_BYTES], "big"), record)
            if held is not record or rolled:
                records.store(digest, record)  # a shared prefix or a rolled digest: rare
            if previous is not None:
                key = (key_id, name, roles, status == "revoked", expires_at, limit)
                records.store_previous(previous, key, until)

    def finish(self, seq: int) -> None:
        """Replace the table's contents with what was loaded, at feed sequence `seq`."""
        self._table.replace(self._records, seq)
        self._records = PackedRecords()
