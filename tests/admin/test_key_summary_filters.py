"""The keys' summary line and the key list's role and creator filters (kept across cursors)."""

from __future__ import annotations

import time
from typing import Any

from support.stores import new_key
from test_admin_api import (
    KEYS,
    LIMITED,
    ROOT,
    WRITE,
    Client,
    assert_documented,
    create,
    expect,
    expect_error,
)

from gateway.runtime.context import Runtime

DAY = 86400.0


async def summary(client: Client, **params: str) -> dict[str, Any]:
    body = await expect(await client.get(f"{KEYS}/summary", params=params, headers=ROOT), 200)
    assert_documented(f"{KEYS}/summary", "get", 200, body)
    return dict(body)


async def test_summary_counts_keys_by_state(client: Client, runtime: Runtime) -> None:
    assert await summary(client) == {
        "total": 0,
        "active": 0,
        "revoked": 0,
        "expired": 0,
        "expiring": 0,
        "unused": 0,
        "unused_days": 30,
    }
    made = {name: (await create(client, name))["key"]["id"] for name in ("a", "b", "c", "old")}
    await expect(await client.post(f"{KEYS}/{made['b']}/revoke", headers=WRITE), 200)
    soon = {"expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + DAY))}
    await expect(await client.patch(f"{KEYS}/{made['c']}", json=soon, headers=WRITE), 200)
    await runtime.store.create_key(new_key("gone", expires_at=time.time() - 1), "test")
    # 'old' was last used 40 days ago: unused for 30 days, not for 50.
    await runtime.store.record_usage({made["old"]: (time.time() - 40 * DAY, 1)})
    got = await summary(client)
    assert got == {
        "total": 5,
        "active": 3,
        "revoked": 1,
        "expired": 1,
        "expiring": 1,
        "unused": 1,
        "unused_days": 30,
    }
    assert (await summary(client, unused_days="50"))["unused"] == 0
    # The list filtered to the unused keys shows the keys counted, page by page.
    assert await names(client, unused_days="30") == ["old"]
    assert await names(client, unused_days="50") == []
    assert await names(client, unused_days="30", sort="-last_used_at") == ["old"]
    for bad in ("0", "x", "3651"):
        answer = await client.get(KEYS, params={"unused_days": bad}, headers=ROOT)
        await expect_error(answer, 400, "invalid_request", "unused_days")
    for bad in ("0", "x", "-3", "3651", "1e3"):
        answer = await client.get(f"{KEYS}/summary", params={"unused_days": bad}, headers=ROOT)
        await expect_error(answer, 400, "invalid_request", "unused_days")
    answer = await client.get(f"{KEYS}/summary", params={"days": "3"}, headers=ROOT)
    await expect_error(answer, 400, "invalid_request", "days")
    # A key named like the action is still reached by its id.
    named = await create(client, "summary")
    got = await expect(await client.get(f"{KEYS}/{named['key']['id']}", headers=ROOT), 200)
    assert got["name"] == "summary"


async def names(client: Client, **params: str) -> list[str]:
    """Every key name of a listing, page by page (limit 1: a cursor per key)."""
    found: list[str] = []
    cursor = None
    while True:
        page_params = {**params, "limit": "1", **({"cursor": cursor} if cursor else {})}
        body = await expect(await client.get(KEYS, params=page_params, headers=ROOT), 200)
        found += [item["name"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return found


async def test_list_filters_by_role_and_creator_across_pages(client: Client) -> None:
    await create(client, "r1", ["reader"])
    await create(client, "w1", ["writer"])
    await create(client, "r2", ["reader", "operator"])
    await create(client, "l1", ["reader"], auth=LIMITED)
    await create(client, "o1", ["operator"])
    assert await names(client, role="reader") == ["r1", "r2", "l1"]
    # Includes are not resolved: writer includes reader, but w1 holds writer only.
    assert await names(client, role="writer") == ["w1"]
    assert await names(client, role="reader", sort="-name") == ["r2", "r1", "l1"]
    who = await expect(await client.get(f"{KEYS}/l1", headers=ROOT), 200)
    limited = who["created_by"]
    assert (
        limited != (await expect(await client.get(f"{KEYS}/r1", headers=ROOT), 200))["created_by"]
    )
    assert await names(client, created_by=limited) == ["l1"]
    assert await names(client, created_by=limited.upper()) == []  # exact, not folded
    root_made = await names(client, role="operator", sort="created_at")
    assert root_made == ["r2", "o1"]
    assert await names(client, role="reader", created_by=limited, q="l") == ["l1"]
    assert await names(client, role="reader", status="revoked") == []
    assert await names(client, role="no-such-role") == []
    answer = await client.get(KEYS, params={"role": "x" * 1001}, headers=ROOT)
    await expect_error(answer, 400, "invalid_request", "role")
    answer = await client.get(KEYS, params={"created_by": "a\x01b"}, headers=ROOT)
    await expect_error(answer, 400, "invalid_request", "created_by")
