"""Behaviour of the API key format: generation, shape and checksum, hashing, display prefix."""

from __future__ import annotations

import hashlib
import math
import zlib

import pytest

from gateway.keys import keyformat as keys
from gateway.keys.keyformat import (
    BASE62_ALPHABET,
    CHECKSUM_LENGTH,
    DISPLAY_PREFIX_LENGTH,
    KEY_LENGTH,
    KEY_PREFIX,
    RANDOM_LENGTH,
)

# A fixed, valid sample key (random body chosen by hand, checksum computed independently).
SAMPLE_BODY = "Zq3xK9mP2wL7vB4nR8tY1cF6hJ0dGs"
MANY = 2000


def base62_crc(body: str) -> str:
    """Independent reference: CRC32 of the body as 6 base62 digits, most significant first."""
    value = zlib.crc32(body.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(BASE62_ALPHABET[digit])
    assert value == 0
    return "".join(reversed(digits))


SAMPLE_KEY = KEY_PREFIX + SAMPLE_BODY + base62_crc(SAMPLE_BODY)


def test_sample_key_is_well_formed() -> None:
    assert len(SAMPLE_BODY) == RANDOM_LENGTH
    assert keys.is_well_formed(SAMPLE_KEY)
    assert keys.checksum(SAMPLE_BODY) == base62_crc(SAMPLE_BODY)


def test_generated_key_has_prefix_length_alphabet_and_checksum() -> None:
    key = keys.generate_key()
    assert len(key) == KEY_LENGTH == len(KEY_PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
    assert key.startswith(KEY_PREFIX)
    rest = key[len(KEY_PREFIX) :]
    assert set(rest) <= set(BASE62_ALPHABET)
    body, check = rest[:RANDOM_LENGTH], rest[RANDOM_LENGTH:]
    assert check == base62_crc(body)
    assert keys.is_well_formed(key)
    assert keys.looks_like_key(key)


def test_generated_keys_are_unique_and_use_the_whole_alphabet() -> None:
    generated = [keys.generate_key() for _ in range(MANY)]
    assert len(set(generated)) == MANY
    assert all(keys.is_well_formed(key) for key in generated)
    bodies = "".join(key[len(KEY_PREFIX) : len(KEY_PREFIX) + RANDOM_LENGTH] for key in generated)
    # 60,000 characters from 62 symbols: every symbol shows up unless generation is broken.
    assert set(bodies) == set(BASE62_ALPHABET)
    # No body position is stuck on one value.
    for position in range(RANDOM_LENGTH):
        column = {key[len(KEY_PREFIX) + position] for key in generated}
        assert len(column) > 30


def test_at_least_160_bits_of_randomness() -> None:
    assert len(BASE62_ALPHABET) == len(set(BASE62_ALPHABET)) == 62
    assert RANDOM_LENGTH * math.log2(62) >= 160


def test_checksum_rejects_every_single_character_substitution() -> None:
    candidates = BASE62_ALPHABET + "_-+/=. "
    for position, original in enumerate(SAMPLE_KEY):
        for replacement in candidates:
            if replacement == original:
                continue
            typo = SAMPLE_KEY[:position] + replacement + SAMPLE_KEY[position + 1 :]
            assert not keys.is_well_formed(typo), (position, replacement)


def test_checksum_rejects_adjacent_transpositions() -> None:
    for position in range(len(KEY_PREFIX), KEY_LENGTH - 1):
        a, b = SAMPLE_KEY[position], SAMPLE_KEY[position + 1]
        if a == b:
            continue
        swapped = SAMPLE_KEY[:position] + b + a + SAMPLE_KEY[position + 2 :]
        assert not keys.is_well_formed(swapped), position


@pytest.mark.parametrize("cut", range(1, KEY_LENGTH + 1))
def test_truncated_keys_are_rejected(cut: int) -> None:
    assert not keys.is_well_formed(SAMPLE_KEY[:-cut])
    assert not keys.is_well_formed(SAMPLE_KEY[cut:])


def test_extended_keys_are_rejected() -> None:
    for extra in (*BASE62_ALPHABET, "\n", " ", "\x00"):
        assert not keys.is_well_formed(SAMPLE_KEY + extra)
        assert not keys.is_well_formed(extra + SAMPLE_KEY)


@pytest.mark.parametrize(
    "value",
    [
        "",
        KEY_PREFIX,
        "KG_" + SAMPLE_KEY[3:],
        "kg-" + SAMPLE_KEY[3:],
        SAMPLE_KEY[3:],
        SAMPLE_KEY[:-1] + "é",
        SAMPLE_KEY[:10] + "\uff11" + SAMPLE_KEY[11:],  # fullwidth digit one
        SAMPLE_KEY.upper(),
    ],
)
def test_malformed_values_are_rejected_without_raising(value: str) -> None:
    assert not keys.is_well_formed(value)


def test_looks_like_key_only_for_the_prefix() -> None:
    assert keys.looks_like_key("kg_anything")
    assert not keys.looks_like_key("eyJhbGciOiJIUzI1NiJ9.e30.sig")
    assert not keys.looks_like_key("KG_" + SAMPLE_KEY[3:])
    assert not keys.looks_like_key("")


def test_digest_is_sha256_of_the_key() -> None:
    assert keys.digest(SAMPLE_KEY) == hashlib.sha256(SAMPLE_KEY.encode()).digest()
    assert len(keys.digest(SAMPLE_KEY)) == 32
    other = keys.generate_key()
    assert keys.digest(other) != keys.digest(SAMPLE_KEY)
    assert keys.digest(other) == keys.digest(other)


def test_display_prefix_shows_only_a_short_start() -> None:
    prefix = keys.display_prefix(SAMPLE_KEY)
    assert prefix == SAMPLE_KEY[:DISPLAY_PREFIX_LENGTH]
    assert prefix.startswith(KEY_PREFIX)
    shown_random = DISPLAY_PREFIX_LENGTH - len(KEY_PREFIX)
    assert 0 < shown_random < RANDOM_LENGTH
    # What stays hidden is still far beyond guessing.
    assert (RANDOM_LENGTH - shown_random) * math.log2(62) >= 128
    # The checksum is never part of what is shown.
    assert SAMPLE_KEY[-CHECKSUM_LENGTH:] not in prefix


def test_display_prefixes_tell_keys_apart() -> None:
    prefixes = {keys.display_prefix(keys.generate_key()) for _ in range(500)}
    assert len(prefixes) == 500
