"""Safe batch actions: batch ids in answers and audit, reinstating one revoke-all, chosen keys."""

from __future__ import annotations

from typing import Any

from test_admin_api import (
    KEYS,
    LIMITED,
    ROOT,
    WRITE,
    Client,
    assert_documented,
    counts,
    create,
    expect,
    expect_error,
    lookup,
)

from gateway.admin.models import BATCH_IDS_MAX
from gateway.runtime.context import Runtime

LIMITED_WRITE = {**LIMITED, "Content-Type": "application/json"}


async def keys(client: Client, *names: str, roles: list[str] | None = None) -> dict[str, Any]:
    """Create keys; return {name: {"id", "secret"}}."""
    made = {}
    for name in names:
        body = await create(client, name, roles)
        made[name] = {"id": body["key"]["id"], "secret": body["secret"]}
    return made


async def statuses(runtime: Runtime) -> dict[str, str]:
    return {row.name: row.status for row in await runtime.store.list_keys()}


async def audit(client: Client, **params: str) -> list[dict[str, Any]]:
    body = await expect(await client.get("/api/v1/audit", params=params, headers=ROOT), 200)
    return list(body["items"])


async def test_reinstate_last_revoke_all_leaves_keys_revoked_for_cause(
    client: Client, runtime: Runtime
) -> None:
    made = await keys(client, "for-cause", "a", "b")
    cause = made["for-cause"]["id"]
    await expect(await client.post(f"{KEYS}/{cause}/revoke", headers=WRITE), 200)
    revoked = await expect(await client.post(f"{KEYS}/revoke-all", headers=WRITE), 200)
    assert counts(revoked) == {"count": 2, "skipped": 0}
    preview = await expect(await client.get(f"{KEYS}/batch-counts", headers=ROOT), 200)
    assert preview["reinstate_last_revoke_all"] == {"count": 2, "skipped": 0}
    assert preview["reinstate_all"] == {"count": 3, "skipped": 0}

    body = {"scope": "last_revoke_all"}
    answer = await client.post(f"{KEYS}/reinstate-all", json=body, headers=WRITE)
    done = await expect(answer, 200)
    assert_documented("/api/v1/keys/reinstate-all", "post", 200, done)
    assert counts(done, "batch") == {"count": 2, "skipped": 0}
    assert done["batch_id"] != revoked["batch_id"]
    assert await statuses(runtime) == {"for-cause": "revoked", "a": "active", "b": "active"}
    assert not lookup(runtime, made["a"]["secret"]).revoked
    assert lookup(runtime, made["for-cause"]["secret"]).revoked
    # The audit entries carry each batch's id; the reinstate names the batch it undid.
    entries = {e["action"]: e["details"] for e in await audit(client) if e["key_id"] is None}
    assert entries["revoke_all"]["batch_id"] == revoked["batch_id"]
    assert entries["reinstate_all"]["batch_id"] == done["batch_id"]
    assert entries["reinstate_all"]["scope"] == "batch"
    assert entries["reinstate_all"]["of_batch"] == revoked["batch_id"]
    # Done again: nothing left of that batch to reinstate.
    again = await client.post(f"{KEYS}/reinstate-all", json=body, headers=WRITE)
    assert counts(await expect(again, 200), "batch") == {"count": 0, "skipped": 0}
    # "all" (the default, named as such) still brings back every revoked key.
    everything = await client.post(f"{KEYS}/reinstate-all", json={"scope": "all"}, headers=WRITE)
    assert counts(await expect(everything, 200)) == {"count": 1, "skipped": 0}


async def test_reinstate_a_named_batch_not_the_latest(client: Client, runtime: Runtime) -> None:
    await keys(client, "first")
    first = await expect(await client.post(f"{KEYS}/revoke-all", headers=WRITE), 200)
    await keys(client, "second")
    # "first" is revoked already: the second revoke-all revokes "second" only.
    second = await expect(await client.post(f"{KEYS}/revoke-all", headers=WRITE), 200)
    assert counts(second) == {"count": 1, "skipped": 0}
    answer = await client.post(
        f"{KEYS}/reinstate-all", json={"batch": first["batch_id"]}, headers=WRITE
    )
    assert counts(await expect(answer, 200), "batch") == {"count": 1, "skipped": 0}
    assert await statuses(runtime) == {"first": "active", "second": "revoked"}


async def test_reinstate_batch_refusals(client: Client, runtime: Runtime) -> None:
    await keys(client, "k")
    # No revoke-all yet: 404, nothing changes.
    answer = await client.post(
        f"{KEYS}/reinstate-all", json={"scope": "last_revoke_all"}, headers=WRITE
    )
    await expect_error(answer, 404, "not_found")
    await expect(await client.post(f"{KEYS}/revoke-all", headers=WRITE), 200)
    unknown = await client.post(f"{KEYS}/reinstate-all", json={"batch": "0" * 32}, headers=WRITE)
    await expect_error(unknown, 404, "not_found")
    for bad in ({"batch": "not-hex"}, {"batch": "%"}, {"scope": "some"}, {"batch": 7}):
        answer = await client.post(f"{KEYS}/reinstate-all", json=bad, headers=WRITE)
        await expect_error(answer, 400, "invalid_request")
    both = {"batch": "a" * 32, "scope": "all"}
    answer = await client.post(f"{KEYS}/reinstate-all", json=both, headers=WRITE)
    await expect_error(answer, 400, "invalid_request", "scope")
    assert await statuses(runtime) == {"k": "revoked"}


