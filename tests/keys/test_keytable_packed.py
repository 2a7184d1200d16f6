"""The key table's packed records: prefix collisions, record layouts, and a model check."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.examples import scaled

from gateway.keys import table as keytable
from gateway.keys.rules import NAME_MAX_LENGTH
from gateway.keys.table import PREFIX_BYTES, CachedKey, KeyTable, previous_record
from gateway.ratelimit.limiters import RateLimit
from gateway.store.base import AuthRow, Change, KeyRow, KeyStatus

PREFIX = b"\x42" * PREFIX_BYTES
REST_SIZE = 32 - PREFIX_BYTES
# Three digests with one prefix: the second differs from the first only in its last byte.
FIRST = PREFIX + b"\x01" * REST_SIZE
SECOND = PREFIX + b"\x01" * (REST_SIZE - 1) + b"\x02"
THIRD = PREFIX + b"\x03" * REST_SIZE
LIMIT = RateLimit(10, "second", 20)


def row(
    digest: bytes,
    key_id: int = 1,
    *,
    name: str | None = None,
    roles: tuple[str, ...] = ("reader",),
    status: KeyStatus = "active",
    expires_at: float | None = None,
    rate_limit: RateLimit | None = None,
    previous_digest: bytes | None = None,
    previous_expires_at: float | None = None,
) -> KeyRow:
    return KeyRow(
        id=key_id,
        name=f"key-{key_id}" if name is None else name,
        description="",
        roles=roles,
        status=status,
        digest=digest,
        prefix="kg_xxxxxxx",
        created_at=1.0,
        created_by="admin",
        updated_at=1.0,
        revoked_at=None,
        expires_at=expires_at,
        last_used_at=None,
        use_count=0,
        previous_digest=previous_digest,
        previous_expires_at=previous_expires_at,
        rate_limit=rate_limit,
    )


def auth_row(key: KeyRow) -> AuthRow:
    return (
        key.digest,
        key.id,
        key.name,
        key.roles,
        key.status,
        key.expires_at,
        key.previous_digest,
        key.previous_expires_at,
        key.rate_limit,
    )


def load(table: KeyTable, rows: list[KeyRow], seq: int = 1) -> None:
    loader = table.loader()
    loader.add(auth_row(r) for r in rows)
    loader.finish(seq)


Fields = tuple[int, str, frozenset[str], bool, float | None, float | None, RateLimit | None]


def fields(record: CachedKey | None) -> Fields | None:
    if record is None:
        return None
    return (
        record.id,
        record.name,
        record.roles,
        record.revoked,
        record.expires_at,
        record.rolled_until,
        record.rate_limit,
    )


def found(table: KeyTable, digest: bytes) -> CachedKey:
    record = table.lookup(digest)
    assert record is not None
    return record


# --------------------------------------------------------------------- prefix collisions


@pytest.mark.parametrize("loaded", [False, True], ids=["put", "loader"])
def test_digests_sharing_a_prefix_are_told_apart(loaded: bool) -> None:
    table = KeyTable()
    rows = [row(FIRST, 1), row(SECOND, 2), row(THIRD, 3)]
    if loaded:
        load(table, rows)
    else:
        for r in rows:
            table.put(r)
    assert len(table) == 3
    assert [found(table, d).id for d in (FIRST, SECOND, THIRD)] == [1, 2, 3]


def test_a_digest_matching_the_prefix_but_not_the_rest_is_refused() -> None:
    table = KeyTable()
    table.put(row(FIRST))
    assert table.lookup(SECOND) is None
    assert table.lookup(PREFIX + bytes(REST_SIZE)) is None
    assert table.lookup(b"\x43" + FIRST[1:]) is None  # same rest, other prefix
    assert table.find(keytable.probe(FIRST)) is not None


def test_dropping_the_prefix_holder_keeps_the_colliding_digests() -> None:
    table = KeyTable()
    for key_id, digest in enumerate((FIRST, SECOND, THIRD), 1):
        table.put(row(digest, key_id))
    table.drop(FIRST)
    assert table.lookup(FIRST) is None
    assert (found(table, SECOND).id, found(table, THIRD).id) == (2, 3)
    table.drop(THIRD)
    assert table.lookup(THIRD) is None
    assert found(table, SECOND).id == 2
    table.put(row(FIRST, 4))
    assert (found(table, FIRST).id, found(table, SECOND).id) == (4, 2)
    table.drop(SECOND)
    table.drop(SECOND)
    assert (len(table), found(table, FIRST).id) == (1, 4)


def test_a_colliding_digest_can_be_replaced_in_place() -> None:
    table = KeyTable()
    table.put(row(FIRST, 1))
    table.put(row(SECOND, 2))
    table.put(row(SECOND, 2, status="revoked"))
    assert found(table, SECOND).revoked
    assert not found(table, FIRST).revoked
    assert len(table) == 2


# --------------------------------------------------------------------- records stay current


def test_a_revocation_after_a_cached_decode_is_seen_at_once() -> None:
    table = KeyTable()
    table.put(row(FIRST))
    assert not found(table, FIRST).revoked
    assert not found(table, FIRST).revoked  # now decoded from the cache
    table.put(row(FIRST, status="revoked"))
    assert found(table, FIRST).revoked
    table.apply([Change(1, FIRST, row(FIRST))])
    assert not found(table, FIRST).revoked
    table.apply([Change(2, FIRST, row(FIRST, roles=("writer",)))])
    assert found(table, FIRST).roles == frozenset({"writer"})


def test_drop_then_put_again() -> None:
    table = KeyTable()
    table.put(row(FIRST))
    found(table, FIRST)
    table.drop(FIRST)
    assert table.lookup(FIRST) is None
    table.put(row(FIRST, 7))
    assert found(table, FIRST).id == 7


def test_a_rolled_keys_old_secret() -> None:
    table = KeyTable()
    table.put(
        row(
            SECOND,
            9,
            expires_at=500.0,
            rate_limit=LIMIT,
            previous_digest=FIRST,
            previous_expires_at=100.0,
        )
    )
    new, old = found(table, SECOND), found(table, FIRST)
    assert fields(new) == (9, "key-9", frozenset({"reader"}), False, 500.0, None, LIMIT)
    assert fields(old) == (9, "key-9", frozenset({"reader"}), False, 100.0, 100.0, LIMIT)
    assert len(table) == 2
    # A second roll: the feed drops the first old digest and puts the row with the next one.
    table.apply([Change(1, FIRST, None), Change(2, SECOND, row(THIRD, 9, previous_digest=SECOND))])
    assert table.lookup(FIRST) is None
    assert found(table, SECOND).rolled_until == 0.0
    assert found(table, THIRD).rolled_until is None
    assert len(table) == 2


# --------------------------------------------------------------------- field values


@pytest.mark.parametrize(
    "name",
    [
        "x",
        "ключ-производство",
        "鍵🔑",
        "x" * NAME_MAX_LENGTH,
        "🔑" * NAME_MAX_LENGTH,
        "lone-\udc80-surrogate",
    ],
)
def test_names_round_trip(name: str) -> None:
    table = KeyTable()
    table.put(row(FIRST, name=name))
    load_table = KeyTable()
    load(load_table, [row(FIRST, name=name)])
    assert found(table, FIRST).name == name
    assert found(load_table, FIRST).name == name


@pytest.mark.parametrize("expires_at", [None, 0.0, 1_700_000_000.25, -5.0])
@pytest.mark.parametrize("rate_limit", [None, LIMIT])
@pytest.mark.parametrize("key_id", [1, 2**32 - 1, 2**32, 2**62])
@pytest.mark.parametrize("status", ["active", "revoked"])
def test_fields_round_trip_in_every_layout(
    expires_at: float | None, rate_limit: RateLimit | None, key_id: int, status: KeyStatus
) -> None:
    key = row(FIRST, key_id, status=status, expires_at=expires_at, rate_limit=rate_limit, name="n")
    wanted = (key_id, "n", frozenset({"reader"}), status == "revoked", expires_at, None, rate_limit)
    put_table, loaded_table = KeyTable(), KeyTable()
    put_table.put(key)
    load(loaded_table, [key])
    assert fields(put_table.lookup(FIRST)) == wanted
    assert fields(loaded_table.lookup(FIRST)) == wanted


def test_many_role_sets_and_limits_use_the_wide_layout() -> None:
    table = KeyTable()
    count = 2**16 + 10
    for index in range(count):
        digest = index.to_bytes(32, "big")
        limit = RateLimit(index + 1, "minute", index + 1)
        table.put(row(digest, index, roles=(f"role-{index}",), rate_limit=limit))
    for index in (0, 2**16 - 1, 2**16, count - 1):
        record = found(table, index.to_bytes(32, "big"))
        assert record.roles == frozenset({f"role-{index}"})
        assert record.rate_limit == RateLimit(index + 1, "minute", index + 1)


# --------------------------------------------------------------------- replace


def test_replace_with_other_role_sets_never_shows_the_old_ones() -> None:
    table = KeyTable()
    load(table, [row(FIRST, 1, roles=("a",)), row(SECOND, 2, roles=("b",))])
    assert found(table, FIRST).roles == frozenset({"a"})
    assert found(table, SECOND).roles == frozenset({"b"})
    # The same keys, loaded in another order: each role set gets the other's index.
    load(table, [row(SECOND, 2, roles=("b",)), row(FIRST, 1, roles=("a",))], seq=2)
    assert found(table, FIRST).roles == frozenset({"a"})
    assert found(table, SECOND).roles == frozenset({"b"})
    load(table, [row(FIRST, 1, roles=("c", "d"), rate_limit=LIMIT)], seq=3)
    assert found(table, FIRST).roles == frozenset({"c", "d"})
    assert found(table, FIRST).rate_limit == LIMIT
    assert table.lookup(SECOND) is None
    table.put(row(SECOND, 2, roles=("c", "d")))
    assert found(table, SECOND).roles is found(table, FIRST).roles


# --------------------------------------------------------------------- model check

# Few digests, several per prefix and rests that differ late, so collisions are common.
DIGESTS = [
    bytes([p]) * PREFIX_BYTES + bytes([r]) * (REST_SIZE - 1) + bytes([last])
    for p in (1, 2)
    for r in (1, 2)
    for last in (1, 2)
]
digests = st.sampled_from(DIGESTS)
key_rows = st.builds(
    row,
    digests,
    st.integers(0, 2**40),
    name=st.text(max_size=NAME_MAX_LENGTH),
    roles=st.sampled_from([("a",), ("b",), ("a", "b"), ("b", "a"), ()]),
    status=st.sampled_from(["active", "revoked"]),
    expires_at=st.none() | st.floats(allow_nan=False),
    rate_limit=st.none() | st.sampled_from([LIMIT, RateLimit(1, "hour", 1)]),
    previous_digest=st.none() | digests,
    previous_expires_at=st.none() | st.floats(allow_nan=False),
)
operations = st.one_of(
    st.tuples(st.just("put"), key_rows),
    st.tuples(st.just("drop"), digests),
    st.tuples(st.just("apply"), st.lists(st.tuples(digests, st.none() | key_rows), max_size=4)),
    st.tuples(st.just("replace"), st.lists(key_rows, max_size=6)),
    st.tuples(st.just("lookup"), digests),
)


def model_put(model: dict[bytes, Fields], key: KeyRow) -> None:
    """What the table of one Python object per digest did: the specification."""
    roles = frozenset(key.roles)
    revoked = key.status == "revoked"
    current = CachedKey(key.id, key.name, roles, revoked, key.expires_at, None, key.rate_limit)
    model[key.digest] = fields(current)  # type: ignore[assignment]
    if key.previous_digest is not None:
        old = previous_record(current, key.previous_expires_at)
        model[key.previous_digest] = fields(old)  # type: ignore[assignment]


@settings(max_examples=scaled(300), deadline=None)
@given(st.lists(operations, max_size=30))
def test_the_table_answers_like_a_dict_of_records(ops: list[tuple[str, Any]]) -> None:
    table, model = KeyTable(), {}
    seq = 0
    for op, argument in ops:
        if op == "put":
            table.put(argument)
            model_put(model, argument)
        elif op == "drop":
            table.drop(argument)
            model.pop(argument, None)
        elif op == "apply":
            changes = []
            for digest, changed in argument:
                seq += 1
                if changed is not None:
                    digest = changed.digest
                changes.append(Change(seq, digest, changed))
            assert table.apply(changes) == len(changes)
            for change in changes:
                if change.row is None:
                    model.pop(change.digest, None)
                else:
                    model_put(model, change.row)
        elif op == "replace":
            seq += 1
            load(table, argument, seq)
            model = {}
            for key in argument:
                model_put(model, dataclasses.replace(key))
        else:
            fields(table.lookup(argument))  # warms the decode cache
        assert len(table) == len(model)
        for digest in DIGESTS:
            assert fields(table.lookup(digest)) == model.get(digest)
