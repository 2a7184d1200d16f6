"""Behaviour of the admin API on a real admin listener with a real SQLite store."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway.admin.app import create_admin_app
from gateway.admin.basic_auth import Authenticator
from gateway.admin.key_handlers import KEY_ACTIONS
from gateway.admin.openapi import openapi_document
from gateway.admin.parsing import (
    CURSOR_MAX_LENGTH,
    CURSOR_PATTERN,
    MAX_BODY_BYTES,
    encode_cursor,
    encode_sort_cursor,
)
from gateway.admin.passwords import hash_password
from gateway.admin.throttle import LoginThrottle
from gateway.keys import keyformat as keys
from gateway.keys.rules import NAME_MAX_LENGTH
from gateway.policy.rules import policy_from_data
from gateway.runtime.appkeys import RUNTIME
from gateway.runtime.context import Runtime
from gateway.settings import settings_from_data
from gateway.store.sqlite import SqliteKeyStore

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

TEST_COST = 2**4  # scrypt N for test accounts: fast, and the stored hash carries it
ROOT_PASSWORD = "root-password"
LIMITED_PASSWORD = "limited-password"
ROOT = {"Authorization": aiohttp.encode_basic_auth("root", ROOT_PASSWORD)}
LIMITED = {"Authorization": aiohttp.encode_basic_auth("limited", LIMITED_PASSWORD)}
# State-changing requests carry a JSON Content-Type, body or not (the CSRF rule).
WRITE = {**ROOT, "Content-Type": "application/json"}
KEYS = "/api/v1/keys"
REST = "/1Integrate/rest"
POLICY = policy_from_data(
    {
        "roles": {
            "reader": {
                "description": "Read sessions",
                "allow": [f"GET {REST}/sessions/**"],
            },
            "writer": {
                "description": "Write sessions",
                "include": ["reader"],
                "allow": [f"POST,PUT {REST}/sessions/**"],
            },
            "operator": {"description": "Everything", "allow": [f"* {REST}/**"]},
        },
        "protected": [f"{REST}/apikeys/**"],
    },
    "test-policy",
)


# Public: what the page offers before sign-in, and the OpenID Connect browser redirects.
PUBLIC_SIGN_IN_PATHS = (
    "/api/v1/session/methods",
    "/api/v1/session/oidc/start",
    "/api/v1/session/oidc/callback",
    "/api/v1/session/oidc/logout",
)


def future(days: int = 30) -> str:
    """Return an ISO-8601 UTC time `days` from now."""
    return (datetime.now(UTC) + timedelta(days=days)).isoformat().replace("+00:00", "Z")


async def make_runtime(tmp_path: Path, store_from: Path | None = None) -> Runtime:
    """Open a real SQLite store with two admins and build a Runtime on it.

    `store_from` is a fresh store file to start from (the `sqlite_template` fixture).
    """
    if store_from is not None:
        shutil.copyfile(store_from, tmp_path / "keygate.db")
    settings = settings_from_data(
        {"upstream": {"url": "http://127.0.0.1:9"}, "store": {"url": "sqlite:///keygate.db"}},
        tmp_path / "gateway.yaml",
        environ={},
    )
    store = SqliteKeyStore(tmp_path / "keygate.db")
    await store.open()
    await store.add_admin("root", hash_password(ROOT_PASSWORD, n=TEST_COST), (), True, "test-setup")
    await store.add_admin(
        "limited",
        hash_password(LIMITED_PASSWORD, n=TEST_COST),
        ("reader",),
        False,
        "test-setup",
    )
    runtime = Runtime(settings=settings, store=store, policy=POLICY)
    await runtime.load_table()
    return runtime


def make_app(runtime: Runtime) -> web.Application:
    """Build the admin app with cheap throttling so failures do not slow the tests."""
    throttle = LoginThrottle(delay_base=0.001, delay_max=0.001, lockout_base=0.05)
    return create_admin_app(
        runtime, authenticator=Authenticator(runtime.store, throttle, dummy_cost=TEST_COST)
    )


async def expect(resp: aiohttp.ClientResponse, status: int) -> Any:
    """Assert the status and a JSON body (except 204) and return the body."""
    text = await resp.text()
    assert resp.status == status, text
    if status == 204:
        assert text == ""
        return None
    assert resp.content_type == "application/json", text
    return json.loads(text)


async def expect_error(
    resp: aiohttp.ClientResponse, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """Assert a JSON error with the given status, code and (optionally) field."""
    body = await expect(resp, status)
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert body.get("field") == field, body
    return dict(body)


BATCH_ID = re.compile(r"^[0-9a-f]{32}$")


def counts(body: Any, scope: str = "all") -> dict[str, int]:
    """A batch answer's count and skipped, after checking its batch id and scope."""
    assert BATCH_ID.fullmatch(body["batch_id"]), body
    assert body["scope"] == scope, body
    assert set(body) == {"count", "skipped", "batch_id", "scope"}, body
    return {"count": body["count"], "skipped": body["skipped"]}


async def create(
    client: Client, name: str, roles: list[str] | None = None, auth: dict[str, str] = ROOT
) -> dict[str, Any]:
    """Create a key through the API and return the 201 body."""
    resp = await client.post(KEYS, json={"name": name, "roles": roles or ["reader"]}, headers=auth)
    body = await expect(resp, 201)
    return dict(body)


def lookup(runtime: Runtime, secret: str) -> Any:
    """Return the in-process table entry for a secret (what the proxy sees)."""
    return runtime.table.lookup(keys.digest(secret))


# ------------------------------------------------------------------ schema checking


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        target: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    return schema


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def conforms(document: dict[str, Any], schema: dict[str, Any], value: Any, at: str = "$") -> None:
    """Check a value against the JSON Schema subset the OpenAPI document uses."""
    schema = _resolve(document, schema)
    if "oneOf" in schema and "type" not in schema and "properties" not in schema:
        failures = []
        for option in schema["oneOf"]:
            try:
                conforms(document, option, value, at)
            except AssertionError as error:
                failures.append(error)
        assert len(failures) == len(schema["oneOf"]) - 1, f"{at}: matches no single oneOf"
        return
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        assert any(_TYPES[kind](value) for kind in kinds), f"{at}: {value!r} is not {kinds}"
    if "enum" in schema:
        assert value in schema["enum"], f"{at}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{at}: missing {name}"
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(properties), f"{at}: extra {set(value) - set(properties)}"
        for name, sub in properties.items():
            if name in value:
                conforms(document, sub, value[name], f"{at}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            conforms(document, schema["items"], item, f"{at}[{index}]")


def response_schema(path: str, method: str, status: int) -> dict[str, Any]:
    """Return the documented JSON schema of one response."""
    operation = openapi_document()["paths"][path][method]
    content = operation["responses"][str(status)]["content"]
    return dict(content["application/json"]["schema"])


def assert_documented(path: str, method: str, status: int, body: Any) -> None:
    """Assert a response body matches what the OpenAPI document says about it."""
    conforms(openapi_document(), response_schema(path, method, status), body)


# ------------------------------------------------------------------ create and read


async def test_create_returns_key_json_and_the_secret_once(
    client: Client, runtime: Runtime
) -> None:
    expires = future()
    resp = await client.post(
        KEYS,
        json={
            "name": "etl-nightly",
            "description": "Nightly ETL",
            "roles": ["writer", "reader", "writer"],
            "expires_at": expires,
        },
        headers=ROOT,
    )
    body = await expect(resp, 201)
    assert_documented("/api/v1/keys", "post", 201, body)
    assert resp.headers["Cache-Control"] == "no-store"
    secret, key = body["secret"], body["key"]
    assert keys.is_well_formed(secret)
    assert key["name"] == "etl-nightly"
    assert key["description"] == "Nightly ETL"
    assert key["roles"] == ["reader", "writer"]
    assert key["status"] == "active"
    assert key["created_by"] == "local:root"
    assert key["prefix"] == secret[: len(key["prefix"])]
    assert key["expires_at"] is not None
    assert key["use_count"] == 0 and key["last_used_at"] is None
    cached = lookup(runtime, secret)
    assert cached is not None and cached.name == "etl-nightly" and not cached.revoked

    shown = await expect(await client.get(f"{KEYS}/{key['id']}", headers=ROOT), 200)
    assert_documented("/api/v1/keys/{id}", "get", 200, shown)
    assert shown == key
    listing = await (await client.get(KEYS, headers=ROOT)).text()
    audit = await (await client.get("/api/v1/audit", headers=ROOT)).text()
    for text in (json.dumps(shown), listing, audit):
        assert secret not in text
        assert secret[len(key["prefix"]) :] not in text


async def test_create_minimal_key_without_optional_fields(client: Client) -> None:
    body = await create(client, "minimal")
    assert body["key"]["description"] == ""
    assert body["key"]["expires_at"] is None


async def test_name_conflict_is_409(client: Client) -> None:
    await create(client, "dup")
    resp = await client.post(KEYS, json={"name": "dup", "roles": ["reader"]}, headers=ROOT)
    await expect_error(resp, 409, "name_conflict", "name")


async def test_search_by_a_whole_secret_finds_exactly_its_key(client: Client) -> None:
    searched = await create(client, "searched")
    other = await create(client, "other")
    # Its description holds the other key's secret: a text search would find it too.
    await client.patch(
        f"{KEYS}/{other['key']['id']}", json={"description": searched["secret"]}, headers=WRITE
    )

    async def names(**params: str) -> list[str]:
        body = await expect(await client.get(KEYS, params=params, headers=ROOT), 200)
        return [item["name"] for item in body["items"]]

    assert await names(q=searched["secret"]) == ["searched"]
    assert await names(q=other["secret"]) == ["other"]
    assert await names(q=searched["secret"], status="active") == ["searched"]
    assert await names(q=searched["secret"], status="revoked") == []
    assert await names(q=searched["secret"], sort="name") == ["searched"]
    assert await names(q=keys.generate_key()) == []  # well formed, nobody's
    # The old secret of a rolled key finds it while it still works.
    await client.post(f"{KEYS}/{searched['key']['id']}/roll", headers=WRITE)
    assert await names(q=searched["secret"]) == ["searched"]
    # Anything else is still a text search: a display prefix, a key missing a character.
    assert await names(q=other["key"]["prefix"]) == ["other"]
    assert await names(q=searched["secret"][:-1]) == ["other"]


async def test_list_pages_with_opaque_cursors_and_filters(client: Client) -> None:
    created = [await create(client, f"page-{i}") for i in range(5)]
    await create(client, "other-thing")
    ids = [c["key"]["id"] for c in created]
    await client.post(f"{KEYS}/{ids[1]}/revoke", headers=WRITE)

    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", "q": "page-"}
        if cursor:
            params["cursor"] = cursor
        body = await expect(await client.get(KEYS, params=params, headers=ROOT), 200)
        assert_documented("/api/v1/keys", "get", 200, body)
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert not cursor.isdigit()  # opaque
    assert seen == ids and pages == 3

    revoked = await expect(await client.get(KEYS, params={"status": "revoked"}, headers=ROOT), 200)
    assert [item["id"] for item in revoked["items"]] == [ids[1]]
    active = await expect(await client.get(KEYS, params={"status": "active"}, headers=ROOT), 200)
    assert len(active["items"]) == 5
    everything = await expect(await client.get(KEYS, params={"status": ""}, headers=ROOT), 200)
    assert len(everything["items"]) == 6 and everything["next_cursor"] is None


async def test_expired_keys_show_as_expired(client: Client, runtime: Runtime) -> None:
    created = await create(client, "short-lived")
    key_id = created["key"]["id"]
    # Expiry must be in the future when set; move it into the past in the store directly.
    db = runtime.store._conn()  # type: ignore[attr-defined]
    await db.execute("UPDATE keys SET expires_at = 1 WHERE id = ?", (key_id,))
    body = await expect(await client.get(f"{KEYS}/{key_id}", headers=ROOT), 200)
    assert body["status"] == "expired"
    expired = await expect(await client.get(KEYS, params={"status": "expired"}, headers=ROOT), 200)
    assert [item["id"] for item in expired["items"]] == [key_id]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "A" * 401}, "cursor"),
        ({"status": "deleted"}, "status"),
        ({"sort": "size"}, "sort"),
        ({"q": "x" * 1001}, "q"),
    ],
)
async def test_bad_list_parameters_are_400(
    client: Client, params: dict[str, str], field: str
) -> None:
    resp = await client.get(KEYS, params=params, headers=ROOT)
    await expect_error(resp, 400, "invalid_request", field)


