"""API key format: generation, shape and checksum validation, hashing (no aiohttp)."""

from __future__ import annotations

import hashlib
import secrets
import zlib

KEY_PREFIX = "kg_"
BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# 30 base62 characters carry 178 bits of randomness (>= the 160 bits DESIGN requires).
RANDOM_LENGTH = 30
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
# Characters of the key shown in listings so humans can tell keys apart.
DISPLAY_PREFIX_LENGTH = 10

_BASE62_SET = frozenset(BASE62_ALPHABET)


def _base62(number: int, width: int) -> str:
    """Encode a non-negative integer as zero-padded base62 of a fixed width."""
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(BASE62_ALPHABET[remainder])
    return "".join(reversed(digits))


def checksum(body: str) -> str:
    """Return the 6-character base62 CRC32 checksum of a key body."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_key() -> str:
    """Return a fresh random API key: prefix, random base62 body, checksum."""
    body = "".join(secrets.choice(BASE62_ALPHABET) for _ in range(RANDOM_LENGTH))
    return KEY_PREFIX + body + checksum(body)


def looks_like_key(value: str) -> bool:
    """Return True when a credential value carries keygate's key prefix."""
    return value.startswith(KEY_PREFIX)


def is_well_formed(key: str) -> bool:
    """Return True when the key has the right length, alphabet and checksum."""
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    body = key[len(KEY_PREFIX) : len(KEY_PREFIX) + RANDOM_LENGTH]
    if not _BASE62_SET.issuperset(key[len(KEY_PREFIX) :]):
        return False
    return key[-CHECKSUM_LENGTH:] == checksum(body)


def digest(key: str) -> bytes:
    """Return the SHA-256 digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode("ascii")).digest()


def display_prefix(key: str) -> str:
    """Return the non-secret leading characters shown to identify a key."""
    return key[:DISPLAY_PREFIX_LENGTH]
