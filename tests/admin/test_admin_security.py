"""Issue 9, admin side: CSRF, security headers, grant scoping, no secret logged or echoed."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.http import http_request, raw_request
from test_admin_api import (
    KEYS,
    LIMITED,
    LIMITED_PASSWORD,
    ROOT,
    ROOT_PASSWORD,
    TEST_COST,
    Client,
    ClientFactory,
    counts,
    create,
    expect,
    expect_error,
    future,
    make_app,
)

from gateway.admin.app import create_admin_app
from gateway.admin.basic_auth import Authenticator
from gateway.admin.openapi import openapi_document
from gateway.admin.passwords import hash_password
from gateway.admin.throttle import LoginThrottle
from gateway.keys import keyformat as keys
from gateway.proxy import web_internals
from gateway.runtime.context import Runtime
from gateway.serve.wiring import RunningGateway
from gateway.store.base import KeyChanges
from gateway.store.sqlite import SqliteKeyStore

JSON = {"Content-Type": "application/json"}
NONE_GRANTS = {"Authorization": aiohttp.encode_basic_auth("nogrants", "nogrants-password")}


def app_with(runtime: Runtime, **throttle: Any) -> web.Application:
    """The admin app with a throttle tuned by keyword arguments (fast hold-backs)."""
    settings: dict[str, Any] = {"delay_base": 0.001, "delay_max": 0.001, **throttle}
    authenticator = Authenticator(runtime.store, LoginThrottle(**settings), dummy_cost=TEST_COST)
    return create_admin_app(runtime, authenticator=authenticator)


@pytest.fixture
async def runtime(runtime: Runtime) -> Runtime:
    """The shared runtime (tests/admin/conftest.py), with an admin who may grant no role."""
    await runtime.store.add_admin(
        "nogrants", hash_password("nogrants-password", n=TEST_COST), (), False, "test-setup"
    )
    return runtime


def origin_of(client: Client) -> str:
    """The admin listener's own origin as a browser would send it."""
    return f"http://{client.server.host}:{client.server.port}"


async def state_changing_requests(client: Client) -> list[tuple[str, str, bytes]]:
    """(method, path, body) of every state-changing route, on a fresh key."""
    unique = time.monotonic_ns()
    key_id = (await create(client, f"target-{unique}"))["key"]["id"]
    made = {"name": f"made-{unique}", "roles": ["reader"]}
    return [
        ("POST", KEYS, json.dumps(made).encode()),
        ("PATCH", f"{KEYS}/{key_id}", json.dumps({"description": "changed"}).encode()),
        ("POST", f"{KEYS}/{key_id}/revoke", b""),
        ("POST", f"{KEYS}/{key_id}/reinstate", b""),
        ("DELETE", f"{KEYS}/{key_id}", b""),
        ("POST", f"{KEYS}/revoke-all", b""),
        ("POST", f"{KEYS}/reinstate-all", b""),
        ("POST", f"{KEYS}/delete-revoked", b""),
    ]


