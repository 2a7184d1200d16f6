"""Issue 24.6 on the API: what an admin may manage (the store's own rule, in the key JSON) and
every problem of a key body at once."""

from __future__ import annotations

from test_admin_api import (
    KEYS,
    LIMITED,
    ROOT,
    Client,
    assert_documented,
    create,
    expect,
    expect_error,
)

LIMITED_WRITE = {**LIMITED, "Content-Type": "application/json"}


async def test_each_key_says_whether_the_caller_may_manage_it_as_the_store_decides(
    client: Client,
) -> None:
    mine = await create(client, "reader-key", ["reader"], auth=LIMITED)
    assert mine["key"]["can_manage"] is True and mine["key"]["outside_grants"] == []
    mixed = (await create(client, "mixed-key", ["reader", "writer", "operator"]))["key"]
    assert mixed["can_manage"] is True  # root may grant every role

    listed = await expect(await client.get(KEYS, headers=LIMITED), 200)
    assert_documented("/api/v1/keys", "get", 200, listed)
    by_name = {key["name"]: key for key in listed["items"]}
    assert by_name["reader-key"]["can_manage"] is True
    assert by_name["mixed-key"]["can_manage"] is False
    assert by_name["mixed-key"]["outside_grants"] == ["operator", "writer"]
    shown = await expect(await client.get(f"{KEYS}/{mixed['id']}", headers=LIMITED), 200)
    assert_documented("/api/v1/keys/{id}", "get", 200, shown)
    assert shown["outside_grants"] == ["operator", "writer"]

    # What the answer says cannot be managed is exactly what the store refuses, and the rest
    # is allowed.
    for method, path in (
        ("PATCH", ""),
        ("POST", "/roll"),
        ("POST", "/revoke"),
        ("POST", "/reinstate"),
        ("DELETE", ""),
    ):
        body = {"description": "x"} if method == "PATCH" else None
        resp = await client.request(
            method, f"{KEYS}/{mixed['id']}{path}", json=body, headers=LIMITED_WRITE
        )
        await expect_error(resp, 403, "grant_forbidden")
    edited = await client.patch(
        f"{KEYS}/{mine['key']['id']}", json={"description": "ok"}, headers=LIMITED_WRITE
    )
    assert (await expect(edited, 200))["can_manage"] is True
    root_view = await expect(await client.get(f"{KEYS}/{mixed['id']}", headers=ROOT), 200)
    assert root_view["can_manage"] is True and root_view["outside_grants"] == []


async def test_a_key_body_answers_every_problem_at_once_with_its_field(client: Client) -> None:
    resp = await client.post(
        KEYS,
        json={
            "name": " bad name ",
            "roles": ["no-such-role"],
            "expires_at": "2020-01-01T00:00:00Z",
            "rate_limit": {"requests": 0, "per": "minute"},
        },
        headers=ROOT,
    )
    error = await expect_error(resp, 400, "invalid_request", "name")
    assert_documented("/api/v1/keys", "post", 400, error)
    problems = {problem["field"]: problem["message"] for problem in error["problems"]}
    assert error["problems"][0] == {"field": "name", "message": error["message"]}
    assert set(problems) == {"name", "roles", "expires_at", "rate_limit"}
    assert "no-such-role" in problems["roles"]
    assert "future" in problems["expires_at"]
    assert "1 to 10^9" in problems["rate_limit"]

    # Missing members of a create are problems too; one problem is a list of one.
    resp = await client.post(KEYS, json={"description": "only this"}, headers=ROOT)
    error = await expect_error(resp, 400, "invalid_request")
    assert {problem["field"] for problem in error["problems"]} == {"name", "roles"}
    resp = await client.post(KEYS, json={"name": "x" * 500, "roles": ["reader"]}, headers=ROOT)
    error = await expect_error(resp, 400, "invalid_request", "name")
    assert [problem["field"] for problem in error["problems"]] == ["name"]

    key = (await create(client, "edit-target"))["key"]
    resp = await client.patch(
        f"{KEYS}/{key['id']}",
        json={"roles": [], "expires_at": "2020-01-01T00:00:00Z"},
        headers=ROOT,
    )
    error = await expect_error(resp, 400, "invalid_request")
    assert {problem["field"] for problem in error["problems"]} == {"roles", "expires_at"}
    assert_documented("/api/v1/keys/{id}", "patch", 400, error)

    # Not a value's problem: a name taken, roles outside the grants - no list.
    resp = await client.post(KEYS, json={"name": "edit-target", "roles": ["reader"]}, headers=ROOT)
    assert "problems" not in await expect_error(resp, 409, "name_conflict", "name")
    resp = await client.post(KEYS, json={"name": "up", "roles": ["writer"]}, headers=LIMITED)
    assert "problems" not in await expect_error(resp, 403, "grant_forbidden", "roles")
