"""Behaviour of authentication (credential extraction, key check) and authorization."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support.fixed_keys import fixed_key
from support.stores import fill_table

import gateway
from gateway.keys import keyformat as keys
from gateway.keys.table import CachedKey, KeyTable, Probe
from gateway.policy.rules import Policy, load_policy, policy_from_data
from gateway.proxy import auth as auth_module
from gateway.proxy.auth import authenticate, authorize
from gateway.proxy.credentials import Credential, extract_credential
from gateway.proxy.refusals import (
    CREDENTIAL_CONFLICT,
    FORBIDDEN,
    KEY_EXPIRED,
    KEY_MALFORMED,
    KEY_MISSING,
    KEY_REVOKED,
    KEY_ROLLED,
    KEY_UNKNOWN,
    PROTECTED,
    Refusal,
)
from gateway.proxy.target import decoded_path
from gateway.store.base import KeyRow, KeyStatus

EXAMPLE = Path(gateway.__file__).resolve().parent / "examples" / "policy.yaml"
NOW = 1_800_000_000.0
KEY = fixed_key("auth")
OTHER_KEY = fixed_key("auth-other")
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"
BASIC = "Basic YWRtaW46YWRtaW4="


class CountingTable(KeyTable):
    """A real KeyTable that counts lookups, to prove garbage never reaches the table."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def find(self, probe: Probe) -> CachedKey | None:
        self.lookups += 1
        return super().find(probe)


def row(
    secret: str,
    key_id: int = 1,
    *,
    name: str = "ci-bot",
    roles: tuple[str, ...] = ("1int-user",),
    status: KeyStatus = "active",
    expires_at: float | None = None,
) -> KeyRow:
    return KeyRow(
        id=key_id,
        name=name,
        description="",
        roles=roles,
        status=status,
        digest=keys.digest(secret),
        prefix=keys.display_prefix(secret),
        created_at=NOW - 100,
        created_by="admin",
        updated_at=NOW - 100,
        revoked_at=NOW - 50 if status == "revoked" else None,
        expires_at=expires_at,
        last_used_at=None,
        use_count=0,
    )


@pytest.fixture(scope="module")
def shipped() -> Policy:
    return load_policy(EXAMPLE)


# --------------------------------------------------------------------- extract_credential


def test_x_api_key_header() -> None:
    assert extract_credential([KEY], []) == Credential(KEY, False)
    assert extract_credential([f"  {KEY} "], []) == Credential(KEY, False)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "ApiKey", "apikey", "APIKEY"])
def test_key_in_authorization_with_either_scheme(scheme: str) -> None:
    assert extract_credential([], [f"{scheme} {KEY}"]) == Credential(KEY, True)


def test_backend_login_is_not_a_key() -> None:
    assert extract_credential([], [f"Bearer {JWT}"]) is None
    assert extract_credential([], [BASIC]) is None
    assert extract_credential([], []) is None
    assert extract_credential([], ["Bearer"]) is None


@pytest.mark.parametrize(
    ("api_keys", "authorizations"),
    [
        ([KEY], [f"Bearer {OTHER_KEY}"]),
        ([KEY], [f"ApiKey {OTHER_KEY}"]),
        ([KEY, OTHER_KEY], []),
        ([KEY, KEY, OTHER_KEY], []),
        ([KEY, ""], []),
        ([KEY], [f"Bearer {JWT}"]),
        ([KEY], [BASIC]),
        ([], [f"Bearer {JWT}", f"Bearer {JWT}"]),
        ([], [f"Bearer {KEY}", BASIC]),
        ([], [f"Bearer {KEY}", f"Bearer {KEY}"]),
        ([KEY], [f"Bearer {KEY}", f"Bearer {KEY}"]),
    ],
)
def test_two_credentials_conflict(api_keys: list[str], authorizations: list[str]) -> None:
    assert extract_credential(api_keys, authorizations) is CREDENTIAL_CONFLICT


def test_the_same_key_twice_is_one_credential() -> None:
    assert extract_credential([KEY, KEY], []) == Credential(KEY, False)
    assert extract_credential([KEY, f" {KEY}"], []) == Credential(KEY, False)
    # Sent in Authorization too: that header must not be forwarded, so it is reported.
    assert extract_credential([KEY], [f"Bearer {KEY}"]) == Credential(KEY, True)


