"""Admin password hashing: scrypt format, salting, verification and malformed hashes."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.admin.accounts import validate_admin_name, validate_password
from gateway.admin.passwords import (
    DEFAULT_N,
    DEFAULT_P,
    DEFAULT_R,
    PasswordHashError,
    cost_of,
    hash_password,
    parse_hash,
    verify_password,
)

CHEAP = 2**4  # scrypt N that keeps these tests fast


def test_default_hash_format_and_parameters() -> None:
    encoded = hash_password("s3cret-password")
    scheme, n, r, p, salt, derived = encoded.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", DEFAULT_N, DEFAULT_R, DEFAULT_P)
    assert (DEFAULT_N, DEFAULT_R, DEFAULT_P) == (2**14, 8, 1)
    assert len(base64.b64decode(salt + "==")) == 16
    assert len(base64.b64decode(derived + "=")) == 32
    assert verify_password("s3cret-password", encoded)
    assert not verify_password("s3cret-passworD", encoded)


def test_hash_is_real_scrypt_of_the_salt() -> None:
    encoded = hash_password("pw-123456", n=CHEAP, r=4, p=2)
    n, r, p, salt, derived = parse_hash(encoded)
    assert (n, r, p) == (CHEAP, 4, 2)
    assert hashlib.scrypt(b"pw-123456", salt=salt, n=n, r=r, p=p, dklen=32) == derived


def test_every_hash_has_its_own_salt() -> None:
    first, second = hash_password("same", n=CHEAP), hash_password("same", n=CHEAP)
    assert first != second
    assert verify_password("same", first) and verify_password("same", second)


def test_cost_travels_with_the_hash() -> None:
    encoded = hash_password("pw", n=2**6)
    assert cost_of(encoded) == 2**6
    assert verify_password("pw", encoded)
    assert cost_of("garbage") is None


@pytest.mark.parametrize("password", ["", "ünïcødé pässwörd ✓", "x" * 4096, "with:colon"])
def test_unusual_passwords_round_trip(password: str) -> None:
    encoded = hash_password(password, n=CHEAP)
    assert verify_password(password, encoded)
    assert not verify_password(password + "!", encoded)


def test_overlong_passwords_are_refused() -> None:
    with pytest.raises(ValueError):
        hash_password("x" * 4097, n=CHEAP)
    assert not verify_password("x" * 5000, hash_password("x", n=CHEAP))


def test_unencodable_password_never_matches() -> None:
    assert not verify_password("\udcff", hash_password("x", n=CHEAP))


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain-text-password",
        "scrypt$16$8$1$c2FsdA",
        "bcrypt$16$8$1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,
        "scrypt$15$8$1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,  # n not a power of two
        "scrypt$1$8$1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,  # n too small
        f"scrypt${2**30}$8$1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,  # memory bomb
        "scrypt$16$0$1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,
        "scrypt$16$8$99$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,
        "scrypt$-16$8$1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,
        "scrypt$16$8$1$!!!$" + "A" * 43,
        "scrypt$16$8$1$$" + "A" * 43,  # empty salt
        "scrypt$16$8$1$c2FsdA$QUFB",  # hash too short
        "scrypt$\uff11\uff16$8$1$c2FsdHNhbHRzYWx0c2FsdA$" + "A" * 43,  # fullwidth digits
    ],
)
def test_malformed_hashes_never_match(encoded: str) -> None:
    assert not verify_password("anything", encoded)
    with pytest.raises(PasswordHashError):
        parse_hash(encoded)


def test_hash_refuses_bad_cost() -> None:
    for n in (0, 3, 2**21):
        with pytest.raises(ValueError):
            hash_password("pw", n=n)


@pytest.mark.parametrize(
    ("password", "ok"),
    [
        ("", False),
        ("short", False),
        ("1234567", False),
        ("12345678", True),
        ("long enough passphrase", True),
        ("tab\there!", False),
        ("kg_looks_like_a_key_123", False),
        ("x" * 1025, False),
    ],
)
def test_password_policy(password: str, ok: bool) -> None:
    if ok:
        assert validate_password(password) == password
    else:
        with pytest.raises(ValueError):
            validate_password(password)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("alice", True),
        ("ops.admin-1@example", True),
        ("", False),
        ("has space", False),
        ("has:colon", False),
        ("a\r\nb", False),
        ("ünï", False),
        ("n" * 65, False),
    ],
)
def test_admin_names(name: str, ok: bool) -> None:
    if ok:
        assert validate_admin_name(name) == name
    else:
        with pytest.raises(ValueError):
            validate_admin_name(name)
