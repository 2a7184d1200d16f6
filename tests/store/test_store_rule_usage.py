"""Usage per key, day and policy rule, the last client addresses, and the keys' summary, run
against every backend: additive flushes from two stores (two instances), reads, trims, pruning."""

from __future__ import annotations

import asyncio

import pytest
from support.stores import new_key

from gateway.store.base import KeyStore, RuleTotal, RuleUse, SeenAddress

ACTOR = "alice"
DAY = 20_000  # a day number (unix seconds // 86400)


@pytest.fixture
def store(backend_store: KeyStore) -> KeyStore:
    """An open store of the backend under test, on a fresh database."""
    return backend_store


@pytest.fixture
def other(backend_other: KeyStore) -> KeyStore:
    """A second store on the same database, standing in for another instance."""
    return backend_other


async def test_rule_counts_from_two_stores_add_up(store: KeyStore, other: KeyStore) -> None:
    a = await store.create_key(new_key("rules-a"), ACTOR)
    b = await store.create_key(new_key("rules-b"), ACTOR)
    at = DAY * 86400.0
    first = [
        RuleUse(a.id, DAY, "reader", "GET", "/items/**", 5, at + 10),
        RuleUse(a.id, DAY, "writer", "POST,PUT", "/items/*", 1, at + 20),
        RuleUse(b.id, DAY, "reader", "GET", "/items/**", 7, at + 5),
    ]
    second = [
        RuleUse(a.id, DAY, "reader", "GET", "/items/**", 3, at + 30),
        RuleUse(a.id, DAY + 1, "reader", "GET", "/items/**", 4, at + 86400 + 1),
    ]
    await asyncio.gather(
        store.record_usage({}, (), first),
        other.record_usage({}, (), second),
    )
    assert await store.rule_totals(a.id, DAY) == [
        RuleTotal("reader", "GET", "/items/**", 12, at + 86400 + 1),
        RuleTotal("writer", "POST,PUT", "/items/*", 1, at + 20),
    ]
    # Only the days from first_day count; another key's rows are its own.
    assert await other.rule_totals(a.id, DAY + 1) == [
        RuleTotal("reader", "GET", "/items/**", 4, at + 86400 + 1)
    ]
    assert await store.rule_totals(b.id, DAY) == [
        RuleTotal("reader", "GET", "/items/**", 7, at + 5)
    ]
    assert await store.rule_totals(a.id, DAY + 2) == []


async def test_addresses_keep_the_latest_time_newest_first(
    store: KeyStore, other: KeyStore
) -> None:
    a = await store.create_key(new_key("addresses-a"), ACTOR)
    await asyncio.gather(
        store.record_usage({}, addresses=[SeenAddress(a.id, "10.0.0.1", 100.0)]),
        other.record_usage(
            {}, addresses=[SeenAddress(a.id, "10.0.0.1", 50.0), SeenAddress(a.id, "::1", 70.0)]
        ),
    )
    assert await store.seen_addresses(a.id, 20) == [
        SeenAddress(a.id, "10.0.0.1", 100.0),
        SeenAddress(a.id, "::1", 70.0),
    ]
    assert await store.seen_addresses(a.id, 1) == [SeenAddress(a.id, "10.0.0.1", 100.0)]


async def test_trim_keeps_each_keys_newest_addresses(store: KeyStore) -> None:
    a = await store.create_key(new_key("trim-a"), ACTOR)
    b = await store.create_key(new_key("trim-b"), ACTOR)
    seen = [SeenAddress(a.id, f"10.0.0.{n}", float(n)) for n in range(1, 8)]
    seen += [SeenAddress(b.id, f"10.1.0.{n}", float(n)) for n in range(1, 4)]
    await store.record_usage({}, addresses=seen)
    assert await store.trim_addresses([a.id], 3) == 4
    assert [s.address for s in await store.seen_addresses(a.id, 20)] == [
        "10.0.0.7",
        "10.0.0.6",
        "10.0.0.5",
    ]
    assert len(await store.seen_addresses(b.id, 20)) == 3  # not named: untouched
    assert await store.trim_addresses([], 3) == 0


