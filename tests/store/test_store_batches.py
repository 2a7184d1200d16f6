"""Batch ids, reinstating one revoke-all and chosen-keys batches on both store backends."""

from __future__ import annotations

import time

import pytest
from support.stores import new_key

from gateway.store.base import (
    KeyChanges,
    KeyExpiredError,
    KeyStore,
    NotFoundError,
    OutsideGrantsError,
)

ACTOR = "alice"


async def names_by_status(store: KeyStore) -> dict[str, str]:
    return {row.name: row.status for row in await store.list_keys()}


async def test_reinstate_of_a_revoke_all_batch(backend_store: KeyStore) -> None:
    store = backend_store
    cause = await store.create_key(new_key("cause", ("reader",)), ACTOR)
    await store.create_key(new_key("a", ("reader",)), ACTOR)
    await store.create_key(new_key("op", ("operator",)), ACTOR)
    await store.set_revoked(cause.id, True, ACTOR)
    assert await store.last_revoke_all() is None
    with pytest.raises(NotFoundError):
        await store.reinstate_all(ACTOR, None, "last")
    revoked = await store.revoke_all(ACTOR)
    assert (revoked.changed, revoked.skipped, len(revoked.batch_id)) == (2, 0, 32)
    last = await store.last_revoke_all()
    assert last is not None and last[0] == revoked.batch_id and len(last[1]) == 2
    counts = await store.batch_counts(frozenset({"reader"}))
    assert counts["reinstate_last_revoke_all"][:2] == (1, 1)
    done = await store.reinstate_all(ACTOR, frozenset({"reader"}), revoked.batch_id)
    assert (done.changed, done.skipped) == (1, 1) and done.batch_id != revoked.batch_id
    assert await names_by_status(store) == {"cause": "revoked", "a": "active", "op": "revoked"}
    with pytest.raises(NotFoundError):
        await store.reinstate_all(ACTOR, None, "f" * 32)
    audit = [e for e in await store.list_audit() if e.action == "reinstate_all"]
    assert audit[0].details["of_batch"] == revoked.batch_id
    assert audit[0].details["batch_id"] == done.batch_id


async def test_chosen_keys_all_or_none(backend_store: KeyStore) -> None:
    store = backend_store
    a = await store.create_key(new_key("a", ("reader",)), ACTOR)
    b = await store.create_key(new_key("b", ("reader",)), ACTOR)
    op = await store.create_key(new_key("op", ("operator",)), ACTOR)
    old = await store.create_key(new_key("old", ("reader",), expires_at=time.time() + 1), ACTOR)
    with pytest.raises(OutsideGrantsError):
        await store.batch_keys("revoke", [a.id, op.id], ACTOR, frozenset({"reader"}))
    with pytest.raises(NotFoundError):
        await store.batch_keys("revoke", [a.id, 10**9], ACTOR)
    assert set((await names_by_status(store)).values()) == {"active"}
    done = await store.batch_keys("revoke", [a.id, b.id, old.id], ACTOR)
    assert (done.changed, done.skipped) == (3, 0)
    entries = [e for e in await store.list_audit() if e.action == "revoke"]
    assert {e.details["batch_id"] for e in entries} == {done.batch_id}
    assert sorted(e.key_id or 0 for e in entries) == sorted([a.id, b.id, old.id])
    await store.update_key(old.id, KeyChanges(expires_at=time.time() - 1), ACTOR)
    with pytest.raises(KeyExpiredError):
        await store.batch_keys("reinstate", [a.id, old.id], ACTOR)
    assert (await names_by_status(store))["a"] == "revoked"
    deleted = await store.batch_keys("delete", [a.id, b.id], ACTOR)
    assert deleted.changed == 2
    assert set(await names_by_status(store)) == {"op", "old"}
