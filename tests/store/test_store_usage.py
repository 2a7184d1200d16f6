"""Hourly usage rows, run against every backend: additive flushes from two stores, reads
bounded by hour, pruning."""

from __future__ import annotations

import asyncio

import pytest
from support.stores import new_key

from gateway.store.base import KeyStore, UsageHour

ACTOR = "alice"


@pytest.fixture
def store(backend_store: KeyStore) -> KeyStore:
    """An open store of the backend under test, on a fresh database."""
    return backend_store


@pytest.fixture
def other(backend_other: KeyStore) -> KeyStore:
    """A second store on the same database, standing in for another instance."""
    return backend_other


async def test_flushes_from_two_stores_add_up(store: KeyStore, other: KeyStore) -> None:
    a = await store.create_key(new_key("usage-a"), ACTOR)
    b = await store.create_key(new_key("usage-b"), ACTOR)
    first = [UsageHour(a.id, 500_000, 5, 1, 2, 1, 3), UsageHour(b.id, 500_000, forwarded=1)]
    second = [
        UsageHour(a.id, 500_000, 2, 0, 1, 0, 4, addresses_capped=True),
        UsageHour(a.id, 500_001, forwarded=9, addresses=1),
    ]
    await asyncio.gather(
        store.record_usage({a.id: (1000.0, 5), b.id: (900.0, 1)}, first),
        other.record_usage({a.id: (1100.0, 2)}, second),
    )
    await store.record_usage({}, [UsageHour(a.id, 500_000, denied=3)])  # hours alone
    rows = await store.usage_hours(a.id, 499_000, 501_000)
    assert rows == [
        UsageHour(a.id, 500_000, 7, 4, 3, 1, 7, addresses_capped=True),
        UsageHour(a.id, 500_001, 9, 0, 0, 0, 1, addresses_capped=False),
    ]
    assert await other.usage_hours(b.id, 500_000, 500_000) == [UsageHour(b.id, 500_000, 1)]
    got_a = await other.get_key(a.id)
    assert got_a is not None and got_a.use_count == 7


async def test_usage_hours_are_bounded_by_hour_and_key(store: KeyStore) -> None:
    a = await store.create_key(new_key("usage-range"), ACTOR)
    b = await store.create_key(new_key("usage-other"), ACTOR)
    hours = [UsageHour(a.id, hour, forwarded=hour - 99) for hour in range(100, 110)]
    await store.record_usage({}, [*hours, UsageHour(b.id, 105, forwarded=50)])
    got = await store.usage_hours(a.id, 103, 106)
    assert [(row.hour, row.forwarded) for row in got] == [(103, 4), (104, 5), (105, 6), (106, 7)]
    assert await store.usage_hours(a.id, 200, 300) == []
    assert await store.usage_hours(999_999, 0, 1_000) == []


async def test_prune_usage_deletes_only_older_hours(store: KeyStore, other: KeyStore) -> None:
    a = await store.create_key(new_key("usage-prune"), ACTOR)
    await store.record_usage({}, [UsageHour(a.id, hour, forwarded=1) for hour in range(10, 20)])
    assert await store.prune_usage(15) == 5
    assert await other.prune_usage(15) == 0
    assert [row.hour for row in await other.usage_hours(a.id, 0, 100)] == list(range(15, 20))


async def test_a_replacing_import_forgets_the_old_keys_usage(store: KeyStore) -> None:
    a = await store.create_key(new_key("usage-replaced"), ACTOR)
    await store.record_usage({}, [UsageHour(a.id, 100, forwarded=4)])
    contents = await store.export_contents()
    # The imported key keeps its id: the usage of the key it replaces must not become its own.
    await store.import_contents(contents, replace=True)
    assert await store.usage_hours(a.id, 0, 1_000) == []