async def test_prune_drops_old_days_and_addresses_and_trims(store: KeyStore) -> None:
    a = await store.create_key(new_key("prune-rules"), ACTOR)
    await store.record_usage(
        {},
        rules=[
            RuleUse(a.id, DAY - 1, "reader", "GET", "/a", 1, 1.0),
            RuleUse(a.id, DAY, "reader", "GET", "/a", 2, DAY * 86400.0),
        ],
        addresses=[
            SeenAddress(a.id, "10.0.0.1", DAY * 86400.0 - 1),  # before the cut: pruned
            *(SeenAddress(a.id, f"10.0.1.{n}", DAY * 86400.0 + n) for n in range(5)),
        ],
    )
    pruned = await store.prune_usage(DAY * 24, addresses_kept=2)
    assert pruned == 1 + 1 + 3
    assert await store.rule_totals(a.id, 0) == [RuleTotal("reader", "GET", "/a", 2, DAY * 86400.0)]
    assert [s.address for s in await store.seen_addresses(a.id, 20)] == [
        "10.0.1.4",
        "10.0.1.3",
    ]


async def test_a_replacing_import_forgets_rules_and_addresses(store: KeyStore) -> None:
    a = await store.create_key(new_key("rules-replaced"), ACTOR)
    await store.record_usage(
        {},
        rules=[RuleUse(a.id, DAY, "reader", "GET", "/a", 1, 1.0)],
        addresses=[SeenAddress(a.id, "10.0.0.1", 1.0)],
    )
    await store.import_contents(await store.export_contents(), replace=True)
    assert await store.rule_totals(a.id, 0) == []
    assert await store.seen_addresses(a.id, 20) == []


async def test_key_summary_counts_by_state(store: KeyStore) -> None:
    now = 2_000_000_000.0
    day = 86400.0
    fresh = await store.create_key(new_key("sum-fresh"), ACTOR)  # created now: not unused
    used = await store.create_key(new_key("sum-used"), ACTOR)
    stale = await store.create_key(new_key("sum-stale"), ACTOR)
    revoked = await store.create_key(new_key("sum-revoked"), ACTOR)
    await store.create_key(new_key("sum-expired", expires_at=now - 1), ACTOR)
    await store.create_key(new_key("sum-expiring", expires_at=now + 2 * day), ACTOR)
    await store.set_revoked(revoked.id, True, ACTOR)
    await store.record_usage({used.id: (now - day, 1), stale.id: (now - 40 * day, 1)})
    created = fresh.created_at
    # Unused since 30 days before now: stale (last used 40 days ago). The never-used keys
    # were created at `created` (the real clock, long before 2033): unused too.
    summary = await store.key_summary(now, 7 * day, now - 30 * day)
    assert created < now - 30 * day
    assert summary.total == 6
    assert summary.revoked == 1
    assert summary.expired == 1
    assert summary.expiring == 1
    assert summary.active == 4  # fresh, used, stale, expiring
    assert summary.unused == 3  # fresh and expiring (never used, created long ago), stale
    # A cut-off before every creation: only keys used before it count (none).
    early = await store.key_summary(now, 7 * day, created - 1)
    assert early.unused == 0


async def test_list_keys_by_role_and_creator(store: KeyStore) -> None:
    await store.create_key(new_key("by-role-a", roles=("reader",)), "local:alice")
    await store.create_key(new_key("by-role-b", roles=("writer", "reader")), "local:bob")
    await store.create_key(new_key("by-role-c", roles=("writer",)), "local:alice")
    await store.create_key(new_key("by-role-d", roles=("reader_x",)), "local:alice")

    async def listed(**filters: str) -> list[str]:
        return [row.name for row in await store.list_keys(**filters)]  # type: ignore[arg-type]

    assert await listed(role="reader") == ["by-role-a", "by-role-b"]  # exact, not a prefix
    assert await listed(role="writer", created_by="local:alice") == ["by-role-c"]
    assert await listed(created_by="local:bob") == ["by-role-b"]
    assert await listed(created_by="local:") == []
    assert await listed(role="read%") == []
    first = await store.list_keys(role="reader", limit=1)
    rest = await store.list_keys(role="reader", limit=5, after_id=first[0].id)
    assert [row.name for row in first + rest] == ["by-role-a", "by-role-b"]
    by_name = await store.list_keys(role="reader", sort="-name", limit=1)
    after = await store.list_keys(
        role="reader", sort="-name", after=(by_name[0].name, by_name[0].id), limit=5
    )
    assert [row.name for row in by_name + after] == ["by-role-b", "by-role-a"]