# Cursors the document admits (its pattern and length) that no listing made, or another one
# did: JSON Schema cannot say so, so they are 422, not the 400 of a request it refuses.
NOT_OURS = [
    (KEYS, {"cursor": "MTIz"}),  # base64 of "123"
    (KEYS, {"cursor": encode_cursor("a", 5)}),  # an audit cursor
    (KEYS, {"cursor": base64.urlsafe_b64encode(b"k:-4").decode().rstrip("=")}),
    (KEYS, {"cursor": encode_cursor("k", 2**63)}),  # past the largest id
    (KEYS, {"sort": "name", "cursor": encode_cursor("k", 5)}),  # an id-order cursor
    (KEYS, {"sort": "-name", "cursor": encode_sort_cursor("name", "a", 5)}),  # other order
    (KEYS, {"cursor": "A" * 400}),
    ("/api/v1/audit", {"cursor": encode_cursor("k", 3)}),  # a key-list cursor
    ("/api/v1/audit", {"cursor": "_"}),
]


@pytest.mark.parametrize(("url", "params"), NOT_OURS)
async def test_a_well_formed_cursor_no_listing_made_is_422(
    client: Client, url: str, params: dict[str, str]
) -> None:
    parameter = next(
        p for p in openapi_document()["paths"][url]["get"]["parameters"] if p["name"] == "cursor"
    )
    cursor = params["cursor"]
    assert re.search(parameter["schema"]["pattern"], cursor), cursor  # the document admits it
    assert len(cursor) <= parameter["schema"]["maxLength"]
    resp = await client.get(url, params=params, headers=ROOT)
    await expect_error(resp, 422, "invalid_request", "cursor")
    assert "422" in openapi_document()["paths"][url]["get"]["responses"]


async def test_cursors_outside_the_documents_syntax_are_400(client: Client) -> None:
    schema = next(
        p for p in openapi_document()["paths"][KEYS]["get"]["parameters"] if p["name"] == "cursor"
    )["schema"]
    for cursor in ("not a cursor", "A" * (schema["maxLength"] + 1), "a=", "a.b", "é"):
        assert not re.search(schema["pattern"], cursor) or len(cursor) > schema["maxLength"]
        for url in (KEYS, "/api/v1/audit"):
            resp = await client.get(url, params={"cursor": cursor}, headers=ROOT)
            await expect_error(resp, 400, "invalid_request", "cursor")


