"""Admin password hashing: salted scrypt in a self-describing string, constant-time checks."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SCHEME = "scrypt"
DEFAULT_N = 2**14  # CPU/memory cost (iterations); 2**14 * 128 * r bytes = 16 MiB with r=8
DEFAULT_R = 8  # block size
DEFAULT_P = 1  # parallelism
SALT_BYTES = 16  # random salt per password
HASH_BYTES = 32  # derived key length
MIN_N = 2  # smallest cost accepted (tests use small values; production keeps the default)
MAX_N = 2**20  # largest cost accepted from a stored hash (bounds memory: 1 GiB with r=8)
MAX_R = 32
MAX_P = 16
MAX_PASSWORD_BYTES = 4096  # longer passwords are refused before hashing
_FIELDS = 6

E_MALFORMED_HASH = "not a valid scrypt password hash"
E_BAD_COST = "scrypt cost parameters out of range"


class PasswordHashError(ValueError):
    """A stored password hash string is malformed or has unacceptable parameters."""


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as error:
        raise PasswordHashError(E_MALFORMED_HASH) from error


def _check_cost(n: int, r: int, p: int) -> None:
    if not (MIN_N <= n <= MAX_N and n & (n - 1) == 0 and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise PasswordHashError(E_BAD_COST)


def _derive(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    secret = password.encode("utf-8")
    # OpenSSL needs maxmem above 128 * r * n (plus slack); give it twice that.
    maxmem = 2 * 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=maxmem)


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """Return `scrypt$n$r$p$salt_b64$hash_b64` for a password with a fresh random salt."""
    _check_cost(n, r, p)
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password must be at most {MAX_PASSWORD_BYTES} bytes")
    salt = secrets.token_bytes(SALT_BYTES)
    derived = _derive(password, salt, n, r, p, HASH_BYTES)
    return f"{SCHEME}${n}${r}${p}${_b64encode(salt)}${_b64encode(derived)}"


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """Split a stored hash into (n, r, p, salt, hash); raise PasswordHashError if malformed."""
    parts = encoded.split("$")
    if len(parts) != _FIELDS or parts[0] != SCHEME:
        raise PasswordHashError(E_MALFORMED_HASH)
    numbers = parts[1:4]
    if not all(part.isascii() and part.isdigit() and len(part) <= 10 for part in numbers):
        raise PasswordHashError(E_MALFORMED_HASH)
    n, r, p = (int(part) for part in numbers)
    _check_cost(n, r, p)
    salt, derived = _b64decode(parts[4]), _b64decode(parts[5])
    if not salt or not 16 <= len(derived) <= 64:
        raise PasswordHashError(E_MALFORMED_HASH)
    return n, r, p, salt, derived


def verify_password(password: str, encoded: str) -> bool:
    """Return True when `password` matches the stored hash (constant-time comparison).

    A malformed stored hash or an over-long password never matches. This is CPU- and
    memory-hard on purpose: call it off the event loop.
    """
    try:
        n, r, p, salt, expected = parse_hash(encoded)
    except PasswordHashError:
        return False
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        return False
    try:
        derived = _derive(password, salt, n, r, p, len(expected))
    except (UnicodeEncodeError, ValueError, MemoryError):
        return False
    return hmac.compare_digest(derived, expected)


def cost_of(encoded: str) -> int | None:
    """Return the scrypt N a stored hash was made with, or None if it is malformed."""
    try:
        return parse_hash(encoded)[0]
    except PasswordHashError:
        return None
