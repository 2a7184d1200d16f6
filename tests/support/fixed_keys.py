"""Well-formed API keys that are the same in every test process (parametrize ids must be).

pytest-xdist's workers each collect the tests and must see the same ids; a key made by
`generate_key()` at import differs per process, so tests that parametrize over values built
from a key use one of these instead.
"""

from __future__ import annotations

import hashlib

from gateway.keys.keyformat import BASE62_ALPHABET, KEY_PREFIX, RANDOM_LENGTH, checksum


def fixed_key(label: str) -> str:
    """Return a valid key whose body is derived from `label` (same label, same key)."""
    digest = hashlib.sha256(label.encode()).digest()
    body = "".join(BASE62_ALPHABET[byte % len(BASE62_ALPHABET)] for byte in digest)
    body = body[:RANDOM_LENGTH]
    return KEY_PREFIX + body + checksum(body)