async def test_the_longest_sort_cursor_fits_the_documents_length(client: Client) -> None:
    name = '"\\' * (NAME_MAX_LENGTH // 2)  # the longest name, each character escaped in JSON
    await create(client, name)
    await create(client, name[:-1] + "~")
    for sort in ("name", "-name"):
        page = await expect(
            await client.get(KEYS, params={"sort": sort, "limit": "1"}, headers=ROOT), 200
        )
        cursor = page["next_cursor"]
        assert cursor is not None and len(cursor) <= CURSOR_MAX_LENGTH
        assert re.search(CURSOR_PATTERN, cursor)
        params = {"sort": sort, "cursor": cursor}
        assert (
            len((await expect(await client.get(KEYS, params=params, headers=ROOT), 200))["items"])
            == 1
        )


async def test_audit_parameters_within_the_document_are_answered(client: Client) -> None:
    """RFC 3339 times in lower case, and the largest id the document admits, are no 400."""
    await create(client, "audited")
    parameters = {
        p["name"]: p["schema"]
        for p in openapi_document()["paths"]["/api/v1/audit"]["get"]["parameters"]
    }
    for since in ("2020-01-01t00:00:00z", "2020-01-01T00:00:00z"):
        body = await expect(
            await client.get("/api/v1/audit", params={"since": since}, headers=ROOT), 200
        )
        assert "audited" in [event["key_name"] for event in body["items"]]
    largest = parameters["key_id"]["maximum"]
    params = {"key_id": str(largest)}
    assert (await expect(await client.get("/api/v1/audit", params=params, headers=ROOT), 200))[
        "items"
    ] == []
    params = {"key_id": str(largest + 1)}  # past the document's maximum: 400
    await expect_error(
        await client.get("/api/v1/audit", params=params, headers=ROOT),
        400,
        "invalid_request",
        "key_id",
    )
    too_long = "2020-01-01T00:00:00." + "0" * parameters["since"]["maxLength"] + "Z"
    await expect_error(
        await client.get("/api/v1/audit", params={"since": too_long}, headers=ROOT),
        400,
        "invalid_request",
        "since",
    )


async def test_a_leap_second_is_refused_where_the_document_says_so(client: Client) -> None:
    """RFC 3339 admits 23:59:60; unix time has no such second: 400 in a query and a body."""
    leap = "2030-06-30T23:59:60Z"
    await expect_error(
        await client.get("/api/v1/audit", params={"since": leap}, headers=ROOT),
        400,
        "invalid_request",
        "since",
    )
    body = {"name": "leap", "roles": ["reader"], "expires_at": leap}
    await expect_error(await client.post(KEYS, json=body, headers=ROOT), 400, "invalid_request")
    key_id = (await create(client, "leap"))["key"]["id"]
    resp = await client.patch(f"{KEYS}/{key_id}", json={"expires_at": leap}, headers=ROOT)
    await expect_error(resp, 400, "invalid_request", "expires_at")
    before = {**body, "name": "leap-59", "expires_at": leap.replace(":60", ":59")}
    await expect(await client.post(KEYS, json=before, headers=ROOT), 201)
    document = openapi_document()
    audit = document["paths"]["/api/v1/audit"]["get"]["parameters"]
    schemas = document["components"]["schemas"]
    described = [
        next(p for p in audit if p["name"] == "since")["description"],
        schemas["KeyCreate"]["properties"]["expires_at"]["anyOf"][0]["description"],
        schemas["KeyPatch"]["properties"]["expires_at"]["anyOf"][0]["description"],
    ]
    assert all("leap second (:60) is refused" in text for text in described), described


async def test_repeated_query_parameter_is_400(client: Client) -> None:
    resp = await client.get(f"{KEYS}?limit=1&limit=2", headers=ROOT)
    await expect_error(resp, 400, "invalid_request", "limit")


# A body each method's key route takes (the others take {}): the id is at fault, not it.
TAKES: dict[str, Any] = {"PATCH": {"name": "x"}}


@pytest.mark.parametrize(
    "key_id", ["abc", "1.5", "-1", "0", "99999999999999999999999", "%D9%A3", "1e3", "+1", " 1"]
)
async def test_unknown_or_non_integer_id_is_404(client: Client, key_id: str) -> None:
    await create(client, "exists")
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/revoke")):
        resp = await client.request(
            method, f"{KEYS}/{key_id}{suffix}", json=TAKES.get(method, {}), headers=ROOT
        )
        await expect_error(resp, 404, "not_found")


async def test_missing_id_is_404_for_every_key_route(client: Client) -> None:
    for method, suffix in (
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/revoke"),
        ("POST", "/reinstate"),
    ):
        resp = await client.request(
            method, f"{KEYS}/4242{suffix}", json=TAKES.get(method, {}), headers=ROOT
        )
        await expect_error(resp, 404, "not_found")


# ------------------------------------------------------------------ edit


async def test_patch_edits_fields_and_clears_expiry(client: Client, runtime: Runtime) -> None:
    created = await create(client, "editable")
    key_id, secret = created["key"]["id"], created["secret"]
    resp = await client.patch(
        f"{KEYS}/{key_id}",
        json={
            "name": "edited",
            "description": "now described",
            "roles": ["operator"],
            "expires_at": future(3),
        },
        headers=ROOT,
    )
    body = await expect(resp, 200)
    assert_documented("/api/v1/keys/{id}", "patch", 200, body)
    assert body["name"] == "edited" and body["roles"] == ["operator"]
    assert body["description"] == "now described" and body["expires_at"] is not None
    cached = lookup(runtime, secret)
    assert cached.name == "edited" and cached.roles == frozenset({"operator"})
    assert cached.expires_at is not None

    cleared = await expect(
        await client.patch(f"{KEYS}/{key_id}", json={"expires_at": None}, headers=ROOT), 200
    )
    assert cleared["expires_at"] is None and cleared["name"] == "edited"
    assert lookup(runtime, secret).expires_at is None

    events = await expect(
        await client.get("/api/v1/audit", params={"key_id": str(key_id)}, headers=ROOT), 200
    )
    edit = next(
        e for e in events["items"] if e["action"] == "edit" and "name" in e["details"]["after"]
    )
    assert edit["details"]["before"]["name"] == "editable"
    assert edit["details"]["after"]["name"] == "edited"
    assert edit["actor"] == "local:root"


async def test_patch_rejects_empty_unknown_and_invalid_fields(client: Client) -> None:
    key_id = (await create(client, "target"))["key"]["id"]
    await create(client, "taken")
    url = f"{KEYS}/{key_id}"
    await expect_error(await client.patch(url, json={}, headers=ROOT), 400, "invalid_request")
    await expect_error(
        await client.patch(url, json={"status": "revoked"}, headers=ROOT),
        400,
        "unknown_field",
        "status",
    )
    await expect_error(
        await client.patch(url, json={"name": "taken"}, headers=ROOT), 409, "name_conflict"
    )
    await expect_error(
        await client.patch(url, json={"name": None}, headers=ROOT), 400, "invalid_request", "name"
    )
    await expect_error(
        await client.patch(url, json={"roles": []}, headers=ROOT), 400, "invalid_request", "roles"
    )
    await expect_error(
        await client.patch(url, json={"roles": ["ghost"]}, headers=ROOT),
        422,
        "unknown_role",
        "roles",
    )
    await expect_error(
        await client.patch(url, json={"expires_at": "2001-01-01T00:00:00Z"}, headers=ROOT),
        400,
        "invalid_request",
        "expires_at",
    )


# ------------------------------------------------------------------ validation attacks


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"name": "a\r\nX-Evil: 1", "roles": ["reader"]}, 400, "invalid_request", "name"),
        ({"name": "a\x00b", "roles": ["reader"]}, 400, "invalid_request", "name"),
        ({"name": "n" * 65, "roles": ["reader"]}, 400, "invalid_request", "name"),
        ({"name": "", "roles": ["reader"]}, 400, "invalid_request", "name"),
        ({"name": "caf\u00e9", "roles": ["reader"]}, 400, "invalid_request", "name"),
        ({"name": " padded", "roles": ["reader"]}, 400, "invalid_request", "name"),
        ({"name": "12345", "roles": ["reader"]}, 400, "invalid_request", "name"),
        ({"name": 7, "roles": ["reader"]}, 400, "invalid_request", "name"),
        ({"roles": ["reader"]}, 400, "invalid_request", "name"),
        (
            {"name": "ok", "description": "d" * 1001, "roles": ["reader"]},
            400,
            "invalid_request",
            "description",
        ),
        (
            {"name": "ok", "description": "a\x1bb", "roles": ["reader"]},
            400,
            "invalid_request",
            "description",
        ),
        ({"name": "ok", "roles": []}, 400, "invalid_request", "roles"),
        ({"name": "ok", "roles": "reader"}, 400, "invalid_request", "roles"),
        ({"name": "ok", "roles": [1]}, 400, "invalid_request", "roles"),
        ({"name": "ok"}, 400, "invalid_request", "roles"),
        ({"name": "ok", "roles": ["reader", "ghost"]}, 422, "unknown_role", "roles"),
        (
            {"name": "ok", "roles": ["reader"], "expires_at": "2001-01-01T00:00:00Z"},
            400,
            "invalid_request",
            "expires_at",
        ),
        (
            {"name": "ok", "roles": ["reader"], "expires_at": "2099-01-01T00:00:00"},
            400,
            "invalid_request",
            "expires_at",
        ),
        (
            {"name": "ok", "roles": ["reader"], "expires_at": "tomorrow"},
            400,
            "invalid_request",
            "expires_at",
        ),
        (
            {"name": "ok", "roles": ["reader"], "expires_at": 4102444800},
            400,
            "invalid_request",
            "expires_at",
        ),
        ({"name": "ok", "roles": ["reader"], "secret": "kg_mine"}, 400, "unknown_field", "secret"),
        (
            {"name": "ok", "roles": ["reader"], "created_by": "x", "id": 1},
            400,
            "unknown_field",
            "created_by",
        ),
    ],
)
async def test_create_validation(
    client: Client, runtime: Runtime, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    resp = await client.post(KEYS, json=body, headers=ROOT)
    error = await expect_error(resp, status, code, field)
    if code == "unknown_role":
        assert "ghost" in error["message"]
    if code == "unknown_field":
        assert field in error["message"]
    assert await runtime.store.list_keys() == []


async def test_valid_unusual_names_are_accepted(client: Client) -> None:
    for name in ("n" * 64, "a b", "x:y/z~!", "etl_1-2.3"):
        assert (await create(client, name))["key"]["name"] == name


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code"),
    [
        (b'{"name": "x", "roles": ["reader"]', "application/json", 400, "malformed_json"),
        (b"", "application/json", 400, "malformed_json"),
        (b"[1, 2]", "application/json", 400, "invalid_request"),
        (b'"just a string"', "application/json", 400, "invalid_request"),
        (b"null", "application/json", 400, "invalid_request"),
        (b'{"name": NaN, "roles": ["reader"]}', "application/json", 400, "malformed_json"),
        (
            b'{"name": "a", "name": "b", "roles": ["reader"]}',
            "application/json",
            400,
            "malformed_json",
        ),
        (b'{"name": "\xff\xfe", "roles": ["reader"]}', "application/json", 400, "malformed_json"),
        (b'{"name": "\\ud800", "roles": ["reader"]}', "application/json", 400, "malformed_json"),
        (b'{"\\udfff": 1}', "application/json", 400, "malformed_json"),
        (b"[" * 30_000 + b"]" * 30_000, "application/json", 400, "malformed_json"),
        # Bodies a cross-site form could send: refused by the CSRF rule before any parsing.
        (b'{"name": "x", "roles": ["reader"]}', "text/plain", 403, "csrf"),
        (b'{"name": "x", "roles": ["reader"]}', "application/x-www-form-urlencoded", 403, "csrf"),
        (b'{"name": "x", "roles": ["reader"]}', "", 403, "csrf"),
    ],
)
async def test_malformed_bodies(
    client: Client, raw: bytes, content_type: str, status: int, code: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    for method, url in (("POST", KEYS), ("POST", "/api/v1/policy/explain")):
        resp = await client.request(method, url, data=raw, headers={**headers, **ROOT})
        await expect_error(resp, status, code)
    key_id = (await create(client, "patch-target"))["key"]["id"]
    resp = await client.patch(f"{KEYS}/{key_id}", data=raw, headers={**headers, **ROOT})
    await expect_error(resp, status, code)


async def test_json_with_charset_and_plus_json_are_accepted(client: Client) -> None:
    for index, content_type in enumerate(
        ("application/json; charset=utf-8", "application/merge-patch+json")
    ):
        raw = json.dumps({"name": f"ct-{index}", "roles": ["reader"]}).encode()
        resp = await client.post(KEYS, data=raw, headers={"Content-Type": content_type, **ROOT})
        await expect(resp, 201)


async def test_oversized_bodies_are_413(client: Client, runtime: Runtime) -> None:
    padding = "x" * MAX_BODY_BYTES
    raw = json.dumps({"name": "big", "roles": ["reader"], "description": padding}).encode()
    resp = await client.post(KEYS, data=raw, headers={"Content-Type": "application/json", **ROOT})
    await expect_error(resp, 413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 8192
        yield raw

    resp = await client.post(
        KEYS, data=chunks(), headers={"Content-Type": "application/json", **ROOT}
    )
    await expect_error(resp, 413, "body_too_large")
    assert await runtime.store.list_keys() == []

    # A body of exactly the limit is fine (whitespace padding after the object).
    small = json.dumps({"name": "fits", "roles": ["reader"]}).encode()
    exact = small + b" " * (MAX_BODY_BYTES - len(small))
    resp = await client.post(KEYS, data=exact, headers={"Content-Type": "application/json", **ROOT})
    await expect(resp, 201)


async def test_unknown_routes_and_methods_are_json(client: Client) -> None:
    resp = await client.get("/api/v1/nope", headers=ROOT)
    await expect_error(resp, 404, "not_found")
    resp = await client.get("/ui", headers=ROOT)
    await expect_error(resp, 404, "not_found")
    resp = await client.get("/static/no-such-file.js")
    await expect_error(resp, 404, "not_found")
    resp = await client.put(KEYS, json={}, headers=ROOT)
    await expect_error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"] and "POST" in resp.headers["Allow"]
    resp = await client.get(f"{KEYS}/revoke-all", headers=ROOT)  # a POST action's path
    await expect_error(resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == "POST"
    resp = await client.delete(f"{KEYS}/1/revoke", headers=ROOT)
    await expect_error(resp, 405, "method_not_allowed")


async def test_an_action_path_allows_exactly_its_documented_methods(client: Client) -> None:
    """OPTIONS (or any other method) on revoke-all, identify, ... names the document's methods.

    /api/v1/keys/{id} also matched these paths, so Allow named GET, PATCH and DELETE too.
    """
    paths = openapi_document()["paths"]
    actions = {
        path.removeprefix(f"{KEYS}/")
        for path in paths
        if path.startswith(f"{KEYS}/") and "/" not in path.removeprefix(f"{KEYS}/")
    } - {"{id}"}
    assert actions == set(KEY_ACTIONS)
    for action in sorted(actions):
        documented = {method.upper() for method in paths[f"{KEYS}/{action}"]}
        for method in ("OPTIONS", *({"GET", "PATCH", "DELETE", "POST"} - documented)):
            resp = await client.request(method, f"{KEYS}/{action}", headers=WRITE)
            await expect_error(resp, 405, "method_not_allowed")
            assert set(resp.headers["Allow"].split(",")) == documented, (method, action)


async def test_a_key_named_like_an_action_is_reached_by_id_there(client: Client) -> None:
    created = await create(client, "identify")
    key_id = created["key"]["id"]
    resp = await client.get(f"{KEYS}/identify", headers=ROOT)  # the action's path, not the key
    await expect_error(resp, 405, "method_not_allowed")
    assert (await expect(await client.get(f"{KEYS}/{key_id}", headers=ROOT), 200))["id"] == key_id
    # Below the action's path the name still names the key.
    revoked = await expect(await client.post(f"{KEYS}/identify/revoke", headers=WRITE), 200)
    assert revoked["id"] == key_id and revoked["status"] == "revoked"


async def test_unexpected_failure_is_a_bare_json_500(client: Client, runtime: Runtime) -> None:
    await runtime.store.close()  # every store call now raises
    resp = await client.get(KEYS, headers=ROOT)
    body = await expect_error(resp, 500, "internal_error")
    assert set(body) == {"error", "message"}
    text = json.dumps(body).lower()
    assert "sqlite" not in text and "traceback" not in text and "open" not in text


ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64,
    1e308,
    "",
    "\x00",
    "\ud800",
    "x" * 5000,
    [],
    [None],
    [[]],
    {},
    {"a": {"b": []}},
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-23:59",
]


async def test_no_odd_value_in_any_field_produces_a_500(client: Client) -> None:
    key_id = (await create(client, "fuzz-target"))["key"]["id"]
    base = {"name": "fuzzed", "roles": ["reader"]}
    explain = {"method": "GET", "path": "/a", "roles": ["reader"]}
    for value in ODD_VALUES:
        for field in ("name", "description", "roles", "expires_at"):
            for method, url, body in (
                ("POST", KEYS, {**base, field: value}),
                ("PATCH", f"{KEYS}/{key_id}", {field: value}),
            ):
                resp = await client.request(method, url, json=body, headers=ROOT)
                assert resp.status < 500, (method, field, value, await resp.text())
                if resp.status == 201:  # a value that was fine: undo it
                    created = await resp.json()
                    await client.delete(f"{KEYS}/{created['key']['id']}", headers=WRITE)
        for field in ("method", "path", "roles", "key_id"):
            body = {**explain, field: value}
            if field == "key_id":
                del body["roles"]
            resp = await client.post("/api/v1/policy/explain", json=body, headers=ROOT)
            assert resp.status < 500, (field, value, await resp.text())
        for param in ("limit", "cursor", "status", "q"):
            resp = await client.get(KEYS, params={param: str(value)[:2000]}, headers=ROOT)
            assert resp.status < 500, (param, value)
        for raw in ("%ff", "%ed%a0%80", "%00", "%", "%%", "%2"):
            for url in (f"{KEYS}?q={raw}", f"/api/v1/audit?actor={raw}", f"{KEYS}/{raw}"):
                resp = await client.get(URL(url, encoded=True), headers=ROOT)
                assert resp.status < 500, (url, await resp.text())
        for param in ("key_id", "actor", "since", "limit", "cursor"):
            resp = await client.get(
                "/api/v1/audit", params={param: str(value)[:2000]}, headers=ROOT
            )
            assert resp.status < 500, (param, value)


# ------------------------------------------------------------------ revoke, reinstate, delete


async def test_revoke_reinstate_delete_take_effect_before_the_call_returns(
    client: Client, runtime: Runtime
) -> None:
    created = await create(client, "lifecycle")
    key_id, secret = created["key"]["id"], created["secret"]

    body = await expect(await client.post(f"{KEYS}/{key_id}/revoke", headers=WRITE), 200)
    assert_documented("/api/v1/keys/{id}/revoke", "post", 200, body)
    assert body["status"] == "revoked" and body["revoked_at"] is not None
    assert lookup(runtime, secret).revoked

    body = await expect(await client.post(f"{KEYS}/{key_id}/reinstate", headers=WRITE), 200)
    assert body["status"] == "active" and body["revoked_at"] is None
    assert not lookup(runtime, secret).revoked

    await expect(await client.delete(f"{KEYS}/{key_id}", headers=WRITE), 204)
    assert lookup(runtime, secret) is None
    await expect_error(await client.get(f"{KEYS}/{key_id}", headers=ROOT), 404, "not_found")
    await expect_error(await client.delete(f"{KEYS}/{key_id}", headers=WRITE), 404, "not_found")

    actions = [
        e["action"]
        for e in (
            await expect(
                await client.get("/api/v1/audit", params={"key_id": str(key_id)}, headers=ROOT), 200
            )
        )["items"]
    ]
    assert actions == ["delete", "reinstate", "revoke", "create"]


@pytest.mark.parametrize("body", ['{"reason": "leaked"}', "[]", '"x"', "null"])
async def test_a_write_that_takes_no_data_refuses_a_body_with_any(
    client: Client, runtime: Runtime, body: str
) -> None:
    # These writes take no data: a body is {} or absent, and anything else is refused
    # (before, it was silently ignored, so a client might think its "reason" was kept).
    created = await create(client, "no-body")
    key_id, secret = created["key"]["id"], created["secret"]
    writes = [
        ("POST", f"{KEYS}/{key_id}/revoke"),
        ("POST", f"{KEYS}/{key_id}/reinstate"),
        ("DELETE", f"{KEYS}/{key_id}"),
        ("POST", f"{KEYS}/revoke-all"),
        ("POST", f"{KEYS}/reinstate-all"),
        ("POST", f"{KEYS}/delete-revoked"),
        ("DELETE", "/api/v1/session"),
    ]
    for method, path in writes:
        resp = await client.request(method, path, data=body, headers=WRITE)
        code = "unknown_field" if body.startswith("{") else "invalid_request"
        await expect_error(resp, 400, code)
    entry = lookup(runtime, secret)
    assert entry is not None and not entry.revoked


async def test_a_write_that_takes_no_data_takes_an_empty_object_or_nothing(
    client: Client, runtime: Runtime
) -> None:
    created = await create(client, "empty-body")
    key_id, secret = created["key"]["id"], created["secret"]
    await expect(await client.post(f"{KEYS}/{key_id}/revoke", data="{}", headers=WRITE), 200)
    assert lookup(runtime, secret).revoked
    await expect(await client.post(f"{KEYS}/{key_id}/reinstate", headers=WRITE), 200)
    assert not lookup(runtime, secret).revoked
    for path in (f"{KEYS}/revoke-all", f"{KEYS}/reinstate-all", f"{KEYS}/delete-revoked"):
        await expect(await client.post(path, data=" {} ", headers=WRITE), 200)
    await expect(await client.delete(f"{KEYS}/{key_id}", data="{}", headers=WRITE), 204)
    assert lookup(runtime, secret) is None
    # The document says so: the request body is the empty object, required (sent as JSON).
    document = openapi_document()
    operation = document["paths"]["/api/v1/keys/{id}/revoke"]["post"]
    assert operation["requestBody"]["required"] is True
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    conforms(document, schema, {})
    with pytest.raises(AssertionError, match="extra"):
        conforms(document, schema, {"reason": "leaked"})


async def test_batches_count_and_take_effect_immediately(client: Client, runtime: Runtime) -> None:
    secrets_ = [(await create(client, f"batch-{i}"))["secret"] for i in range(4)]
    first_id = (await runtime.store.list_keys())[0].id
    await client.post(f"{KEYS}/{first_id}/revoke", headers=WRITE)

    body = await expect(await client.post(f"{KEYS}/revoke-all", headers=WRITE), 200)
    assert_documented("/api/v1/keys/revoke-all", "post", 200, body)
    assert counts(body) == {"count": 3, "skipped": 0}
    assert all(lookup(runtime, s).revoked for s in secrets_)

    assert counts(await expect(await client.post(f"{KEYS}/reinstate-all", headers=WRITE), 200)) == {
        "count": 4,
        "skipped": 0,
    }
    assert not any(lookup(runtime, s).revoked for s in secrets_)

    await client.post(f"{KEYS}/{first_id}/revoke", headers=WRITE)
    assert counts(
        await expect(await client.post(f"{KEYS}/delete-revoked", headers=WRITE), 200)
    ) == {
        "count": 1,
        "skipped": 0,
    }
    assert lookup(runtime, secrets_[0]) is None
    assert all(lookup(runtime, s) is not None for s in secrets_[1:])
    assert counts(
        await expect(await client.post(f"{KEYS}/delete-revoked", headers=WRITE), 200)
    ) == {
        "count": 0,
        "skipped": 0,
    }

    audit = await expect(
        await client.get("/api/v1/audit", params={"actor": "local:root"}, headers=ROOT), 200
    )
    batches = {e["action"]: e["details"] for e in audit["items"] if e["key_id"] is None}
    assert batches["revoke_all"]["count"] == 3 and batches["revoke_all"]["skipped"] == 0
    assert batches["reinstate_all"]["count"] == 4 and len(batches["reinstate_all"]["key_ids"]) == 4


async def test_concurrent_revoke_all_and_creates_stay_consistent(
    client: Client, runtime: Runtime
) -> None:
    before = [(await create(client, f"old-{i}"))["secret"] for i in range(10)]

    async def create_one(index: int) -> dict[str, Any]:
        resp = await client.post(
            KEYS, json={"name": f"new-{index}", "roles": ["reader"]}, headers=ROOT
        )
        return dict(await expect(resp, 201))

    async def revoke_all() -> int:
        return int(
            (await expect(await client.post(f"{KEYS}/revoke-all", headers=WRITE), 200))["count"]
        )

    jobs: list[Awaitable[Any]] = [create_one(i) for i in range(30)]
    jobs[10:10] = [revoke_all()]
    jobs[25:25] = [revoke_all()]
    results = await asyncio.gather(*jobs)
    counts = [r for r in results if isinstance(r, int)]
    created = [r for r in results if isinstance(r, dict)]
    assert len(created) == 30 and len(counts) == 2

    rows = {row.name: row for row in await runtime.store.list_keys(limit=1000)}
    assert len(rows) == 40
    revoked = {name for name, row in rows.items() if row.status == "revoked"}
    # Every key that existed is accounted for by exactly one batch.
    assert sum(counts) == len(revoked)
    assert all(rows[f"old-{i}"].status == "revoked" for i in range(10))

    # A key is active only if it was created after the last batch that revoked things.
    audit = await runtime.store.list_audit(limit=1000)
    batch_ids = sorted(e.id for e in audit if e.action == "revoke_all")
    created_at = {e.key_name: e.id for e in audit if e.action == "create"}
    for name, row in rows.items():
        if row.status == "active":
            assert created_at[name] > batch_ids[-1], name
        else:
            assert created_at[name] < batch_ids[-1], name

    # The proxy's table agrees with the store for every key, old and new.
    for secret in before:
        assert lookup(runtime, secret).revoked
    for item in created:
        cached = lookup(runtime, item["secret"])
        assert cached is not None
        assert cached.revoked == (rows[cached.name].status == "revoked")


# ------------------------------------------------------------------ grant limits


async def test_grant_limits_on_create(client: Client, runtime: Runtime) -> None:
    ok = await create(client, "reader-key", ["reader"], auth=LIMITED)
    assert ok["key"]["created_by"] == "local:limited"
    for roles in (["writer"], ["reader", "operator"]):
        resp = await client.post(KEYS, json={"name": "escalate", "roles": roles}, headers=LIMITED)
        error = await expect_error(resp, 403, "grant_forbidden", "roles")
        outside = next(r for r in roles if r != "reader")
        assert outside in error["message"]
    assert await runtime.store.get_key_by_name("escalate") is None
    # grant_all may grant everything.
    await create(client, "all-roles", ["reader", "writer", "operator"], auth=ROOT)


async def test_grant_limits_on_patch(client: Client, runtime: Runtime) -> None:
    created = await create(client, "mine", ["reader"], auth=LIMITED)
    key_id = created["key"]["id"]
    resp = await client.patch(
        f"{KEYS}/{key_id}", json={"roles": ["reader", "writer"]}, headers=LIMITED
    )
    error = await expect_error(resp, 403, "grant_forbidden", "roles")
    assert "writer" in error["message"]
    row = await runtime.store.get_key(key_id)
    assert row is not None and row.roles == ("reader",)
    assert lookup(runtime, created["secret"]).roles == frozenset({"reader"})
    # Editing other fields, or roles within the grant set, is fine.
    await expect(
        await client.patch(f"{KEYS}/{key_id}", json={"description": "d"}, headers=LIMITED), 200
    )
    await expect(
        await client.patch(f"{KEYS}/{key_id}", json={"roles": ["reader"]}, headers=LIMITED), 200
    )
    # Grant sets are literal: holding "reader" does not allow "writer" although it includes reader.
    other = await create(client, "root-key", ["operator"], auth=ROOT)
    resp = await client.patch(
        f"{KEYS}/{other['key']['id']}", json={"roles": ["writer"]}, headers=LIMITED
    )
    await expect_error(resp, 403, "grant_forbidden")


# ------------------------------------------------------------------ policy


async def test_roles_lists_descriptions_effective_rules_and_grantability(client: Client) -> None:
    body = await expect(await client.get("/api/v1/roles", headers=LIMITED), 200)
    assert_documented("/api/v1/roles", "get", 200, body)
    roles = {role["name"]: role for role in body["roles"]}
    assert set(roles) == {"reader", "writer", "operator"}
    writer = roles["writer"]
    assert writer["description"] == "Write sessions"
    assert writer["includes"] == ["reader"]
    assert writer["effective_roles"] == ["reader", "writer"]
    assert {r["rule"] for r in writer["effective_rules"]} == {
        f"GET {REST}/sessions/**",
        f"POST,PUT {REST}/sessions/**",
    }
    assert roles["reader"]["grantable"] is True and writer["grantable"] is False
    assert body["protected"] == [f"{REST}/apikeys/**"]
    root_view = await expect(await client.get("/api/v1/roles", headers=ROOT), 200)
    assert all(role["grantable"] for role in root_view["roles"])


async def test_explain_by_roles_and_by_key(client: Client) -> None:
    url = "/api/v1/policy/explain"
    body = await expect(
        await client.post(
            url,
            json={"method": "get", "path": f"{REST}/sessions/1", "roles": ["writer"]},
            headers=ROOT,
        ),
        200,
    )
    assert_documented(url, "post", 200, body)
    assert body["allowed"] is True and body["reason"] == "allowed"
    assert body["rule"] == {"role": "reader", "index": 0, "rule": f"GET {REST}/sessions/**"}
    assert body["effective_roles"] == ["reader", "writer"] and body["key"] is None

    denied = await expect(
        await client.post(
            url,
            json={"method": "DELETE", "path": f"{REST}/sessions/1", "roles": ["writer"]},
            headers=ROOT,
        ),
        200,
    )
    assert denied["allowed"] is False and denied["reason"] == "no_rule" and denied["rule"] is None

    protected = await expect(
        await client.post(
            url,
            json={"method": "GET", "path": f"{REST}/apikeys/1", "roles": ["operator"]},
            headers=ROOT,
        ),
        200,
    )
    assert protected["allowed"] is False and protected["reason"] == "protected"

    created = await create(client, "explained", ["operator"])
    key_id = created["key"]["id"]
    by_key = await expect(
        await client.post(
            url, json={"method": "PUT", "path": f"{REST}/x?y=1", "key_id": key_id}, headers=ROOT
        ),
        200,
    )
    assert by_key["allowed"] is True and by_key["path"] == f"{REST}/x"
    assert by_key["key"] == {"id": key_id, "name": "explained", "status": "active"}
    await client.post(f"{KEYS}/{key_id}/revoke", headers=WRITE)
    revoked = await expect(
        await client.post(
            url, json={"method": "PUT", "path": f"{REST}/x", "key_id": key_id}, headers=ROOT
        ),
        200,
    )
    assert revoked["allowed"] is False and revoked["reason"] == "key_revoked"
    assert revoked["refusal"]["status"] == 401 and revoked["refusal"]["error"] == "key_revoked"


async def test_explain_answers_the_proxys_refusal_of_a_bad_target(client: Client) -> None:
    # Decided as the request line would carry it: what the proxy refuses, explain refuses.
    url = "/api/v1/policy/explain"
    for target in ("a", "/a\r\nb", f"{REST}/sessions/../apikeys", f"{REST}/sessions%2F1"):
        body = await expect(
            await client.post(
                url, json={"method": "GET", "path": target, "roles": ["operator"]}, headers=ROOT
            ),
            200,
        )
        assert_documented(url, "post", 200, body)
        assert body["allowed"] is False and body["reason"] == "bad_target", body
        assert body["refusal"]["status"] == 400 and body["refusal"]["error"] == "bad_target"
        assert body["path"] is None and body["target"] == target


async def test_explain_names_a_key_in_the_target_as_the_document_says(client: Client) -> None:
    """reason key_misplaced was answered but not in the document's enum of reasons."""
    url = "/api/v1/policy/explain"
    target = f"{REST}/items?token={keys.generate_key()}"
    body = await expect(
        await client.post(
            url, json={"method": "GET", "path": target, "roles": ["operator"]}, headers=ROOT
        ),
        200,
    )
    assert body["reason"] == "key_misplaced" and body["refusal"]["status"] == 400, body
    assert_documented(url, "post", 200, body)


async def test_identify_is_audited_without_the_secret(client: Client) -> None:
    created = await create(client, "leaked-bot")
    secret, key_id = created["secret"], created["key"]["id"]
    found = await client.post(f"{KEYS}/identify", json={"secret": secret}, headers=WRITE)
    assert (await expect(found, 200))["id"] == key_id
    stranger = keys.generate_key()
    missing = await client.post(f"{KEYS}/identify", json={"secret": stranger}, headers=WRITE)
    await expect_error(missing, 404, "not_found")
    audit = await expect(await client.get("/api/v1/audit", headers=ROOT), 200)
    identified = [e for e in audit["items"] if e["action"] == "identify"]
    assert [(e["actor"], e["key_id"], e["key_name"]) for e in identified] == [
        ("local:root", None, None),
        ("local:root", key_id, "leaked-bot"),
    ]
    assert [e["details"]["found"] for e in identified] == [False, True]
    dumped = json.dumps(audit)
    for text in (secret, stranger, keys.digest(secret).hex(), keys.digest(stranger).hex()):
        assert text not in dumped


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"method": "GET", "path": "/a"}, 400, "invalid_request", "roles"),
        (
            {"method": "GET", "path": "/a", "roles": ["reader"], "key_id": 1},
            400,
            "invalid_request",
            "roles",
        ),
        ({"method": "FETCH", "path": "/a", "roles": ["reader"]}, 400, "invalid_request", "method"),
        ({"method": 1, "path": "/a", "roles": ["reader"]}, 400, "invalid_request", "method"),
        ({"path": "/a", "roles": ["reader"]}, 400, "invalid_request", "method"),
        ({"method": "GET", "path": "", "roles": ["reader"]}, 400, "invalid_request", "path"),
        ({"method": "GET", "path": 1, "roles": ["reader"]}, 400, "invalid_request", "path"),
        (
            {"method": "GET", "path": "/" + "a" * 8192, "roles": ["reader"]},
            400,
            "invalid_request",
            "path",
        ),
        ({"method": "GET", "path": "/a", "roles": ["ghost"]}, 422, "unknown_role", "roles"),
        ({"method": "GET", "path": "/a", "key_id": "1"}, 400, "invalid_request", "key_id"),
        ({"method": "GET", "path": "/a", "key_id": True}, 400, "invalid_request", "key_id"),
        ({"method": "GET", "path": "/a", "key_id": 2**70}, 400, "invalid_request", "key_id"),
        ({"method": "GET", "path": "/a", "key_id": 999}, 404, "not_found", None),
        (
            {"method": "GET", "path": "/a", "roles": ["reader"], "why": 1},
            400,
            "unknown_field",
            "why",
        ),
    ],
)
async def test_explain_validation(
    client: Client, body: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    resp = await client.post("/api/v1/policy/explain", json=body, headers=ROOT)
    await expect_error(resp, status, code, field)


# ------------------------------------------------------------------ audit


async def test_audit_lists_filters_and_pages(client: Client) -> None:
    first = await create(client, "audited-1")
    await create(client, "audited-2", auth=LIMITED)
    await client.post(f"{KEYS}/{first['key']['id']}/revoke", headers=WRITE)

    body = await expect(await client.get("/api/v1/audit", headers=ROOT), 200)
    assert_documented("/api/v1/audit", "get", 200, body)
    actions = [(e["actor"], e["action"], e["key_name"]) for e in body["items"]]
    assert actions[:3] == [
        ("local:root", "revoke", "audited-1"),
        ("local:limited", "create", "audited-2"),
        ("local:root", "create", "audited-1"),
    ]
    assert ("test-setup", "admin_add", None) in actions

    mine = await expect(
        await client.get("/api/v1/audit", params={"actor": "local:limited"}, headers=ROOT), 200
    )
    assert [e["action"] for e in mine["items"]] == ["create"]
    by_key = await expect(
        await client.get("/api/v1/audit", params={"key_id": str(first["key"]["id"])}, headers=ROOT),
        200,
    )
    assert [e["action"] for e in by_key["items"]] == ["revoke", "create"]
    later = await expect(
        await client.get("/api/v1/audit", params={"since": future(1)}, headers=ROOT), 200
    )
    assert later["items"] == []

    seen, cursor = [], None
    while True:
        params = {"limit": "2"} if cursor is None else {"limit": "2", "cursor": cursor}
        page = await expect(await client.get("/api/v1/audit", params=params, headers=ROOT), 200)
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [e["id"] for e in body["items"]]
    assert seen == sorted(seen, reverse=True)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"key_id": "x"}, "key_id"),
        ({"key_id": "-3"}, "key_id"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"limit": "5000"}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
        ({"actor": "a\x00b"}, "actor"),
        ({"key_name": "a\x01b"}, "key_name"),
        ({"key_id": "1", "kind": "x"}, "kind"),
    ],
)
async def test_bad_audit_parameters_are_400(
    client: Client, params: dict[str, str], field: str
) -> None:
    await expect_error(
        await client.get("/api/v1/audit", params=params, headers=ROOT),
        400,
        "invalid_request",
        field,
    )


