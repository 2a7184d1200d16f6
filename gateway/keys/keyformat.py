"""API key format: generation, shape and checksum validation, hashing (no aiohttp)."""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

KEY_PREFIX = "kg_"
BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# 30 base62 characters carry 178 bits of randomness (at least 160 bits are required).
RANDOM_LENGTH = 30
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
# Characters of the key shown in listings so humans can tell keys apart.
DISPLAY_PREFIX_LENGTH = 10

_PREFIX_LENGTH = len(KEY_PREFIX)
_CHECKSUM_START = _PREFIX_LENGTH + RANDOM_LENGTH
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


# Something shaped like a key inside other text (checksum unchecked: a mistyped key is no
# less a secret).
_KEY_SHAPE = re.compile(f"{KEY_PREFIX}[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}")


def holds_key_shape(text: str) -> bool:
    """Return True when `text` contains the prefix and body length of a key, anywhere in it."""
    return KEY_PREFIX in text and _KEY_SHAPE.search(text) is not None


def is_well_formed(key: str) -> bool:
    """Return True when the key has the right length, alphabet and checksum."""
    return digest_if_well_formed(key) is not None


def digest_if_well_formed(key: str) -> bytes | None:
    """Return the key's SHA-256 digest, or None when shape or checksum is wrong (hot path).

    The shape test uses C string methods (ASCII alphanumerics are exactly base62) and the
    checksum is compared before any hashing, so garbage costs no digest and no lookup.
    """
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return None
    tail = key[_PREFIX_LENGTH:]
    if not (tail.isascii() and tail.isalnum()):
        return None
    raw = key.encode("ascii")
    crc = zlib.crc32(raw[_PREFIX_LENGTH:_CHECKSUM_START])
    expected = _PAIRS[crc // _62_FOURTH] + _PAIRS[crc // _62_SQUARED % _62_SQUARED]
    if tail[-CHECKSUM_LENGTH:] != expected + _PAIRS[crc % _62_SQUARED]:
        return None
    return hashlib.sha256(raw).digest()


def digest(key: str) -> bytes:
    """Return the SHA-256 digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode("ascii")).digest()


def display_prefix(key: str) -> str:
    """Return the non-secret leading characters shown to identify a key."""
    return key[:DISPLAY_PREFIX_LENGTH]


# A key (or any longer part of one) in text, as a URL may carry it: `_` raw or
# percent-encoded once or twice, body characters raw or percent-encoded. The display
# prefix (`kg_` and 7 body characters) is kept, the rest cut. Matching on the prefix only,
# not the checksum: a truncated or mistyped key is as much a secret.
_ALNUM = r"(?:[0-9A-Za-z]|%(?:25)?(?:3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa]))"
_KEY_IN_TEXT = re.compile(
    rf"(kg(?:_|%(?:25)?5[Ff]){_ALNUM}{{{DISPLAY_PREFIX_LENGTH - len(KEY_PREFIX)}}}){_ALNUM}+"
)
CUT_MARK = "..."  # what replaces the cut part of a key


def _cut(match: re.Match[str]) -> str:
    return match[1] + CUT_MARK


def cut_keys(text: str) -> str:
    """Return `text` with every key in it cut to its display prefix and `...`.

    Cheap when there is no key: a substring test, then a search, before any substitution
    (a callable replacement: a template string is parsed again on every call).
    """
    if "kg" not in text or _KEY_IN_TEXT.search(text) is None:
        return text
    return _KEY_IN_TEXT.sub(_cut, text)