# ------------------------------------------------------------------ 7: cross-site requests


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_state_changing_requests_need_a_json_content_type(
    client: Client, runtime: Runtime, content_type: str | None
) -> None:
    for method, path, body in await state_changing_requests(client):
        headers = dict(ROOT)
        if content_type is not None:
            headers["Content-Type"] = content_type
        before = await runtime.store.list_keys()
        resp = await client.request(method, path, data=body, headers=headers)
        await expect_error(resp, 403, "csrf")
        assert await runtime.store.list_keys() == before, (method, path)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},
        {"Origin": "https://127.0.0.1"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_cross_origin_state_changes_are_refused(
    client: Client, runtime: Runtime, headers: dict[str, str]
) -> None:
    for method, path, body in await state_changing_requests(client):
        before = await runtime.store.list_keys()
        resp = await client.request(method, path, data=body, headers={**ROOT, **JSON, **headers})
        await expect_error(resp, 403, "csrf")
        assert await runtime.store.list_keys() == before, (method, path)


async def test_same_origin_and_non_browser_state_changes_pass(client: Client) -> None:
    for extra in ({}, {"Origin": origin_of(client)}, {"Sec-Fetch-Site": "same-origin"}):
        for extra_site in ({}, {"Sec-Fetch-Site": "none"}):
            requests = await state_changing_requests(client)
            for method, path, body in requests:
                resp = await client.request(
                    method, path, data=body, headers={**ROOT, **JSON, **extra, **extra_site}
                )
                assert resp.status in (200, 201, 204), (method, path, await resp.text())


async def test_reads_from_other_origins_are_not_refused(client: Client) -> None:
    resp = await client.get(KEYS, headers={**ROOT, "Origin": "https://evil.example"})
    await expect(resp, 200)


EXPECTED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def assert_security_headers(headers: Any) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert headers.get(name) == value, (name, dict(headers))
    assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", "")
    server = headers.get("Server", "")
    assert "aiohttp" not in server.lower() and "python" not in server.lower(), server


async def test_every_admin_answer_has_security_headers(client: Client) -> None:
    key_id = (await create(client, "hdr"))["key"]["id"]
    for method, path, headers in (
        ("GET", KEYS, ROOT),
        ("GET", KEYS, {}),
        ("GET", "/api/v1/nowhere", ROOT),
        ("PUT", KEYS, ROOT),
        ("GET", "/healthz", {}),
        ("GET", "/metrics", {}),
        ("DELETE", f"{KEYS}/{key_id}", {**ROOT, **JSON}),
        ("POST", f"{KEYS}/revoke-all", ROOT),
    ):
        resp = await client.request(method, path, headers=headers)
        await resp.read()
        assert_security_headers(resp.headers)


# ------------------------------------------------------------------ 5: parser refusals


async def test_admin_parser_refusals_are_json_and_never_echo_the_header(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    assert gateway.admin_port is not None
    caplog.set_level(logging.DEBUG)
    password = "hunter2-SECRET-pw"
    token = base64.b64encode(f"root:{password}".encode()).decode()
    for raw in (
        f"GET /api/v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\x01\r\n\r\n",
        f"GET /api/v1/keys HTTP/1.1\r\nHost: x\nAuthorization: Basic {token}\n\n",
        f"GET /api/v1/keys HTTP/1.1\r\nHost: x\r\nX-API-Key: kg_{password}\x7f\r\n\r\n",
    ):
        response = await raw_request(gateway.admin_port, raw.encode("latin-1"))
        assert response.status == 400, response
        assert response.header_values("Content-Type")[0].startswith("application/json")
        body = response.json()
        assert set(body) == {"error", "message"}
        assert password not in response.body.decode("latin-1")
        assert token not in response.body.decode("latin-1")
        assert_security_headers(dict(response.headers))
    logged = "\n".join(logging.Formatter().format(record) for record in caplog.records)
    assert password not in logged and token not in logged


async def test_admin_runner_uses_the_json_error_server(runtime: Runtime) -> None:
    runner = web_internals.JsonErrorAppRunner(make_app(runtime))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        response = await raw_request(port, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.status == 400 and response.json()["error"] == "bad_request"
        ok = await raw_request(port, http_request("GET", "/healthz"))
        assert ok.status == 200 and ok.json() == {"status": "ok"}
    finally:
        await runner.cleanup()


async def test_failed_login_records_only_existing_names(client: Client, runtime: Runtime) -> None:
    typed = "MyPassw0rd-typed-as-name"
    resp = await client.get(KEYS, headers={"Authorization": aiohttp.encode_basic_auth(typed, "x")})
    await expect_error(resp, 401, "unauthorized")
    resp = await client.get(KEYS, headers={"Authorization": aiohttp.encode_basic_auth("root", "x")})
    await expect_error(resp, 401, "unauthorized")
    failed = [e for e in await runtime.store.list_audit() if e.action == "admin_login_failed"]
    assert [e.actor for e in failed] == ["local:root", "?"]
    assert typed not in json.dumps([[e.actor, e.details] for e in failed])


async def test_no_secret_is_logged_or_echoed_on_any_refusal(
    aiohttp_client: ClientFactory, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await aiohttp_client(app_with(runtime, free_failures=2, lockout_base=30))
    secret = (await create(client, "leaky", ["reader"]))["secret"]
    caplog.clear()
    typed = "TypedPassword-in-name-1"
    wrong = "wrong-Password-77"
    answers: list[str] = []
    for method, path, headers, body in (
        ("GET", f"{KEYS}?limit=0", ROOT, b""),  # 400
        ("POST", f"{KEYS}/identify", {**ROOT, **JSON}, b'{"secret": "kg_' + b"z" * 20 + b'"}'),
        ("GET", KEYS, {"X-API-Key": secret, **ROOT}, b""),  # 403 api key
        ("POST", f"{KEYS}/revoke-all", {**ROOT, "Origin": "https://evil.example"}, b""),  # 403
        ("GET", KEYS, {"Authorization": aiohttp.encode_basic_auth(typed, ROOT_PASSWORD)}, b""),
        ("GET", KEYS, {"Authorization": aiohttp.encode_basic_auth("root", wrong)}, b""),
        ("GET", KEYS, {"Authorization": aiohttp.encode_basic_auth("root", wrong)}, b""),  # 429
        ("GET", KEYS, {"Authorization": aiohttp.encode_basic_auth(typed, wrong)}, b""),  # 429
    ):
        resp = await client.request(method, path, headers=headers, data=body)
        text = await resp.text()
        assert resp.status >= 400, (method, path, text)
        answers.append(text + json.dumps(dict(resp.headers)))
    assert sum("too_many_attempts" in answer for answer in answers) == 2
    everything = "\n".join(answers) + "\n".join(
        logging.Formatter().format(record) for record in caplog.records
    )
    audit = json.dumps([[e.actor, e.details] for e in await runtime.store.list_audit(limit=1000)])
    for needle in (secret, typed, wrong, ROOT_PASSWORD, LIMITED_PASSWORD, "kg_zzzz"):
        assert needle not in everything, needle
        assert needle not in audit, needle


# ------------------------------------------------------------------ 9: grants scope every action


async def _keys_of_every_kind(client: Client) -> dict[str, int]:
    return {
        name: (await create(client, name, roles))["key"]["id"]
        for name, roles in (
            ("r1", ["reader"]),
            ("r2", ["reader"]),
            ("op", ["operator"]),
            ("mixed", ["reader", "writer"]),
        )
    }


async def test_single_key_actions_outside_the_grants_are_refused(
    client: Client, runtime: Runtime
) -> None:
    ids = await _keys_of_every_kind(client)
    for key in ("op", "mixed"):
        key_id = ids[key]
        before = await runtime.store.get_key(key_id)
        for method, path, body in (
            ("PATCH", f"{KEYS}/{key_id}", {"description": "mine now"}),
            ("POST", f"{KEYS}/{key_id}/revoke", None),
            ("POST", f"{KEYS}/{key_id}/reinstate", None),
            ("DELETE", f"{KEYS}/{key_id}", None),
        ):
            resp = await client.request(method, path, json=body, headers={**LIMITED, **JSON})
            await expect_error(resp, 403, "grant_forbidden")
        assert await runtime.store.get_key(key_id) == before
    # Within the grants the same actions work.
    resp = await client.post(f"{KEYS}/{ids['r1']}/revoke", headers={**LIMITED, **JSON})
    assert (await expect(resp, 200))["status"] == "revoked"
    resp = await client.patch(f"{KEYS}/{ids['r1']}", json={"description": "ok"}, headers=LIMITED)
    await expect(resp, 200)
    resp = await client.delete(f"{KEYS}/{ids['r1']}", headers={**LIMITED, **JSON})
    await expect(resp, 204)


async def test_batches_act_only_on_keys_within_the_grants(client: Client, runtime: Runtime) -> None:
    ids = await _keys_of_every_kind(client)
    resp = await client.post(f"{KEYS}/revoke-all", headers={**LIMITED, **JSON})
    assert counts(await expect(resp, 200)) == {"count": 2, "skipped": 2}
    statuses = {row.name: row.status for row in await runtime.store.list_keys()}
    assert statuses == {"r1": "revoked", "r2": "revoked", "op": "active", "mixed": "active"}

    resp = await client.post(f"{KEYS}/revoke-all", headers={**NONE_GRANTS, **JSON})
    assert counts(await expect(resp, 200)) == {"count": 0, "skipped": 2}
    resp = await client.post(f"{KEYS}/revoke-all", headers={**ROOT, **JSON})
    assert counts(await expect(resp, 200)) == {"count": 2, "skipped": 0}
    resp = await client.post(f"{KEYS}/reinstate-all", headers={**LIMITED, **JSON})
    assert counts(await expect(resp, 200)) == {"count": 2, "skipped": 2}
    resp = await client.post(f"{KEYS}/revoke-all", headers={**LIMITED, **JSON})
    assert counts(await expect(resp, 200)) == {"count": 2, "skipped": 0}
    resp = await client.post(f"{KEYS}/delete-revoked", headers={**LIMITED, **JSON})
    assert counts(await expect(resp, 200)) == {"count": 2, "skipped": 2}
    assert {row.name for row in await runtime.store.list_keys()} == {"op", "mixed"}

    batches = [
        e for e in await runtime.store.list_audit() if e.action in ("revoke_all", "delete_revoked")
    ]
    assert batches[0].action == "delete_revoked" and batches[0].actor == "local:limited"
    assert sorted(batches[0].details["key_ids"]) == sorted([ids["r1"], ids["r2"]])
    assert batches[0].details["count"] == 2 and batches[0].details["skipped"] == 2


# ------------------------------------------------------------------ 10: smaller defects


async def test_reinstating_an_expired_key_is_409(client: Client, runtime: Runtime) -> None:
    created = await create(client, "soon-gone")
    key_id = created["key"]["id"]
    await client.post(f"{KEYS}/{key_id}/revoke", headers={**ROOT, **JSON})
    # Expire it behind the API's back (a past expiry cannot be set through it).
    await runtime.store.update_key(
        key_id,
        KeyChanges(expires_at=time.time() - 5),
        "test",
    )
    resp = await client.post(f"{KEYS}/{key_id}/reinstate", headers={**ROOT, **JSON})
    error = await expect_error(resp, 409, "key_expired")
    assert "expire" in error["message"]
    row = await runtime.store.get_key(key_id)
    assert row is not None and row.status == "revoked"


async def test_audit_details_carry_iso_times_only(client: Client) -> None:
    expires = future(5)
    key_id = (await create(client, "timed"))["key"]["id"]
    await client.patch(f"{KEYS}/{key_id}", json={"expires_at": expires}, headers=ROOT)
    resp = await client.post(
        KEYS, json={"name": "t2", "roles": ["reader"], "expires_at": expires}, headers=ROOT
    )
    await expect(resp, 201)
    body = await expect(await client.get("/api/v1/audit", headers=ROOT), 200)

    def numbers(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [n for item in value.values() for n in numbers(item)]
        if isinstance(value, list):
            return [n for item in value for n in numbers(item)]
        return [value] if isinstance(value, float) else []

    assert numbers([item["details"] for item in body["items"]]) == []
    created = next(i for i in body["items"] if i["action"] == "create" and i["key_name"] == "t2")
    assert created["details"]["expires_at"].endswith("Z")


async def test_search_matches_the_display_prefix(client: Client) -> None:
    created = await create(client, "by-prefix")
    await create(client, "other")
    prefix = created["key"]["prefix"]
    body = await expect(await client.get(KEYS, params={"q": prefix}, headers=ROOT), 200)
    assert [item["name"] for item in body["items"]] == ["by-prefix"]


async def test_identify_names_the_key_of_a_leaked_secret(client: Client, runtime: Runtime) -> None:
    created = await create(client, "leaked", ["operator"])
    secret = created["secret"]
    for auth in (ROOT, LIMITED):  # any admin may identify
        resp = await client.post(f"{KEYS}/identify", json={"secret": secret}, headers=auth)
        body = await expect(resp, 200)
        assert body["id"] == created["key"]["id"] and body["name"] == "leaked"
        assert secret not in json.dumps(body)
    unknown = keys.generate_key()
    resp = await client.post(f"{KEYS}/identify", json={"secret": unknown}, headers=ROOT)
    error = await expect_error(resp, 404, "not_found")
    assert unknown not in json.dumps(error)
    for bad in ("hello", secret + "A", secret[:-1], 7, None):  # not a key's shape: 400
        resp = await client.post(f"{KEYS}/identify", json={"secret": bad}, headers=ROOT)
        error = await expect_error(resp, 400, "invalid_request", "secret")
        assert str(bad) not in error["message"] or bad in (7, None)
    # The shape the document states, and a checksum that fails (no pattern can say): 422.
    mistyped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    pattern = openapi_document()["components"]["schemas"]["Identify"]["properties"]["secret"]
    assert re.search(pattern["pattern"], mistyped) and re.search(pattern["pattern"], secret)
    assert not re.search(pattern["pattern"], secret + "A")
    resp = await client.post(f"{KEYS}/identify", json={"secret": mistyped}, headers=ROOT)
    error = await expect_error(resp, 422, "invalid_request", "secret")
    assert mistyped not in error["message"] and "checksum" in error["message"]
    resp = await client.post(f"{KEYS}/identify", json={"key": secret}, headers=ROOT)
    await expect_error(resp, 400, "unknown_field")
    events = json.dumps([[e.actor, e.details] for e in await runtime.store.list_audit()])
    assert secret not in events


async def test_a_final_newline_is_outside_every_shape(client: Client) -> None:
    # Python's "$" (msgspec's, jsonschema's) also matches before a final "\n": a secret with
    # one passed the model and got the checksum's 422; it is a 400 like any other shape.
    secret = (await create(client, "newline"))["secret"]
    mistyped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in (secret + "\n", mistyped + "\n"):
        resp = await client.post(f"{KEYS}/identify", json={"secret": bad}, headers=ROOT)
        await expect_error(resp, 400, "invalid_request", "secret")
    resp = await client.post(KEYS, json={"name": "nl\n", "roles": ["reader"]}, headers=ROOT)
    await expect_error(resp, 400, "invalid_request", "name")
    explain = {"method": "GET\n", "path": "/x", "roles": ["reader"]}
    resp = await client.post("/api/v1/policy/explain", json=explain, headers=ROOT)
    await expect_error(resp, 400, "invalid_request", "method")
    # Every pattern of the document, checked as Python checks it: the shape, and not with "\n".
    document = openapi_document()
    schemas = document["components"]["schemas"]
    create_op = document["paths"][KEYS]["post"]
    list_op = document["paths"][KEYS]["get"]
    shapes = [
        (schemas["Identify"]["properties"]["secret"], secret),
        (schemas["KeyCreated"]["properties"]["secret"], secret),
        (schemas["KeyCreate"]["properties"]["name"], "nl"),
        (schemas["ExplainRequest"]["properties"]["method"], "GET"),
        (create_op["parameters"][0]["schema"], "retry-1"),
        *((param["schema"], "abc") for param in list_op["parameters"] if param["name"] == "q"),
        *((param["schema"], "abc") for param in list_op["parameters"] if param["name"] == "cursor"),
    ]
    assert len(shapes) == 7
    for schema, good in shapes:
        assert re.search(schema["pattern"], good), (schema, good)
        assert not re.search(schema["pattern"], good + "\n"), schema


async def test_identify_is_in_the_openapi_document(client: Client) -> None:
    document = await expect(await client.get("/api/v1/openapi.json", headers=ROOT), 200)
    assert "post" in document["paths"]["/api/v1/keys/identify"]


# ------------------------------------------------------------------ 8: throttling per account


async def _guess_from(port: int, address: str, name: str, password: str) -> int:
    """One GET /api/v1/keys from a given loopback address; return the status."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(
            f"http://127.0.0.1:{port}{KEYS}",
            headers={"Authorization": aiohttp.encode_basic_auth(name, password)},
        ) as resp,
    ):
        await resp.read()
        return resp.status


@pytest.fixture
async def listener(runtime: Runtime) -> AsyncIterator[tuple[int, Runtime]]:
    """An admin listener on 127.0.0.1 reachable from any 127.x address, strict throttle."""
    app = app_with(runtime, free_failures=5, lockout_base=0.2, account_lockout_max=0.6)
    runner = web_internals.JsonErrorAppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # reached from any 127.x source address
    await site.start()
    try:
        yield runner.addresses[0][1], runtime
    finally:
        await runner.cleanup()


async def test_distributed_guessing_against_one_admin_is_slowed(
    listener: tuple[int, Runtime],
) -> None:
    port, runtime = listener
    statuses = []
    for index in range(20):
        for _ in range(5):
            statuses.append(await _guess_from(port, f"127.0.9.{index + 1}", "root", "guess"))
    assert statuses.count(401) <= 8, statuses
    assert statuses.count(429) >= 90
    throttled = [
        e for e in await runtime.store.list_audit(limit=1000) if e.action == "admin_login_throttled"
    ]
    assert len(throttled) == statuses.count(429)  # every throttled attempt is audited
    assert {e.actor for e in throttled} == {"local:root"}


async def test_an_attacker_cannot_keep_a_real_admin_out_beyond_the_bound(
    listener: tuple[int, Runtime],
) -> None:
    port, _ = listener
    for index in range(30):
        await _guess_from(port, f"127.0.8.{index + 1}", "root", "guess")
    started = time.monotonic()
    while await _guess_from(port, "127.0.7.1", "root", ROOT_PASSWORD) != 200:
        assert time.monotonic() - started < 1.0  # account_lockout_max is 0.6 s
        await asyncio.sleep(0.05)


async def test_an_admin_is_never_locked_out_of_an_address_it_logged_in_from(
    aiohttp_client: ClientFactory, runtime: Runtime
) -> None:
    # Lockouts long enough that re-locking would keep the account shut for the whole test.
    app = app_with(runtime, free_failures=5, lockout_base=30, account_lockout_max=60)
    runner = web_internals.JsonErrorAppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        assert await _guess_from(port, "127.0.7.1", "root", ROOT_PASSWORD) == 200
        for index in range(10):  # an attacker elsewhere locks the account
            await _guess_from(port, f"127.0.6.{index + 1}", "root", "guess")
        assert await _guess_from(port, "127.0.6.99", "root", ROOT_PASSWORD) == 429
        # The admin's own address is spared: no wait at all, however often it is re-locked.
        assert await _guess_from(port, "127.0.7.1", "root", ROOT_PASSWORD) == 200
        await _guess_from(port, "127.0.6.1", "root", "guess")
        assert await _guess_from(port, "127.0.7.1", "root", ROOT_PASSWORD) == 200
    finally:
        await runner.cleanup()


async def test_failures_are_counted_in_the_store_across_processes(
    aiohttp_client: ClientFactory, runtime: Runtime, tmp_path: Path
) -> None:
    other = await make_runtime_on(runtime, tmp_path)
    try:
        first = await aiohttp_client(app_with(runtime, lockout_base=30))
        second = await aiohttp_client(app_with(other, lockout_base=30))
        wrong = {"Authorization": aiohttp.encode_basic_auth("root", "wrong")}
        for client in (first, second, first, second, first):
            await expect_error(await client.get(KEYS, headers=wrong), 401, "unauthorized")
        await expect_error(await second.get(KEYS, headers=ROOT), 429, "too_many_attempts")
    finally:
        await other.store.close()


async def make_runtime_on(runtime: Runtime, tmp_path: Path) -> Runtime:
    """A second runtime (another store connection) on the same SQLite file."""
    assert isinstance(runtime.store, SqliteKeyStore)
    store = SqliteKeyStore(runtime.store.path)
    await store.open()
    other = Runtime(settings=runtime.settings, store=store, policy=runtime.policy)
    await other.load_table()
    return other
