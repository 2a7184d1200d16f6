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


async def test_audit_text_matches_the_decoded_details(store: KeyStore) -> None:
    # Details are stored as JSON with non-ASCII, quotes and backslashes escaped; the text
    # filter matches the values as written, not their escapes.
    await store.append_audit(
        "local:a", "edit", 1, "zk", {"after": {"description": "Zürich-export"}}
    )
    await store.append_audit("local:a", "edit", 2, "jp", {"after": {"description": "日本 team 🔑"}})
    await store.append_audit("local:a", "edit", 3, "quoted", {"note": 'say "hi"'})
    await store.append_audit("local:a", "edit", 4, "backslash", {"path": "C:\\temp"})
    await store.append_audit("local:a", "edit", 5, "literal", {"note": "\\u00fc as typed"})

    async def names(text: str) -> list[str | None]:
        return sorted(e.key_name or "" for e in await store.list_audit(text=text))

    assert await names("Zürich") == ["zk"]
    assert await names("ZüRICH-EXPORT") == ["zk"]  # ASCII letters still folded
    assert await names("ZÜRICH") == []  # and only ASCII ones, on both backends
    assert await names("日本") == ["jp"]
    assert await names("日本 TEAM") == ["jp"]
    assert await names("🔑") == ["jp"]  # outside the BMP: stored as a surrogate pair
    assert await names('say "hi"') == ["quoted"]
    assert await names('"hi"') == ["quoted"]
    assert await names("C:\\temp") == ["backslash"]
    assert await names("\\") == ["backslash", "literal"]
    # The escaped form typed literally finds the text that holds it, not the character.
    assert await names("\\u00fc") == ["literal"]
    assert await names("\\u00FC AS") == ["literal"]
    # The key name and the actor hold plain text: matched as typed.
    await store.append_audit("local:Zoë", "identify", None, 'Zürich "q" \\', {})
    assert await names('zürich "Q" \\') == ['Zürich "q" \\']
    assert await names("local:zoë") == ['Zürich "q" \\']
