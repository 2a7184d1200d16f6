"""Behaviour of the key lifecycle rules: input validation, minting, key JSON, grants."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway import clock
from gateway.keys import keyformat as keys
from gateway.keys import rules as key_rules
from gateway.keys.rules import (
    DESCRIPTION_MAX_LENGTH,
    E_INVALID,
    E_UNKNOWN_ROLE,
    NAME_MAX_LENGTH,
    ROLES_MAX,
    GrantError,
    InputError,
    check_grants,
    key_json,
    parse_timestamp,
    validate_description,
    validate_name,
    validate_roles,
)
from gateway.policy.rules import Policy, load_policy
from gateway.store.base import KeyRow, NewKey
from gateway.store.sqlite import SqliteKeyStore

EXAMPLE = Path(gateway.__file__).resolve().parent / "examples" / "policy.yaml"
NOW = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
KEY_JSON_FIELDS = {
    "id",
    "name",
    "description",
    "roles",
    "status",
    "prefix",
    "created_at",
    "created_by",
    "updated_at",
    "revoked_at",
    "expires_at",
    "last_used_at",
    "use_count",
    "rolled_at",
    "previous_expires_at",
    "rate_limit",
}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(EXAMPLE)


# --------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name", ["a", "x" * NAME_MAX_LENGTH, "ci-bot 1", "etl@prod:nightly", "7up", "~!{}"]
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * (NAME_MAX_LENGTH + 1),
        "bad\r\nX-Acting-User: admin",
        "line\nbreak",
        "carriage\rreturn",
        "nul\x00",
        "del\x7f",
        "tab\there",
        "caf\u00e9",
        "\u540d\u524d",
        "zero\u200bwidth",
        " leading",
        "trailing ",
        " ",
        "12345",
        "0",
        None,
        42,
        ["a"],
    ],
)
def test_invalid_names(name: Any) -> None:
    with pytest.raises(InputError) as caught:
        validate_name(name)
    assert caught.value.field == "name"
    assert caught.value.code == E_INVALID
    assert caught.value.message == str(caught.value)


# --------------------------------------------------------------------- descriptions


def test_descriptions() -> None:
    assert validate_description(None) == ""
    assert validate_description("") == ""
    assert validate_description("line one\n\tline two") == "line one\n\tline two"
    assert validate_description("d" * DESCRIPTION_MAX_LENGTH) == "d" * DESCRIPTION_MAX_LENGTH
    assert validate_description("caf\u00e9") == "caf\u00e9"


@pytest.mark.parametrize(
    "value",
    [
        "d" * (DESCRIPTION_MAX_LENGTH + 1),
        "a\x00b",
        "a\x7f",
        "\r",
        5,
        "a\x85b",
        "a\u2028b",
        "\u2029",
    ],
)
def test_invalid_descriptions(value: Any) -> None:
    with pytest.raises(InputError) as caught:
        validate_description(value)
    assert caught.value.field == "description"


# --------------------------------------------------------------------- roles


def test_roles_are_deduplicated_and_sorted(policy: Policy) -> None:
    assert validate_roles(["1int-user", "1int-admin", "1int-user"], policy) == (
        "1int-admin",
        "1int-user",
    )
    assert validate_roles(("1int-rules-read",), policy) == ("1int-rules-read",)


def test_unknown_roles_are_named(policy: Policy) -> None:
    with pytest.raises(InputError) as caught:
        validate_roles(["1int-user", "superuser", "root"], policy)
    assert caught.value.code == E_UNKNOWN_ROLE
    assert caught.value.field == "roles"
    assert "superuser" in caught.value.message
    assert "root" in caught.value.message
    assert "1int-user" not in caught.value.message


@pytest.mark.parametrize(
    "value",
    [[], None, "1int-user", {"1int-user": True}, ["1int-user", 3], ["1int-user"] * (ROLES_MAX + 1)],
)
def test_invalid_role_lists(policy: Policy, value: Any) -> None:
    with pytest.raises(InputError) as caught:
        validate_roles(value, policy)
    assert caught.value.field == "roles"
    assert caught.value.code == E_INVALID


# --------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-01-01T00:00:00Z", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01T02:00:00+02:00", datetime(2027, 1, 1, tzinfo=UTC)),
        ("2027-01-01T00:00:00.5+00:00", datetime(2027, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_timestamps_with_a_zone_in_the_future(text: str, expected: datetime) -> None:
    assert parse_timestamp(text, "expires_at", NOW) == expected.timestamp()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("2027-01-01T00:00:00", "time zone"),
        ("2027-01-01", "time zone"),
        ("2020-01-01T00:00:00Z", "in the future"),
        (datetime.fromtimestamp(NOW, UTC).isoformat(), "in the future"),
        ("next tuesday", "not ISO-8601"),
        ("", "not ISO-8601"),
        (1_900_000_000, "ISO-8601 string"),
        (None, "ISO-8601 string"),
        ("9999-12-31T23:59:59-14:00", "out of range"),
    ],
)
def test_invalid_timestamps(value: Any, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_timestamp(value, "expires_at", NOW)
    assert caught.value.field == "expires_at"
    assert fragment in caught.value.message


def test_latest_timestamp_still_shows() -> None:
    stamp = parse_timestamp("9999-12-31T23:59:59Z", "expires_at", NOW)
    assert clock.iso(stamp) == "9999-12-31T23:59:59Z"


# --------------------------------------------------------------------- key JSON


def stored_row(**changes: Any) -> KeyRow:
    secret = keys.generate_key()
    base = KeyRow(
        id=3,
        name="ci-bot",
        description="nightly",
        roles=("1int-user",),
        status="active",
        digest=keys.digest(secret),
        prefix=keys.display_prefix(secret),
        created_at=NOW - 3600,
        created_by="admin",
        updated_at=NOW - 60,
        revoked_at=None,
        expires_at=None,
        last_used_at=NOW - 1,
        use_count=12,
    )
    return dataclasses.replace(base, **changes)


def test_key_json_has_exactly_the_design_fields_and_no_secret_material() -> None:
    row = stored_row()
    shown = key_json(row, NOW)
    assert set(shown) == KEY_JSON_FIELDS
    text = repr(shown)
    assert row.digest.hex() not in text
    assert repr(row.digest) not in text
    assert shown["prefix"] == row.prefix
    assert shown["roles"] == ["1int-user"]
    assert shown["created_at"] == clock.iso(NOW - 3600)
    assert str(shown["created_at"]).endswith("Z")
    assert (shown["revoked_at"], shown["expires_at"]) == (None, None)
    assert shown["use_count"] == 12


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, "active"),
        ({"expires_at": NOW + 1}, "active"),
        ({"expires_at": NOW}, "expired"),
        ({"expires_at": NOW - 1}, "expired"),
        ({"status": "revoked", "revoked_at": NOW - 5}, "revoked"),
        ({"status": "revoked", "revoked_at": NOW - 5, "expires_at": NOW - 1}, "revoked"),
    ],
)
def test_key_json_status(changes: dict[str, Any], status: str) -> None:
    assert key_json(stored_row(**changes), NOW)["status"] == status


def test_iso_format() -> None:
    assert clock.iso(None) is None
    assert clock.iso(0) == "1970-01-01T00:00:00Z"


# --------------------------------------------------------------------- minting


def test_new_key_request_mints_a_key_and_keeps_only_its_hash(policy: Policy) -> None:
    data = {
        "name": "etl",
        "description": "loads data",
        "roles": ["1int-user", "1int-user"],
        "expires_at": "2030-01-01T00:00:00Z",
    }
    new, secret = key_rules.new_key_request(data, policy, NOW)
    assert keys.is_well_formed(secret)
    assert new.digest == keys.digest(secret)
    assert new.prefix == keys.display_prefix(secret)
    assert new.roles == ("1int-user",)
    assert new.expires_at == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert secret not in repr(new)
    assert {f.name for f in dataclasses.fields(NewKey)} == {
        "name",
        "description",
        "roles",
        "digest",
        "prefix",
        "expires_at",
        "rate_limit",
    }
    again, other = key_rules.new_key_request(data, policy, NOW)
    assert other != secret
    assert again.digest != new.digest


def test_new_key_request_validates_every_field(policy: Policy) -> None:
    good: dict[str, Any] = {"name": "etl", "roles": ["1int-user"]}
    assert key_rules.new_key_request(good, policy, NOW)[0].expires_at is None
    for field, bad in (
        ("name", "bad\nname"),
        ("description", "x" * (DESCRIPTION_MAX_LENGTH + 1)),
        ("roles", ["nope"]),
        ("expires_at", "2000-01-01T00:00:00Z"),
    ):
        with pytest.raises(InputError) as caught:
            key_rules.new_key_request({**good, field: bad}, policy, NOW)
        assert caught.value.field == field


async def test_created_key_secret_never_reaches_the_database(
    policy: Policy, tmp_path: Path
) -> None:
    store = SqliteKeyStore(tmp_path / "keygate.db")
    await store.open()
    try:
        created = await key_rules.create_key(
            store, {"name": "etl", "roles": ["1int-admin"]}, policy, "admin", NOW
        )
        stored = await store.get_key(created.row.id)
        assert stored is not None
        assert stored == created.row
        assert stored.digest == keys.digest(created.secret)
        assert key_json(stored, NOW)["status"] == "active"
    finally:
        await store.close()
    secret = created.secret.encode()
    for file in tmp_path.iterdir():
        assert secret not in file.read_bytes(), file.name


# --------------------------------------------------------------------- grants


def test_check_grants() -> None:
    check_grants(["a", "b"], None)  # may grant everything
    check_grants(["a"], frozenset({"a", "b"}))
    check_grants([], frozenset())
    with pytest.raises(GrantError, match="b, c") as refused:
        check_grants(["a", "c", "b"], frozenset({"a"}))
    assert refused.value.roles == ("b", "c")
    with pytest.raises(GrantError, match="a"):
        check_grants(["a"], frozenset())


def test_a_grant_refusal_is_not_a_file_permission_error() -> None:
    # The CLI and the admin API must tell "you may not grant" from an OS permission error.
    with pytest.raises(GrantError) as refused:
        check_grants(["x"], frozenset())
    assert not isinstance(refused.value, OSError)


def test_an_unknown_role_suggests_the_nearest_defined_one(policy: Policy) -> None:
    with pytest.raises(InputError, match=r"unknown role\(s\): 1int-sesions-read \(did you mean "):
        validate_roles(["1int-sesions-read"], policy)