# ------------------------------------------------------------------ health and OpenAPI


async def test_health_probes_need_no_auth(client: Client, runtime: Runtime) -> None:
    assert await expect(await client.get("/healthz"), 200) == {"status": "ok"}
    ready = await expect(await client.get("/readyz"), 200)
    assert ready == {"status": "ready", "checks": {"store": True, "policy": True}}
    await runtime.store.close()
    assert await expect(await client.get("/healthz"), 200) == {"status": "ok"}
    not_ready = await expect_error(await client.get("/readyz"), 503, "not_ready")
    assert not_ready["checks"] == {"store": False, "policy": True}


async def test_openapi_describes_exactly_the_routes(client: Client) -> None:
    document = await expect(await client.get("/api/v1/openapi.json", headers=ROOT), 200)
    assert document["openapi"] == "3.1.0"
    documented = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    app = client.app
    assert app is not None
    served = {
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert documented == served

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(document):
        _resolve(document, {"$ref": ref})  # every reference resolves
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["operationId"] and operation["responses"], (path, method)
            if path in ("/healthz", "/readyz", "/metrics", "/", "/static/{name}"):
                assert operation["security"] == []
            elif path in PUBLIC_SIGN_IN_PATHS:  # the ways in and the OIDC browser routes
                assert operation["security"] == [] and method == "get"
            elif operation.get("security") == []:  # sign-in: answers bad credentials itself
                assert (path, method) == ("/api/v1/session", "post")
                assert "401" in operation["responses"] and "429" in operation["responses"]
            else:
                assert "401" in operation["responses"] and "403" in operation["responses"]

    errors = await expect(await client.get("/api/v1/nope", headers=ROOT), 404)
    conforms(document, {"$ref": "#/components/schemas/Error"}, errors)


async def test_openapi_needs_admin_credentials(client: Client) -> None:
    await expect_error(await client.get("/api/v1/openapi.json"), 401, "unauthorized")


async def test_every_api_route_requires_credentials(client: Client) -> None:
    document = openapi_document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if operation.get("security") == []:  # probes, the page, its assets, sign-in
                continue
            url = path.replace("{id}", "1")
            resp = await client.request(method.upper(), url, json={})
            await expect_error(resp, 401, "unauthorized")
            assert resp.headers["WWW-Authenticate"].startswith("Basic ")


# ------------------------------------------------------------------ API keys are refused


def _api_key_variants(secret: str) -> list[dict[str, str]]:
    root = "Basic " + base64.b64encode(b"root:root-password").decode()
    return [
        {"X-API-Key": secret},
        {"X-API-Key": secret, "Authorization": root},
        {"x-api-key": "", "Authorization": root},
        {"X_Api_Key": "whatever", "Authorization": root},
        {"Authorization": f"Bearer {secret}"},
        {"Authorization": f"Bearer\t{secret}"},
        {"Authorization": f"ApiKey {secret}"},
        {"Authorization": f"ApiKey\t{secret}"},
        {"Authorization": f"apikey {secret}"},
        {"Authorization": "ApiKey not-even-a-key"},
        {"Authorization": secret},
        {"Authorization": "Basic " + base64.b64encode(f"root:{secret}".encode()).decode()},
        {"Authorization": "Basic\t" + base64.b64encode(f"{secret}:x".encode()).decode()},
    ]


async def test_api_keys_are_refused_on_every_admin_route(client: Client) -> None:
    secret = (await create(client, "intruder", ["operator"]))["secret"]
    document = openapi_document()
    routes = [
        (m.upper(), p.replace("{id}", "1")) for p, item in document["paths"].items() for m in item
    ]
    routes += [("GET", "/no/such/route"), ("PUT", KEYS)]
    for headers in _api_key_variants(secret):
        for method, url in routes:
            resp = await client.request(
                method, url, headers=headers, json={"name": "x", "roles": ["operator"]}
            )
            await expect_error(resp, 403, "api_key_forbidden")
    keys_now = await expect(await client.get(KEYS, headers=ROOT), 200)
    assert [k["name"] for k in keys_now["items"]] == ["intruder"]


async def test_a_backend_jwt_is_not_an_api_key(client: Client) -> None:
    resp = await client.get(KEYS, headers={"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"})
    await expect_error(resp, 401, "unauthorized")


async def test_admin_name_is_the_actor(client: Client) -> None:
    created = await create(client, "acted", auth=LIMITED)
    assert created["key"]["created_by"] == "local:limited"
    events = await expect(
        await client.get("/api/v1/audit", params={"actor": "local:limited"}, headers=ROOT), 200
    )
    assert events["items"][0]["key_name"] == "acted"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.*Z", events["items"][0]["at"])


# ------------------------------------------------------------------ end to end


async def test_admin_calls_bind_the_proxy_of_the_same_process(config_path: Path) -> None:
    from gateway.serve.wiring import running_gateway
    from gateway.settings import load_settings

    echo = f"{REST}/_echo/who"
    async with (
        running_gateway(load_settings(config_path)) as gateway,
        aiohttp.ClientSession() as session,
    ):
        await gateway.runtime.store.add_admin(
            "root", hash_password(ROOT_PASSWORD, n=TEST_COST), (), True, "test-setup"
        )
        admin = f"http://127.0.0.1:{gateway.admin_port}"
        proxy = f"http://127.0.0.1:{gateway.proxy_port}"
        async with session.post(
            f"{admin}{KEYS}", json={"name": "e2e-bot", "roles": ["test-everything"]}, headers=ROOT
        ) as resp:
            created = await expect(resp, 201)
        secret, key_id = created["secret"], created["key"]["id"]
        as_key = {"X-API-Key": secret}

        async with session.get(f"{proxy}{echo}", headers=as_key) as resp:
            echoed = await expect(resp, 200)
        acting = [v for n, v in echoed["headers"] if n.lower() == "x-acting-user"]
        assert acting == ["e2e-bot"]  # the key's name stands in for the user
        # The key itself can never manage keys on the admin listener.
        async with session.post(f"{admin}{KEYS}/revoke-all", headers={**as_key, **ROOT}) as resp:
            await expect_error(resp, 403, "api_key_forbidden")

        async with session.post(f"{admin}{KEYS}/{key_id}/revoke", headers=WRITE) as resp:
            await expect(resp, 200)
        async with session.get(f"{proxy}{echo}", headers=as_key) as resp:
            await expect_error(resp, 401, "key_revoked")
        async with session.post(f"{admin}{KEYS}/reinstate-all", headers=WRITE) as resp:
            assert counts(await expect(resp, 200)) == {"count": 1, "skipped": 0}
        async with session.get(f"{proxy}{echo}", headers=as_key) as resp:
            await expect(resp, 200)
        async with session.post(f"{admin}{KEYS}/revoke-all", headers=WRITE) as resp:
            assert counts(await expect(resp, 200)) == {"count": 1, "skipped": 0}
        async with session.post(f"{admin}{KEYS}/delete-revoked", headers=WRITE) as resp:
            assert counts(await expect(resp, 200)) == {"count": 1, "skipped": 0}
        async with session.get(f"{proxy}{echo}", headers=as_key) as resp:
            await expect_error(resp, 401, "key_unknown")


async def test_metrics_count_proxy_outcomes_and_keys_without_credentials(
    client: Client,
) -> None:
    runtime = client.app[RUNTIME]
    runtime.metrics.refused("key_unknown")
    runtime.metrics.refused("key_unknown")
    runtime.metrics.forwarded(204)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert 'keygate_proxy_requests_total{outcome="key_unknown"} 2.0' in text
    assert 'keygate_proxy_requests_total{outcome="forwarded"} 1.0' in text
    assert 'keygate_upstream_responses_total{class="2xx"} 1.0' in text
    assert f"keygate_keys {float(len(runtime.table))}" in text
    # an API key is still refused here, like everywhere on the admin listener
    resp = await client.get("/metrics", headers={"X-API-Key": "kg_x"})
    assert resp.status == 403


async def test_a_key_can_be_addressed_by_name(client: Client) -> None:
    made = await create(client, "etl nightly")
    by_name = f"{KEYS}/etl%20nightly"
    shown = await expect(await client.get(by_name, headers=ROOT), 200)
    assert shown["id"] == made["key"]["id"]
    edited = await expect(
        await client.patch(by_name, json={"description": "by name"}, headers=ROOT), 200
    )
    assert edited["description"] == "by name"
    revoked = await expect(await client.post(f"{by_name}/revoke", headers=WRITE), 200)
    assert revoked["status"] == "revoked"
    await expect(await client.post(f"{by_name}/reinstate", headers=WRITE), 200)
    resp = await client.delete(by_name, headers=WRITE)
    assert resp.status == 204
    await expect_error(await client.get(by_name, headers=ROOT), 404, "not_found")


# ------------------------------------------------------------------ roll


async def test_roll_issues_a_new_secret_and_the_old_one_works_for_the_overlap(
    client: Client, runtime: Runtime
) -> None:
    created = await create(client, "rolled")
    key_id, old = created["key"]["id"], created["secret"]
    assert created["key"]["rolled_at"] is None
    assert created["key"]["previous_expires_at"] is None

    resp = await client.post(f"{KEYS}/{key_id}/roll", json={"overlap_seconds": 600}, headers=ROOT)
    body = await expect(resp, 200)
    assert_documented("/api/v1/keys/{id}/roll", "post", 200, body)
    new = body["secret"]
    assert keys.is_well_formed(new) and new != old
    key = body["key"]
    assert (key["id"], key["name"], key["roles"]) == (key_id, "rolled", ["reader"])
    assert key["prefix"] == keys.display_prefix(new)
    assert key["rolled_at"] is not None
    moved = datetime.fromisoformat(key["previous_expires_at"].replace("Z", "+00:00"))
    rolled = datetime.fromisoformat(key["rolled_at"].replace("Z", "+00:00"))
    assert (moved - rolled).total_seconds() == pytest.approx(600, abs=1)
    # Both secrets reach the proxy's table before the call returns.
    assert lookup(runtime, old).id == lookup(runtime, new).id == key_id
    shown = await expect(await client.get(f"{KEYS}/{key_id}", headers=ROOT), 200)
    assert shown == key
    # A leaked old secret is still identified (it works until the overlap ends).
    found = await client.post(f"{KEYS}/identify", json={"secret": old}, headers=ROOT)
    assert (await expect(found, 200))["id"] == key_id

    # Without a body: the default overlap (a day); the first old secret is forgotten.
    again = await expect(await client.post(f"{KEYS}/{key_id}/roll", headers=WRITE), 200)
    assert lookup(runtime, old) is None
    assert lookup(runtime, new).id == lookup(runtime, again["secret"]).id == key_id
    moved = datetime.fromisoformat(again["key"]["previous_expires_at"].replace("Z", "+00:00"))
    rolled = datetime.fromisoformat(again["key"]["rolled_at"].replace("Z", "+00:00"))
    assert (moved - rolled).total_seconds() == pytest.approx(86_400, abs=1)

    audit = await expect(
        await client.get("/api/v1/audit", params={"key_id": str(key_id)}, headers=ROOT), 200
    )
    assert [e["action"] for e in audit["items"]] == ["roll", "identify", "roll", "create"]
    dumped = json.dumps(audit)
    for secret in (old, new, again["secret"]):
        assert secret not in dumped and keys.digest(secret).hex() not in dumped


@pytest.mark.parametrize("overlap", [-1, 30 * 86_400 + 1, 1.5, "60", True])
async def test_roll_refuses_a_bad_overlap(client: Client, overlap: object) -> None:
    created = await create(client, "bad-overlap")
    resp = await client.post(
        f"{KEYS}/{created['key']['id']}/roll", json={"overlap_seconds": overlap}, headers=ROOT
    )
    await expect_error(resp, 400, "invalid_request", "overlap_seconds")


async def test_roll_is_scoped_by_grants_and_unknown_ids(client: Client) -> None:
    created = await create(client, "operator-key", ["operator"])
    resp = await client.post(f"{KEYS}/{created['key']['id']}/roll", json={}, headers={**LIMITED})
    await expect_error(resp, 403, "grant_forbidden")
    await expect_error(
        await client.post(f"{KEYS}/999/roll", json={}, headers=ROOT), 404, "not_found"
    )
    mine = await create(client, "reader-key", ["reader"], auth=LIMITED)
    resp = await client.post(f"{KEYS}/{mine['key']['id']}/roll", json={}, headers=LIMITED)
    await expect(resp, 200)


# ------------------------------------------------------------------ per-key rate limit


async def test_a_keys_own_rate_limit_is_set_shown_edited_and_cleared(
    client: Client, runtime: Runtime
) -> None:
    resp = await client.post(
        KEYS,
        json={
            "name": "limited",
            "roles": ["reader"],
            "rate_limit": {"requests": 100, "per": "minute"},
        },
        headers=ROOT,
    )
    body = await expect(resp, 201)
    assert_documented("/api/v1/keys", "post", 201, body)
    assert body["key"]["rate_limit"] == {"requests": 100, "per": "minute", "burst": 100}
    key_id, secret = body["key"]["id"], body["secret"]
    record = lookup(runtime, secret)
    assert (record.rate_limit.requests, record.rate_limit.per) == (100, "minute")

    limit = {"requests": 5, "per": "second", "burst": 2}
    edited = await expect(
        await client.patch(f"{KEYS}/{key_id}", json={"rate_limit": limit}, headers=ROOT), 200
    )
    assert_documented("/api/v1/keys/{id}", "patch", 200, edited)
    assert edited["rate_limit"] == limit
    assert lookup(runtime, secret).rate_limit.burst == 2
    cleared = await expect(
        await client.patch(f"{KEYS}/{key_id}", json={"rate_limit": None}, headers=ROOT), 200
    )
    assert cleared["rate_limit"] is None and lookup(runtime, secret).rate_limit is None
    plain = await create(client, "plain")
    assert plain["key"]["rate_limit"] is None


@pytest.mark.parametrize(
    "limit",
    [
        {"requests": 0, "per": "minute"},
        {"requests": 10, "per": "week"},
        {"requests": 10, "per": "minute", "burst": 0},
        {"requests": 10, "per": "minute", "extra": 1},
        {"requests": "10", "per": "minute"},
        [10, "minute"],
        "10/minute",
    ],
)
async def test_bad_rate_limits_are_400_naming_the_field(client: Client, limit: object) -> None:
    resp = await client.post(
        KEYS, json={"name": "bad-limit", "roles": ["reader"], "rate_limit": limit}, headers=ROOT
    )
    await expect_error(resp, 400, "invalid_request", "rate_limit")


async def test_status_expiring_lists_keys_within_the_warning_window(
    client: Client, runtime: Runtime
) -> None:
    soon = {"name": "soon", "roles": ["reader"], "expires_at": future(3)}
    later = {"name": "later", "roles": ["reader"], "expires_at": future(30)}
    for body in (soon, later):
        await expect(await client.post(KEYS, json=body, headers=ROOT), 201)
    await create(client, "never")
    listed = await expect(await client.get(KEYS, params={"status": "expiring"}, headers=ROOT), 200)
    assert_documented("/api/v1/keys", "get", 200, listed)
    assert [item["name"] for item in listed["items"]] == ["soon"]  # warn_days: 14 by default
    session = await expect(await client.get("/api/v1/session", headers=ROOT), 200)
    assert session["expiry_warn_days"] == 14


# ------------------------------------------------------------------ models and schema agree


async def test_all_digit_names_are_refused_by_the_api_and_by_every_schema(client: Client) -> None:
    schemas = openapi_document()["components"]["schemas"]
    for body in ("KeyCreate", "KeyPatch"):
        pattern = schemas[body]["properties"]["name"].get("pattern")
        assert pattern is not None, body
        assert re.search(pattern, "0") is None and re.search(pattern, " a") is None, body
        assert re.search(pattern, "a b") and re.search(pattern, "0a"), body
    key_id = (await create(client, "renamed"))["key"]["id"]
    for name in ("0", "007"):
        resp = await client.post(KEYS, json={"name": name, "roles": ["reader"]}, headers=ROOT)
        await expect_error(resp, 400, "invalid_request", "name")
        resp = await client.patch(f"{KEYS}/{key_id}", json={"name": name}, headers=ROOT)
        await expect_error(resp, 400, "invalid_request", "name")


async def test_roll_refuses_a_null_overlap_as_its_schema_does(client: Client) -> None:
    key_id = (await create(client, "rolled"))["key"]["id"]
    schema = openapi_document()["components"]["schemas"]["KeyRoll"]
    assert schema["properties"]["overlap_seconds"]["type"] == "integer"
    resp = await client.post(f"{KEYS}/{key_id}/roll", json={"overlap_seconds": None}, headers=ROOT)
    error = await expect_error(resp, 400, "invalid_request", "overlap_seconds")
    assert error["message"].startswith("overlap_seconds: "), error
    resp = await client.post(f"{KEYS}/{key_id}/roll", json={}, headers=ROOT)
    await expect(resp, 200)


@pytest.mark.parametrize(
    "url", [f"{KEYS}?cursor=", f"{KEYS}?sort=name&cursor=", "/api/v1/audit?cursor="]
)
async def test_an_empty_cursor_is_the_first_page(client: Client, url: str) -> None:
    await create(client, "first")
    body = await expect(await client.get(url, headers=ROOT), 200)
    assert body["items"], body


async def test_errors_name_the_nested_location(client: Client) -> None:
    body = {"name": "ok", "roles": ["reader"], "rate_limit": {"requests": 0, "per": "minute"}}
    error = await expect_error(
        await client.post(KEYS, json=body, headers=ROOT), 400, "invalid_request", "rate_limit"
    )
    assert error["message"].startswith("rate_limit.requests: "), error
    body = {"name": "ok", "roles": ["reader", 7]}
    error = await expect_error(
        await client.post(KEYS, json=body, headers=ROOT), 400, "invalid_request", "roles"
    )
    assert error["message"].startswith("roles[1]: "), error


async def test_every_key_answer_is_an_instance_of_the_key_model(client: Client) -> None:
    import msgspec

    from gateway.admin.models import Key, KeyCreated

    body = {"name": "modelled", "roles": ["writer"], "expires_at": future()}
    body["rate_limit"] = {"requests": 5, "per": "minute"}
    created = await expect(await client.post(KEYS, json=body, headers=ROOT), 201)
    msgspec.convert(created, KeyCreated)
    listed = await expect(await client.get(KEYS, headers=ROOT), 200)
    for key in listed["items"]:
        msgspec.convert(key, Key)


async def test_a_number_with_a_zero_fraction_is_the_integer_json_schema_says(
    client: Client,
) -> None:
    key_id = (await create(client, "whole"))["key"]["id"]
    resp = await client.post(f"{KEYS}/{key_id}/roll", json={"overlap_seconds": 60.0}, headers=ROOT)
    await expect(resp, 200)
    resp = await client.post(f"{KEYS}/{key_id}/roll", json={"overlap_seconds": 60.5}, headers=ROOT)
    await expect_error(resp, 400, "invalid_request", "overlap_seconds")


async def test_an_empty_status_or_sort_is_allowed_by_the_schema_as_by_the_api(
    client: Client,
) -> None:
    parameters = openapi_document()["paths"][KEYS]["get"]["parameters"]
    for parameter in parameters:
        if parameter["name"] in ("status", "sort"):
            assert "" in parameter["schema"]["enum"], parameter
    await expect(await client.get(f"{KEYS}?status=&sort=", headers=ROOT), 200)


async def test_the_schema_refuses_the_descriptions_the_api_refuses(client: Client) -> None:
    schema = openapi_document()["components"]["schemas"]["KeyCreate"]
    pattern = schema["properties"]["description"]["anyOf"][0]["pattern"]
    for text in ("a\x1bb", "a\u2028b", "a\x85b"):
        assert re.search(pattern, text) is None, text
        body = {"name": "described", "roles": ["reader"], "description": text}
        resp = await client.post(KEYS, json=body, headers=ROOT)
        await expect_error(resp, 400, "invalid_request", "description")
    assert re.search(pattern, "tabs\tand\nnewlines")


@pytest.mark.parametrize(
    ("description", "words"),
    [
        ("d" * 1001, "at most 1000 characters"),
        ("bell\x07here", "control characters"),
    ],
    ids=["too long", "control character"],
)
async def test_a_bad_description_is_refused_in_its_own_words(
    client: Client, description: str, words: str
) -> None:
    """The message says what is wrong with the description (the page shows it by the field)."""
    body = {"name": "described", "roles": ["reader"], "description": description}
    error = await expect_error(
        await client.post(KEYS, json=body, headers=ROOT), 400, "invalid_request", "description"
    )
    assert error["field"] == "description" and words in error["message"], error
    key_id = (await create(client, "described-later"))["key"]["id"]
    resp = await client.patch(f"{KEYS}/{key_id}", json={"description": description}, headers=ROOT)
    error = await expect_error(resp, 400, "invalid_request", "description")
    assert error["field"] == "description" and words in error["message"], error
