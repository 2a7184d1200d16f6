"""API key format: generation, shape and checksum validation, hashing (no aiohttp)."""

from __future__ import annotations

import hashlib
import re
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

_KEY_SHAPE = re.compile(
    re.escape(KEY_PREFIX) + f"[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}"
)
# Every two-digit base62 string, so a 6-digit checksum is three table lookups (hot path).
_PAIRS = tuple(high + low for high in BASE62_ALPHABET for low in BASE62_ALPHABET)
_62_SQUARED = 62**2
_62_FOURTH = 62**4


def checksum(body: str) -> str:
    """Return the 6-character base62 CRC32 checksum of a key body."""
    high, rest = divmod(zlib.crc32(body.encode("ascii")), _62_FOURTH)
    middle, low = divmod(rest, _62_SQUARED)
    return _PAIRS[high] + _PAIRS[middle] + _PAIRS[low]


def generate_key() -> str:
    """Return a fresh random API key: prefix, random base62 body, checksum."""
    body = "".join(secrets.choice(BASE62_ALPHABET) for _ in range(RANDOM_LENGTH))
    return KEY_PREFIX + body + checksum(body)


def looks_like_key(value: str) -> bool:
    """Return True when a credential value carries keygate's key prefix."""
    return value.startswith(KEY_PREFIX)


def is_well_formed(key: str) -> bool:
    """Return True when the key has the right length, alphabet and checksum."""
    if _KEY_SHAPE.fullmatch(key) is None:
        return False
    return key[-CHECKSUM_LENGTH:] == checksum(key[len(KEY_PREFIX) : -CHECKSUM_LENGTH])


def digest(key: str) -> bytes:
    """Return the SHA-256 digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode("ascii")).digest()


def display_prefix(key: str) -> str:
    """Return the non-secret leading characters shown to identify a key."""
    return key[:DISPLAY_PREFIX_LENGTH]