async def test_reinstate_last_batch_stays_within_the_grants(
    client: Client, runtime: Runtime
) -> None:
    await keys(client, "read-1", "read-2")
    await keys(client, "op", roles=["operator"])
    await expect(await client.post(f"{KEYS}/revoke-all", headers=WRITE), 200)
    preview = await expect(await client.get(f"{KEYS}/batch-counts", headers=LIMITED), 200)
    assert preview["reinstate_last_revoke_all"] == {"count": 2, "skipped": 1}
    answer = await client.post(
        f"{KEYS}/reinstate-all", json={"scope": "last_revoke_all"}, headers=LIMITED_WRITE
    )
    assert counts(await expect(answer, 200), "batch") == {"count": 2, "skipped": 1}
    assert await statuses(runtime) == {"read-1": "active", "read-2": "active", "op": "revoked"}


async def test_chosen_keys_batch_one_audit_entry_per_key(client: Client, runtime: Runtime) -> None:
    made = await keys(client, "a", "b", "c", "d")
    ids = [made[n]["id"] for n in ("a", "b", "c")]
    answer = await client.post(
        f"{KEYS}/batch", json={"action": "revoke", "ids": ids}, headers=WRITE
    )
    done = await expect(answer, 200)
    assert_documented("/api/v1/keys/batch", "post", 200, done)
    assert counts(done, "chosen") == {"count": 3, "skipped": 0}
    assert await statuses(runtime) == {
        "a": "revoked",
        "b": "revoked",
        "c": "revoked",
        "d": "active",
    }
    assert lookup(runtime, made["a"]["secret"]).revoked  # at once, not at the next poll
    entries = [e for e in await audit(client) if e["action"] == "revoke"]
    assert sorted(e["key_id"] for e in entries) == sorted(ids)
    assert {e["details"]["batch_id"] for e in entries} == {done["batch_id"]}
    assert all(e["details"]["batch_size"] == 3 for e in entries)

    # Reinstate two of them plus an active one: the active one is skipped, not an error.
    answer = await client.post(
        f"{KEYS}/batch",
        json={"action": "reinstate", "ids": [ids[0], ids[1], made["d"]["id"]]},
        headers=WRITE,
    )
    assert counts(await expect(answer, 200), "chosen") == {"count": 2, "skipped": 1}
    answer = await client.post(
        f"{KEYS}/batch", json={"action": "delete", "ids": [ids[2], made["d"]["id"]]}, headers=WRITE
    )
    deleted = await expect(answer, 200)
    assert counts(deleted, "chosen") == {"count": 2, "skipped": 0}
    assert await statuses(runtime) == {"a": "active", "b": "active"}
    assert lookup(runtime, made["d"]["secret"]) is None
    gone = [e for e in await audit(client) if e["action"] == "delete"]
    assert {e["details"]["batch_id"] for e in gone} == {deleted["batch_id"]}
    assert sorted(e["key_name"] for e in gone) == ["c", "d"]


async def test_chosen_keys_batch_is_all_or_none_within_the_grants(
    client: Client, runtime: Runtime
) -> None:
    made = await keys(client, "r1", "r2")
    op = (await keys(client, "op", roles=["operator"]))["op"]["id"]
    chosen = [made["r1"]["id"], made["r2"]["id"], op]
    answer = await client.post(
        f"{KEYS}/batch", json={"action": "revoke", "ids": chosen}, headers=LIMITED_WRITE
    )
    await expect_error(answer, 403, "grant_forbidden")
    assert set((await statuses(runtime)).values()) == {"active"}  # nothing changed
    missing = [made["r1"]["id"], 999_999]
    answer = await client.post(
        f"{KEYS}/batch", json={"action": "delete", "ids": missing}, headers=WRITE
    )
    await expect_error(answer, 404, "not_found")
    assert len(await statuses(runtime)) == 3
    # Within the grants it works for the limited admin.
    answer = await client.post(
        f"{KEYS}/batch", json={"action": "revoke", "ids": chosen[:2]}, headers=LIMITED_WRITE
    )
    assert counts(await expect(answer, 200), "chosen") == {"count": 2, "skipped": 0}
    assert [e for e in await audit(client) if e["action"] == "revoke" and e["key_id"] == op] == []


async def test_chosen_keys_batch_bounds(client: Client, runtime: Runtime) -> None:
    made = await keys(client, "a")
    key = made["a"]["id"]
    too_many = list(range(1, BATCH_IDS_MAX + 2))
    for bad in (
        {"action": "revoke", "ids": []},
        {"action": "revoke", "ids": too_many},
        {"action": "roll", "ids": [key]},
        {"action": "revoke", "ids": [0]},
        {"action": "revoke", "ids": ["1"]},
        {"action": "revoke"},
        {"ids": [key]},
    ):
        answer = await client.post(f"{KEYS}/batch", json=bad, headers=WRITE)
        await expect_error(answer, 400, "invalid_request")
    extra = {"action": "revoke", "ids": [key], "extra": 1}
    answer = await client.post(f"{KEYS}/batch", json=extra, headers=WRITE)
    await expect_error(answer, 400, "unknown_field", "extra")
    # The limit itself is accepted (ids that do not exist: 404, not a size refusal).
    at_limit = list(range(key, key + BATCH_IDS_MAX))
    answer = await client.post(
        f"{KEYS}/batch", json={"action": "revoke", "ids": at_limit}, headers=WRITE
    )
    await expect_error(answer, 404, "not_found")
    # Repeated ids count once.
    answer = await client.post(
        f"{KEYS}/batch", json={"action": "revoke", "ids": [key, key]}, headers=WRITE
    )
    assert counts(await expect(answer, 200), "chosen") == {"count": 1, "skipped": 0}
    assert await statuses(runtime) == {"a": "revoked"}