@pytest.mark.parametrize(
    ("api_keys", "authorizations"),
    [([""], []), (["   "], []), ([""], [f"Bearer {JWT}"]), (["", ""], [])],
)
def test_empty_api_key_header_is_malformed(api_keys: list[str], authorizations: list[str]) -> None:
    assert extract_credential(api_keys, authorizations) is KEY_MALFORMED


def test_refusals_carry_status_code_and_challenge() -> None:
    assert CREDENTIAL_CONFLICT.status == 400
    assert not CREDENTIAL_CONFLICT.challenge
    for refusal in (KEY_MISSING, KEY_MALFORMED, KEY_UNKNOWN, KEY_REVOKED, KEY_EXPIRED):
        assert refusal.status == 401
        assert refusal.challenge
    codes = {r.code for r in (KEY_MISSING, KEY_MALFORMED, KEY_UNKNOWN, KEY_REVOKED, KEY_EXPIRED)}
    assert codes == {"key_missing", "key_malformed", "key_unknown", "key_revoked", "key_expired"}
    for refusal in (PROTECTED, FORBIDDEN):
        assert refusal.status == 403
        assert not refusal.challenge


# --------------------------------------------------------------------- authenticate


@pytest.mark.parametrize(
    "value",
    [
        KEY[:-1] + ("A" if KEY[-1] != "A" else "B"),  # checksum mismatch
        KEY[:-1],
        KEY + "0",
        "kg_short",
        JWT,
        "",
        KEY.replace("kg_", "KG_"),
        KEY[:-1] + "\u00e9",
    ],
)
def test_malformed_keys_are_refused_without_a_lookup(value: str) -> None:
    table = CountingTable()
    fill_table(table, [row(KEY)], 1)
    assert authenticate(table, value, NOW) is KEY_MALFORMED
    assert table.lookups == 0


def test_unknown_key() -> None:
    table = CountingTable()
    fill_table(table, [row(KEY)], 1)
    assert authenticate(table, OTHER_KEY, NOW) is KEY_UNKNOWN
    assert table.lookups == 1


def test_revoked_key() -> None:
    table = KeyTable()
    fill_table(table, [row(KEY, status="revoked")], 1)
    assert authenticate(table, KEY, NOW) is KEY_REVOKED


def test_revoked_wins_over_expired() -> None:
    table = KeyTable()
    fill_table(table, [row(KEY, status="revoked", expires_at=NOW - 1)], 1)
    assert authenticate(table, KEY, NOW) is KEY_REVOKED


@pytest.mark.parametrize("expires_at", [NOW, NOW - 1, 0.0])
def test_expired_key(expires_at: float) -> None:
    table = KeyTable()
    fill_table(table, [row(KEY, expires_at=expires_at)], 1)
    assert authenticate(table, KEY, NOW) is KEY_EXPIRED


@pytest.mark.parametrize("expires_at", [None, NOW + 0.001, NOW + 86_400])
def test_active_key_is_accepted(expires_at: float | None) -> None:
    table = KeyTable()
    fill_table(table, [row(KEY, 7, name="etl", roles=("1int-admin",), expires_at=expires_at)], 1)
    record = authenticate(table, KEY, NOW)
    assert isinstance(record, CachedKey)
    assert (record.id, record.name, record.roles) == (7, "etl", frozenset({"1int-admin"}))


# --------------------------------------------------------------------- authorize


def cached(*roles: str) -> CachedKey:
    return CachedKey(1, "k", frozenset(roles), False, None)


