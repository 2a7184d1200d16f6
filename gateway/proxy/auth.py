"""The decision: which key is calling (authenticate) and may it do this (authorize); no I/O."""

from __future__ import annotations

import functools

from gateway.keys import keyformat as keys
from gateway.keys import table as keytable
from gateway.keys.table import CachedKey, KeyTable, Probe
from gateway.policy.rules import Policy, Rule
from gateway.proxy.refusals import (
    FORBIDDEN,
    KEY_EXPIRED,
    KEY_MALFORMED,
    KEY_REVOKED,
    KEY_ROLLED,
    KEY_UNKNOWN,
    PROTECTED,
    Refusal,
)

# Well-formed keys seen lately -> their table probe (the digest, split as the table looks it
# up), so a client's steady key skips the checksum and SHA-256 (the biggest part of a keyed
# request's extra cost; benchmarks.decision shows it). Only the probe is cached, never a
# decision: the table is still consulted on every request. The plaintext keys live only in
# this process's memory, like the request headers they came from; bounded (least recently
# used out), so hostile key variety only costs the uncached path. Malformed keys raise, and
# lru_cache keeps no exceptions, so garbage never takes a place in the cache.
RECENT_DIGESTS_LIMIT = 4096


class MalformedKeyError(ValueError):
    """The value does not have a key's shape or checksum."""


@functools.lru_cache(maxsize=RECENT_DIGESTS_LIMIT)
def probe_of(key: str) -> Probe:
    """Return a well-formed key's table probe (cached), or raise MalformedKeyError."""
    digest = keys.digest_if_well_formed(key)
    if digest is None:
        raise MalformedKeyError
    return keytable.probe(digest)


def authenticate(table: KeyTable, key: str, now: float) -> CachedKey | Refusal:
    """Check shape and checksum, then look the digest up; refuse unknown, revoked, expired."""
    try:
        probe = probe_of(key)
    except MalformedKeyError:
        return KEY_MALFORMED
    return _usable(table.find(probe), now)  # every request: revocation is never cached


def authenticate_digest(table: KeyTable, digest: bytes, now: float) -> CachedKey | Refusal:
    """Look a stored key up by its digest as `authenticate` does by its secret (explain)."""
    return _usable(table.find(keytable.probe(digest)), now)


def _usable(record: CachedKey | None, now: float) -> CachedKey | Refusal:
    """Return the record when it may call, else why not (unknown, revoked, expired, rolled)."""
    if record is None:
        return KEY_UNKNOWN
    if record.revoked:
        return KEY_REVOKED
    if record.expires_at is not None and record.expires_at <= now:
        # Only a rolled key's old secret has rolled_until; the check costs nothing otherwise.
        if record.rolled_until is not None and record.rolled_until <= now:
            return KEY_ROLLED
        return KEY_EXPIRED
    return record


def authorize(policy: Policy, record: CachedKey, method: str, path: str) -> Refusal | None:
    """Return None when the key may call METHOD PATH, else the 403 refusal to send."""
    if policy.is_protected_path(path):
        return PROTECTED
    if not policy.matcher_for(record.roles).allows(method, path):
        return FORBIDDEN
    return None


def allowing_rule(policy: Policy, record: CachedKey, method: str, path: str) -> Refusal | Rule:
    """Return the rule that lets the key call METHOD PATH, else the 403 refusal to send."""
    if policy.is_protected_path(path):
        return PROTECTED
    rule = policy.matcher_for(record.roles).allowing(method, path)
    return FORBIDDEN if rule is None else rule
