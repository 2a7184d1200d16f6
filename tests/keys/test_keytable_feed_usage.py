"""Behaviour of the in-memory key table, the change-feed follower and the usage counter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from support.stores import fill_table, load_table_from

from gateway.keys import keyformat as keys
from gateway.keys.feed import FeedFollower, catch_up
from gateway.keys.table import KeyTable
from gateway.keys.usage import (
    ADDRESSES_KEPT,
    ADDRESSES_PER_KEY_HOUR,
    UsageCounter,
    prune_usage_periodically,
)
from gateway.policy.rules import policy_from_data
from gateway.store.base import (
    Change,
    KeyRow,
    KeyStatus,
    NewKey,
    RuleUse,
    SeenAddress,
    UsageHour,
)
from gateway.store.sqlite import SqliteKeyStore

# Upper bound, in seconds, for a change made by another store instance to reach the table.
FEED_BOUND = 1.0


def row(
    key_id: int,
    *,
    roles: tuple[str, ...] = ("reader",),
    status: KeyStatus = "active",
    name: str | None = None,
    expires_at: float | None = None,
) -> KeyRow:
    return KeyRow(
        id=key_id,
        name=name or f"key-{key_id}",
        description="",
        roles=roles,
        status=status,
        digest=digest_of(key_id),
        prefix="kg_xxxxxxx",
        created_at=1.0,
        created_by="admin",
        updated_at=1.0,
        revoked_at=None,
        expires_at=expires_at,
        last_used_at=None,
        use_count=0,
    )


def digest_of(key_id: int) -> bytes:
    return key_id.to_bytes(32, "big")


# --------------------------------------------------------------------- KeyTable


def test_load_replaces_the_whole_table() -> None:
    table = KeyTable()
    assert len(table) == 0
    assert table.seq == 0
    fill_table(table, [row(1), row(2, status="revoked", expires_at=5.0)], 10)
    assert len(table) == 2
    assert table.seq == 10
    first, second = table.lookup(digest_of(1)), table.lookup(digest_of(2))
    assert first is not None
    assert second is not None
    assert (first.id, first.name, first.revoked, first.expires_at) == (1, "key-1", False, None)
    assert (second.revoked, second.expires_at) == (True, 5.0)
    assert first.roles == frozenset({"reader"})
    fill_table(table, [row(3)], 12)
    assert table.lookup(digest_of(1)) is None
    assert table.lookup(digest_of(3)) is not None
    assert (len(table), table.seq) == (1, 12)


def test_put_and_drop() -> None:
    table = KeyTable()
    table.put(row(1))
    table.put(row(1, name="renamed", status="revoked"))
    record = table.lookup(digest_of(1))
    assert record is not None
    assert (record.name, record.revoked) == ("renamed", True)
    assert len(table) == 1
    table.drop(digest_of(1))
    table.drop(digest_of(1))  # already gone: fine
    table.drop(digest_of(99))
    assert table.lookup(digest_of(1)) is None
    assert len(table) == 0
    assert table.seq == 0  # own writes do not move the feed position


def test_apply_follows_sequence_and_deletes() -> None:
    table = KeyTable()
    fill_table(table, [row(1), row(2)], 5)
    applied = table.apply(
        [
            Change(3, digest_of(1), None),  # older than the table: ignored
            Change(5, digest_of(2), None),  # already reflected: ignored
            Change(6, digest_of(3), row(3)),
            Change(7, digest_of(1), row(1, status="revoked")),
            Change(8, digest_of(2), None),
        ]
    )
    assert applied == 3
    assert table.seq == 8
    assert table.lookup(digest_of(2)) is None
    assert table.lookup(digest_of(3)) is not None
    one = table.lookup(digest_of(1))
    assert one is not None
    assert one.revoked
    assert table.apply([Change(8, digest_of(3), None), Change(2, digest_of(3), None)]) == 0
    assert table.lookup(digest_of(3)) is not None
    assert table.seq == 8


def test_role_sets_are_interned() -> None:
    table = KeyTable()
    fill_table(table, [row(1, roles=("a", "b")), row(2, roles=tuple(["a", "b"]))], 1)
    table.put(row(3, roles=tuple("ab")))
    records = [table.lookup(digest_of(i)) for i in (1, 2, 3)]
    assert all(record is not None for record in records)
    roles = [record.roles for record in records if record is not None]
    assert roles[0] == frozenset({"a", "b"})
    assert roles[0] is roles[1] is roles[2]
    other = table.lookup(digest_of(1))
    table.put(row(4, roles=("c",)))
    fourth = table.lookup(digest_of(4))
    assert other is not None
    assert fourth is not None
    assert fourth.roles is not other.roles


def test_loader_swaps_in_a_whole_table_only_when_finished() -> None:
    table = KeyTable()
    fill_table(table, [row(1)], 4)
    loader = table.loader()
    loader.add([(digest_of(2), 2, "two", ("a", "b"), "active", None, None, None, None)])
    loader.add([(digest_of(3), 3, "three", ("a", "b"), "revoked", 9.0, None, None, None)])
    assert table.lookup(digest_of(2)) is None  # still the old table
    assert (len(table), table.seq) == (1, 4)
    loader.finish(11)
    assert table.lookup(digest_of(1)) is None
    assert (len(table), table.seq) == (2, 11)
    two, three = table.lookup(digest_of(2)), table.lookup(digest_of(3))
    assert two is not None
    assert three is not None
    assert (two.id, two.name, two.revoked, two.expires_at) == (2, "two", False, None)
    assert (three.revoked, three.expires_at) == (True, 9.0)
    assert two.roles is three.roles == frozenset({"a", "b"})
    table.put(row(4, roles=("a", "b")))
    four = table.lookup(digest_of(4))
    assert four is not None
    assert four.roles is two.roles


# --------------------------------------------------------------------- UsageCounter


def test_usage_counter_counts_and_take_clears() -> None:
    counter = UsageCounter()
    assert counter.take() == {}
    counter.record(1, 100.0)
    counter.record(1, 101.5)
    counter.record(2, 100.2)
    counter.record(1, 102.0)
    assert counter.take() == {1: (102.0, 3), 2: (100.2, 1)}
    assert counter.take() == {}


class FailingStore:
    """Failure injection only: record_usage fails, after a request slipped in meanwhile."""

    def __init__(self, counter: UsageCounter) -> None:
        self.counter = counter
        self.calls: list[dict[int, tuple[float, int]]] = []
        self.hours: list[list[UsageHour]] = []

    async def record_usage(
        self,
        usage: dict[int, tuple[float, int]],
        hours: Sequence[UsageHour] = (),
        rules: Sequence[RuleUse] = (),
        addresses: Sequence[SeenAddress] = (),
    ) -> None:
        self.calls.append(dict(usage))
        self.hours.append(list(hours))
        self.counter.record(1, 50.0)  # a use recorded while the write is in flight
        self.counter.record(3, 60.0)
        raise ConnectionError("database is away")


async def test_failed_flush_merges_counts_back() -> None:
    counter = UsageCounter()
    counter.record(1, 100.0)
    counter.record(1, 110.0)
    counter.record(2, 90.0)
    store = FailingStore(counter)
    with pytest.raises(ConnectionError):
        await counter.flush(store)  # type: ignore[arg-type]
    assert store.calls == [{1: (110.0, 2), 2: (90.0, 1)}]
    # Nothing lost, nothing double counted, the latest time kept.
    assert counter.take() == {1: (110.0, 3), 2: (90.0, 1), 3: (60.0, 1)}
    # The hourly counts too (all in hour 0: moments under 3600 s).
    assert sorted(counter.take_hours(), key=lambda h: h.key_id) == [
        UsageHour(1, 0, forwarded=3),
        UsageHour(2, 0, forwarded=1),
        UsageHour(3, 0, forwarded=1),
    ]


def test_hourly_counts_split_by_hour_and_outcome() -> None:
    counter = UsageCounter()
    counter.record(1, 3599.0, "10.0.0.1")
    counter.record(1, 3600.0, "10.0.0.1")  # the next hour: the address is new there
    counter.refused(1, 3700.0, limited=False, address="10.0.0.2")
    counter.refused(1, 3701.0, limited=True, address="10.0.0.1")
    counter.upstream_error(1, 3702.0)
    counter.record(2, 3650.0, None)
    assert sorted(counter.take_hours(), key=lambda h: (h.key_id, h.hour)) == [
        UsageHour(1, 0, forwarded=1, addresses=1),
        UsageHour(1, 1, forwarded=1, denied=1, limited=1, upstream_errors=1, addresses=2),
        UsageHour(2, 1, forwarded=1),
    ]
    assert counter.take_hours() == []


def test_an_address_counts_once_per_hour_across_flushes() -> None:
    counter = UsageCounter()
    counter.record(1, 7200.0, "10.0.0.1")
    assert counter.take_hours() == [UsageHour(1, 2, forwarded=1, addresses=1)]
    counter.record(1, 7300.0, "10.0.0.1")  # seen this hour before the flush: not new
    counter.record(1, 7301.0, "10.0.0.3")
    assert counter.take_hours() == [UsageHour(1, 2, forwarded=2, addresses=1)]


def test_distinct_addresses_saturate_at_the_cap() -> None:
    counter = UsageCounter()
    for n in range(ADDRESSES_PER_KEY_HOUR + 5):
        counter.record(1, 10.0, f"10.1.{n // 256}.{n % 256}")
    counter.record(1, 10.0, "10.1.0.0")  # already counted
    [row] = counter.take_hours()
    assert row.forwarded == ADDRESSES_PER_KEY_HOUR + 6
    assert row.addresses == ADDRESSES_PER_KEY_HOUR and row.addresses_capped


def test_address_sets_of_old_hours_are_forgotten() -> None:
    counter = UsageCounter()
    counter.record(1, 0.0, "10.0.0.1")
    counter.record(1, 3 * 3600.0, "10.0.0.1")
    counter.take_hours()
    assert [row.hour for row in counter.take_hours()] == []
    counter.record(1, 3 * 3600.0 + 5, "10.0.0.1")  # still known in hour 3: not new
    counter.record(1, 0.0 + 5, "10.0.0.1")  # hour 0 was forgotten: counted again
    assert sorted((r.hour, r.addresses) for r in counter.take_hours()) == [(0, 1), (3, 0)]


async def test_empty_flush_does_not_call_the_store() -> None:
    counter = UsageCounter()
    store = FailingStore(counter)
    await counter.flush(store)  # type: ignore[arg-type]
    assert store.calls == []


# --------------------------------------------------------------------- with a real SQLite store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "keygate.db"


@contextlib.asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SqliteKeyStore]:
    store = SqliteKeyStore(path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def new_key(name: str, roles: tuple[str, ...] = ("reader",)) -> tuple[NewKey, str]:
    secret = keys.generate_key()
    return (
        NewKey(
            name=name,
            description="",
            roles=roles,
            digest=keys.digest(secret),
            prefix=keys.display_prefix(secret),
        ),
        secret,
    )


async def eventually(check: Callable[[], bool], bound: float = FEED_BOUND) -> float:
    """Wait until `check()` holds; return how long it took; fail after `bound` seconds."""
    start = time.monotonic()
    while not check():
        elapsed = time.monotonic() - start
        assert elapsed < bound, f"not reached within {bound} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_usage_flush_writes_to_the_store(db_path: Path) -> None:
    async with opened(db_path) as store:
        new, _ = new_key("counted")
        created = await store.create_key(new, "admin")
        counter = UsageCounter()
        for moment in (1000.0, 1001.0, 1002.0):
            counter.record(created.id, moment)
        await counter.flush(store)
        counter.record(created.id, 1003.0)
        await counter.flush(store)
        stored = await store.get_key(created.id)
        assert stored is not None
        assert (stored.use_count, stored.last_used_at) == (4, 1003.0)
        assert counter.take() == {}
        assert await store.usage_hours(created.id, 0, 10) == [UsageHour(created.id, 0, forwarded=4)]


async def test_usage_run_flushes_once_more_when_cancelled(db_path: Path) -> None:
    async with opened(db_path) as store:
        new, _ = new_key("counted")
        created = await store.create_key(new, "admin")
        counter = UsageCounter()
        task = asyncio.create_task(counter.run(store, interval=3600))
        await asyncio.sleep(0)
        counter.record(created.id, 1234.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stored = await store.get_key(created.id)
        assert stored is not None
        assert (stored.use_count, stored.last_used_at) == (1, 1234.0)


async def test_cold_load_from_the_store_matches_the_full_rows(db_path: Path) -> None:
    async with opened(db_path) as store:
        secrets = []
        for index in range(5):
            new, secret = new_key(f"k{index}", ("reader",) if index % 2 else ("reader", "writer"))
            created = await store.create_key(new, "admin")
            secrets.append(secret)
            if index == 3:
                await store.set_revoked(created.id, True, "admin")
        full = KeyTable()
        fill_table(full, await store.list_keys(), await store.current_seq())
        lean = KeyTable()
        loader = lean.loader()
        loader.finish(await store.load_auth(loader.add))
        assert lean.seq == full.seq == await store.current_seq()
        assert len(lean) == len(full) == 5
        for secret in secrets:
            a, b = lean.lookup(keys.digest(secret)), full.lookup(keys.digest(secret))
            assert a is not None
            assert b is not None
            assert (a.id, a.name, a.roles, a.revoked, a.expires_at) == (
                b.id,
                b.name,
                b.roles,
                b.revoked,
                b.expires_at,
            )


async def test_catch_up_applies_another_writers_changes(db_path: Path) -> None:
    async with opened(db_path) as mine, opened(db_path) as theirs:
        table = KeyTable()
        await load_table_from(mine, table)
        new, secret = new_key("elsewhere")
        created = await theirs.create_key(new, "cli:ops")
        await theirs.set_revoked(created.id, True, "cli:ops")
        assert table.lookup(keys.digest(secret)) is None
        assert await catch_up(mine, table) == 2
        record = table.lookup(keys.digest(secret))
        assert record is not None
        assert record.revoked
        assert table.seq == await theirs.current_seq()
        assert await catch_up(mine, table) == 0


async def test_follower_picks_up_another_stores_writes_within_a_second(db_path: Path) -> None:
    async with opened(db_path) as mine, opened(db_path) as theirs:
        table = KeyTable()
        await load_table_from(mine, table)
        follower = FeedFollower(mine, table, poll_interval=0.1)
        task = asyncio.create_task(follower.run())
        try:
            new, secret = new_key("ci-bot", ("reader", "writer"))
            digest = keys.digest(secret)
            created = await theirs.create_key(new, "cli:ops")
            await eventually(lambda: table.lookup(digest) is not None)
            record = table.lookup(digest)
            assert record is not None
            assert (record.name, record.roles) == ("ci-bot", frozenset({"reader", "writer"}))

            await theirs.set_revoked(created.id, True, "cli:ops")
            await eventually(lambda: getattr(table.lookup(digest), "revoked", False))

            await theirs.set_revoked(created.id, False, "cli:ops")
            await eventually(lambda: not getattr(table.lookup(digest), "revoked", True))

            await theirs.delete_key(created.id, "cli:ops")
            await eventually(lambda: table.lookup(digest) is None)
            assert table.seq == await theirs.current_seq()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_wake_catches_up_without_waiting_for_the_poll(db_path: Path) -> None:
    async with opened(db_path) as mine, opened(db_path) as theirs:
        table = KeyTable()
        follower = FeedFollower(mine, table, poll_interval=3600)
        task = asyncio.create_task(follower.run())
        try:
            first, first_secret = new_key("before")
            await theirs.create_key(first, "cli:ops")
            follower.wake()
            await eventually(lambda: table.lookup(keys.digest(first_secret)) is not None)
            # The follower has caught up and now sleeps for an hour unless woken.
            new, secret = new_key("woken")
            await theirs.create_key(new, "cli:ops")
            await asyncio.sleep(0.1)
            assert table.lookup(keys.digest(secret)) is None
            follower.wake()
            await eventually(lambda: table.lookup(keys.digest(secret)) is not None)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_follower_survives_store_errors(db_path: Path) -> None:
    async with opened(db_path) as mine, opened(db_path) as theirs:
        table = KeyTable()
        follower = FeedFollower(mine, table, poll_interval=0.02)
        task = asyncio.create_task(follower.run())
        try:
            await mine.close()  # every poll now fails
            new, secret = new_key("after-outage")
            await theirs.create_key(new, "cli:ops")
            await asyncio.sleep(0.1)
            assert not task.done()
            assert table.lookup(keys.digest(secret)) is None
            await mine.open()
            await eventually(lambda: table.lookup(keys.digest(secret)) is not None)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_usage_is_pruned_on_schedule(db_path: Path) -> None:
    async with opened(db_path) as store:
        new, _ = new_key("pruned")
        created = await store.create_key(new, "admin")
        this_hour = int(time.time()) // 3600
        kept_from = this_hour - 2 * 24  # keep_days=2
        hours = [UsageHour(created.id, h, forwarded=1) for h in range(kept_from - 3, kept_from + 3)]
        await store.record_usage({}, hours)
        task = asyncio.create_task(prune_usage_periodically(store, 2, 0.05))
        try:
            start = time.monotonic()
            while len(await store.usage_hours(created.id, 0, this_hour)) != 3:
                assert time.monotonic() - start < FEED_BOUND, "not pruned in time"
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = await store.usage_hours(created.id, 0, this_hour)
        assert [row.hour for row in left] == [kept_from, kept_from + 1, kept_from + 2]


async def test_rule_uses_and_addresses_are_counted_and_put_back_on_failure() -> None:
    policy = policy_from_data({"roles": {"r": {"allow": ["GET /a/**", "POST,PUT /b"]}}}, "<t>")
    matcher = policy.matcher_for(frozenset({"r"}))
    get_a, put_b = matcher.allowing("GET", "/a/x"), matcher.allowing("PUT", "/b")
    assert get_a is not None and put_b is not None
    counter = UsageCounter()
    day = 86400.0 * 20_000
    counter.record(1, day + 1, "10.0.0.1", get_a)
    counter.record(1, day + 2, "10.0.0.2", get_a)
    counter.record(1, day + 3, "10.0.0.1", put_b)
    counter.record(1, day + 86400, None, get_a)  # the next day
    counter.refused(1, day + 4, limited=False, address="10.0.0.3")
    store = FailingStore(counter)
    with pytest.raises(ConnectionError):
        await counter.flush(store)  # type: ignore[arg-type]
    assert sorted(counter.take_rules(), key=lambda r: (r.day, r.methods)) == [
        RuleUse(1, 20_000, "r", "GET", "/a/**", 2, day + 2),
        RuleUse(1, 20_000, "r", "POST,PUT", "/b", 1, day + 3),
        RuleUse(1, 20_001, "r", "GET", "/a/**", 1, day + 86400),
    ]
    assert sorted(counter.take_addresses(), key=lambda a: a.last_seen_at) == [
        SeenAddress(1, "10.0.0.2", day + 2),
        SeenAddress(1, "10.0.0.1", day + 3),
        SeenAddress(1, "10.0.0.3", day + 4),
    ]


def test_the_addresses_kept_in_memory_are_bounded() -> None:
    counter = UsageCounter()
    for n in range(1000):
        counter.record(7, float(n), f"10.0.{n // 256}.{n % 256}")
    seen = counter.take_addresses()
    assert len(seen) == ADDRESSES_KEPT
    assert [s.last_seen_at for s in seen] == [float(n) for n in range(1000 - ADDRESSES_KEPT, 1000)]
    assert len(counter._recent) == 0
