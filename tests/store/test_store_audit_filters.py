"""Audit listing filters on every backend: actions, until, partial text (LIKE wildcards as
plain characters, ASCII case folded) over key name, actor and details."""

from __future__ import annotations

import pytest

from gateway.store.base import KeyStore


@pytest.fixture
def store(backend_store: KeyStore) -> KeyStore:
    """An open store of the backend under test, on a fresh database."""
    return backend_store


async def test_audit_filters(store: KeyStore) -> None:
    await store.append_audit("local:Alice", "identify", 1, "pct%off", {"n": 1})
    await store.append_audit("local:bob", "admin_add", None, "pctXoff", {"n": 2})
    await store.append_audit("local:carol", "identify", 2, "under_score", {"note": "Big_Deal"})
    events = await store.list_audit()
    assert [e.key_name for e in events] == ["under_score", "pctXoff", "pct%off"]

    async def names(**filters: object) -> list[str | None]:
        return [e.key_name for e in await store.list_audit(**filters)]  # type: ignore[arg-type]

    assert await names(actions=["identify"]) == ["under_score", "pct%off"]
    assert await names(actions=["identify", "admin_add"]) == ["under_score", "pctXoff", "pct%off"]
    assert await names(actions=[]) == []
    assert await names(text="PCT%") == ["pct%off"]
    assert await names(text="r_s") == ["under_score"]
    assert await names(text="alice") == ["pct%off"]  # the actor, case folded
    assert await names(text="big_deal") == ["under_score"]  # the details JSON
    assert await names(text="\\") == []
    middle = events[1].at
    assert await names(until=middle) == ["pctXoff", "pct%off"]
    assert await names(since=middle, until=middle) == ["pctXoff"]
    assert await names(text="pct", actions=["admin_add"], until=middle) == ["pctXoff"]