@pytest.mark.parametrize(
    "path",
    [
        "/1Integrate/rest/apikeys",
        "/1Integrate/rest/apikeys/1",
        "/1integrate/REST/ApiKeys/x",
        "/api/v1/keys",
        "/api/v1/keys/3/revoke",
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE"])
def test_protected_paths_are_refused_even_to_allow_everything(method: str, path: str) -> None:
    policy = policy_from_data(
        {"roles": {"god": {"allow": ["* /**"]}}, "protected": ["/1Integrate/rest/apikeys/**"]},
        "t",
    )
    assert authorize(policy, cached("god"), method, path) is PROTECTED


def test_shipped_policy_decisions(shipped: Policy) -> None:
    user, admin = cached("1int-user"), cached("1int-admin")
    assert authorize(shipped, user, "GET", "/1Integrate/rest/sessions/s1") is None
    assert authorize(shipped, user, "PUT", "/1Integrate/rest/rules/r1") is FORBIDDEN
    assert authorize(shipped, admin, "PUT", "/1Integrate/rest/rules/r1") is None
    assert authorize(shipped, admin, "GET", "/1Integrate/rest/apikeys") is PROTECTED
    assert authorize(shipped, cached(), "GET", "/1Integrate/rest/sessions/s1") is FORBIDDEN
    assert authorize(shipped, cached("no-such-role"), "GET", "/1Integrate/rest/sessions") is (
        FORBIDDEN
    )


def test_encoded_protected_segment_is_still_protected(shipped: Policy) -> None:
    path = decoded_path("/1Integrate/rest/%61pikeys/1")
    assert authorize(shipped, cached("1int-admin"), "DELETE", path) is PROTECTED


def test_refusal_is_a_value_object() -> None:
    assert Refusal(403, "forbidden", FORBIDDEN.message) == FORBIDDEN


def test_recent_digest_cache_never_caches_the_decision() -> None:
    table = CountingTable()
    fill_table(table, [row(KEY)], 1)
    assert isinstance(authenticate(table, KEY, NOW), CachedKey)
    assert isinstance(authenticate(table, KEY, NOW), CachedKey)
    fill_table(table, [row(KEY, status="revoked")], 2)
    assert authenticate(table, KEY, NOW) is KEY_REVOKED  # the very next request sees it
    fill_table(table, [], 3)
    assert authenticate(table, KEY, NOW) is KEY_UNKNOWN
    assert table.lookups == 4  # one table lookup per request, cached digest or not


def test_recent_digest_cache_holds_only_well_formed_keys_and_stays_bounded() -> None:
    table = KeyTable()
    bad = KEY[:-1] + ("A" if KEY[-1] != "A" else "B")
    auth_module.probe_of.cache_clear()
    assert authenticate(table, bad, NOW) is KEY_MALFORMED
    assert auth_module.probe_of.cache_info().currsize == 0
    for _ in range(auth_module.RECENT_DIGESTS_LIMIT + 10):
        authenticate(table, keys.generate_key(), NOW)
    assert auth_module.probe_of.cache_info().currsize <= auth_module.RECENT_DIGESTS_LIMIT


# --------------------------------------------------------------------- rolled keys


def rolled_table(
    old: str, new: str, until: float, *, expires_at: float | None = None, revoked: bool = False
) -> KeyTable:
    """A table holding one key rolled from `old` to `new`, the old secret working until `until`."""
    table = KeyTable()
    base = row(new, 9, name="rolled", status="revoked" if revoked else "active")
    table.put(
        dataclasses.replace(
            base,
            expires_at=expires_at,
            previous_digest=keys.digest(old),
            previous_expires_at=until,
            rolled_at=NOW - 10,
        )
    )
    return table


def test_both_secrets_of_a_rolled_key_work_during_the_overlap() -> None:
    old, new = keys.generate_key(), keys.generate_key()
    table = rolled_table(old, new, NOW + 60)
    for secret in (old, new):
        record = authenticate(table, secret, NOW)
        assert isinstance(record, CachedKey)
        assert (record.id, record.name) == (9, "rolled")


def test_the_old_secret_answers_key_rolled_once_the_overlap_ends() -> None:
    old, new = keys.generate_key(), keys.generate_key()
    table = rolled_table(old, new, NOW)
    assert authenticate(table, old, NOW) == KEY_ROLLED
    assert authenticate(table, old, NOW + 86_400) == KEY_ROLLED
    assert isinstance(authenticate(table, new, NOW + 86_400), CachedKey)


def test_a_rolled_key_that_expires_first_is_expired_on_both_secrets() -> None:
    old, new = keys.generate_key(), keys.generate_key()
    table = rolled_table(old, new, NOW + 60, expires_at=NOW + 30)
    assert authenticate(table, old, NOW + 40) == KEY_EXPIRED
    assert authenticate(table, new, NOW + 40) == KEY_EXPIRED


def test_revoking_a_rolled_key_revokes_both_secrets() -> None:
    old, new = keys.generate_key(), keys.generate_key()
    table = rolled_table(old, new, NOW + 60, revoked=True)
    assert authenticate(table, old, NOW) == KEY_REVOKED
    assert authenticate(table, new, NOW) == KEY_REVOKED
