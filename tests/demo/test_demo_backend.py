"""Behaviour of the demo 1Integrate-like backend."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.admin.identity import TokenInvalid, TokenVerifier
from gateway.demo.backend import (
    BLOB_MODULUS,
    DEMO_STATE,
    STREAM_CHUNK_SIZE,
    TOKEN_AUDIENCE,
    TOKEN_ISSUER,
    blob_chunk,
    create_demo_backend_app,
    runner_url,
    start_demo_backend,
)

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

REST = "/1Integrate/rest"
ALICE = {"X-Acting-User": "alice"}
BOB = {"X-Acting-User": "bob"}


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> Client:
    return await aiohttp_client(create_demo_backend_app())


async def login(client: Client, username: str = "admin", password: str = "admin") -> str:
    resp = await client.post(f"{REST}/token", json={"username": username, "password": password})
    assert resp.status == 200
    token = (await resp.json())["token"]
    assert isinstance(token, str)
    return token


async def json_of(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


# --------------------------------------------------------------------------- login


async def test_login_with_demo_user_returns_a_jwt_shaped_token(client: Client) -> None:
    token = await login(client)
    parts = token.split(".")
    assert len(parts) == 3
    assert token.startswith("eyJ")
    assert not token.startswith("kg_")


async def test_login_with_wrong_password_is_401_json(client: Client) -> None:
    resp = await client.post(f"{REST}/token", json={"username": "admin", "password": "nope"})
    body = await json_of(resp, 401)
    assert body["error"] == "invalid_credentials"


async def test_login_with_unknown_user_is_401_json(client: Client) -> None:
    resp = await client.post(f"{REST}/token", json={"username": "mallory", "password": "admin"})
    assert (await json_of(resp, 401))["error"] == "invalid_credentials"


async def test_login_with_malformed_body_is_400_json(client: Client) -> None:
    resp = await client.post(f"{REST}/token", data=b"not json")
    assert (await json_of(resp, 400))["error"] == "invalid_request"


async def test_each_login_gives_a_distinct_token(client: Client) -> None:
    assert await login(client) != await login(client)


# --------------------------------------------------------------------------- authentication


async def test_request_without_credentials_is_401_unauthenticated(client: Client) -> None:
    resp = await client.get(f"{REST}/rules/")
    body = await json_of(resp, 401)
    assert body == {"error": "unauthenticated", "message": body["message"]}
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_unknown_bearer_token_is_401_invalid_token(client: Client) -> None:
    resp = await client.get(f"{REST}/rules/", headers={"Authorization": "Bearer eyJ.x.y"})
    assert (await json_of(resp, 401))["error"] == "invalid_token"


async def test_bearer_token_from_login_is_accepted(client: Client) -> None:
    token = await login(client)
    resp = await client.get(f"{REST}/rules/", headers={"Authorization": f"Bearer {token}"})
    assert (await json_of(resp, 200))["type"] == "folder"


async def test_two_acting_user_headers_are_refused(client: Client) -> None:
    headers = [("X-Acting-User", "alice"), ("X-Acting-User", "bob")]
    resp = await client.get(f"{REST}/rules/", headers=headers)
    assert (await json_of(resp, 400))["error"] == "ambiguous_acting_user"


async def test_acting_user_header_name_is_configurable(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_demo_backend_app("X-Remote-Actor"))
    resp = await client.get(f"{REST}/rules/", headers=ALICE)
    assert resp.status == 401
    resp = await client.put(f"{REST}/rules/r1", json={}, headers={"X-Remote-Actor": "carol"})
    assert (await json_of(resp, 201))["createdBy"] == "carol"


async def test_unknown_route_is_json_404_and_wrong_method_json_405(client: Client) -> None:
    resp = await client.get(f"{REST}/nothing-here", headers=ALICE)
    assert (await json_of(resp, 404))["error"] == "not_found"
    resp = await client.patch(f"{REST}/rules/r1", headers=ALICE)
    assert (await json_of(resp, 405))["error"] == "method_not_allowed"
    assert "PUT" in resp.headers["Allow"]


# --------------------------------------------------------------------------- trees


async def test_created_by_and_last_edited_by_come_from_acting_user_header(
    client: Client,
) -> None:
    resp = await client.put(f"{REST}/rules/checks/r1", json={"text": "v1"}, headers=ALICE)
    created = await json_of(resp, 201)
    assert created["createdBy"] == "alice"
    assert created["lastEditedBy"] == "alice"
    assert created["text"] == "v1"

    resp = await client.put(f"{REST}/rules/checks/r1", json={"text": "v2"}, headers=BOB)
    updated = await json_of(resp, 200)
    assert updated["createdBy"] == "alice"
    assert updated["lastEditedBy"] == "bob"
    assert updated["created"] == created["created"]
    assert updated["lastEdited"] >= created["lastEdited"]

    fetched = await json_of(await client.get(f"{REST}/rules/checks/r1", headers=ALICE), 200)
    assert fetched == updated


async def test_created_by_comes_from_the_token_user(client: Client) -> None:
    token = await login(client)
    auth = {"Authorization": f"Bearer {token}"}
    resp = await client.put(f"{REST}/datastores/ds1", json={"type": "postgis"}, headers=auth)
    body = await json_of(resp, 201)
    assert body["createdBy"] == "admin"
    assert body["lastEditedBy"] == "admin"

    resp = await client.put(f"{REST}/datastores/ds1", json={"type": "oracle"}, headers=ALICE)
    assert (await json_of(resp, 200))["lastEditedBy"] == "alice"


async def test_client_cannot_forge_audit_fields(client: Client) -> None:
    forged = {"createdBy": "root", "lastEditedBy": "root", "status": "FINISHED"}
    body = await json_of(await client.put(f"{REST}/sessions/s1", json=forged, headers=ALICE), 201)
    assert body["createdBy"] == "alice"
    assert body["lastEditedBy"] == "alice"
    assert body["status"] == "NOT_STARTED"


async def test_folders_list_their_direct_children(client: Client) -> None:
    await client.put(f"{REST}/actions/a/b/act1", json={}, headers=ALICE)
    await client.put(f"{REST}/actions/a/act2", json={}, headers=ALICE)
    resp = await client.post(f"{REST}/actions/a/empty", headers=BOB)
    assert (await json_of(resp, 201))["createdBy"] == "bob"

    root = await json_of(await client.get(f"{REST}/actions", headers=ALICE), 200)
    assert [child["name"] for child in root["children"]] == ["a"]

    folder = await json_of(await client.get(f"{REST}/actions/a/", headers=ALICE), 200)
    assert folder["type"] == "folder"
    assert folder["createdBy"] == "alice"
    children = {child["name"]: child["type"] for child in folder["children"]}
    assert children == {"b": "folder", "act2": "object", "empty": "folder"}


async def test_head_on_a_tree_path_answers_like_get_without_a_body(client: Client) -> None:
    await client.put(f"{REST}/rules/r1", json={"text": "x"}, headers=ALICE)
    resp = await client.head(f"{REST}/rules/r1", headers=ALICE)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.read() == b""
    assert (await client.head(f"{REST}/rules/missing", headers=ALICE)).status == 404


async def test_creating_an_existing_folder_is_409(client: Client) -> None:
    assert (await client.post(f"{REST}/actionmaps/f", headers=ALICE)).status == 201
    resp = await client.post(f"{REST}/actionmaps/f", headers=ALICE)
    assert (await json_of(resp, 409))["error"] == "already_exists"


async def test_delete_removes_objects_and_only_empty_folders(client: Client) -> None:
    await client.put(f"{REST}/rules/f/r1", json={}, headers=ALICE)
    resp = await client.delete(f"{REST}/rules/f", headers=ALICE)
    assert (await json_of(resp, 409))["error"] == "folder_not_empty"

    assert (await client.delete(f"{REST}/rules/f/r1", headers=ALICE)).status == 200
    resp = await client.get(f"{REST}/rules/f/r1", headers=ALICE)
    assert (await json_of(resp, 404))["error"] == "not_found"
    assert (await client.delete(f"{REST}/rules/f", headers=ALICE)).status == 200
    assert (await client.delete(f"{REST}/rules/f", headers=ALICE)).status == 404


async def test_put_with_invalid_json_is_400(client: Client) -> None:
    resp = await client.put(f"{REST}/rules/r1", data=b"[1, 2]", headers=ALICE)
    assert (await json_of(resp, 400))["error"] == "invalid_request"


async def test_each_app_has_its_own_state(aiohttp_client: ClientFactory) -> None:
    first, second = create_demo_backend_app(), create_demo_backend_app()
    client = await aiohttp_client(first)
    await client.put(f"{REST}/rules/r1", json={}, headers=ALICE)
    assert ("r1",) in first[DEMO_STATE].trees["rules"]
    assert second[DEMO_STATE].trees["rules"] == {}


# --------------------------------------------------------------------------- sessions


async def test_session_actions_change_status_and_record_the_editor(client: Client) -> None:
    await client.put(f"{REST}/sessions/project/s1", json={"description": "demo"}, headers=ALICE)
    expected = [("play", "RUNNING"), ("pause", "PAUSED"), ("stop", "STOPPED")]
    expected.append(("rewind", "NOT_STARTED"))
    for action, status in expected:
        resp = await client.put(f"{REST}/sessions/project/s1?action={action}", headers=BOB)
        body = await json_of(resp, 200)
        assert body["status"] == status
        assert body["lastEditedBy"] == "bob"
        assert body["createdBy"] == "alice"
        assert body["description"] == "demo"


async def test_invalid_session_action_is_400(client: Client) -> None:
    await client.put(f"{REST}/sessions/s1", json={}, headers=ALICE)
    resp = await client.put(f"{REST}/sessions/s1?action=explode", headers=ALICE)
    assert (await json_of(resp, 400))["error"] == "invalid_action"


async def test_action_on_missing_session_is_404(client: Client) -> None:
    resp = await client.put(f"{REST}/sessions/ghost?action=play", headers=ALICE)
    assert (await json_of(resp, 404))["error"] == "not_found"


async def test_results_status_follows_the_session(client: Client) -> None:
    await client.put(f"{REST}/sessions/p/s1", json={}, headers=ALICE)
    status = await json_of(await client.get(f"{REST}/results/p/s1/status", headers=ALICE), 200)
    assert status["session"] == "p/s1"
    assert status["status"] == "NOT_STARTED"

    await client.put(f"{REST}/sessions/p/s1?action=play", headers=BOB)
    status = await json_of(await client.get(f"{REST}/results/p/s1/status", headers=ALICE), 200)
    assert status["status"] == "RUNNING"
    assert status["lastEditedBy"] == "bob"


async def test_results_status_of_missing_session_is_404(client: Client) -> None:
    resp = await client.get(f"{REST}/results/nope/status", headers=ALICE)
    assert (await json_of(resp, 404))["error"] == "not_found"


# --------------------------------------------------------------------------- apikeys


async def test_backend_apikeys_are_a_small_in_memory_list(client: Client) -> None:
    resp = await client.post(f"{REST}/apikeys", json={"name": "etl"}, headers=ALICE)
    created = await json_of(resp, 201)
    assert created["name"] == "etl"
    assert created["createdBy"] == "alice"
    listing = await json_of(await client.get(f"{REST}/apikeys", headers=ALICE), 200)
    assert [key["id"] for key in listing["apikeys"]] == [created["id"]]
    one = await json_of(await client.get(f"{REST}/apikeys/{created['id']}", headers=ALICE), 200)
    assert "key" not in one
    assert (await client.get(f"{REST}/apikeys/999", headers=ALICE)).status == 404
    assert (await client.get(f"{REST}/apikeys")).status == 401


# --------------------------------------------------------------------------- diagnostics


async def test_echo_reports_raw_path_and_duplicate_headers_as_received(client: Client) -> None:
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    raw_path = f"{REST}/_echo/a%20b/%7E/x%2Fy?q=1&q=%41"
    request = (
        f"POST {raw_path} HTTP/1.1\r\n"
        "Host: backend\r\n"
        "X-Dup: one\r\n"
        "x-dup: two\r\n"
        "X-Acting-User: alice\r\n"
        "Content-Length: 5\r\n"
        "Connection: close\r\n"
        "\r\n"
        "hello"
    )
    writer.write(request.encode("ascii"))
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()

    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    body = json.loads(payload)
    assert body["method"] == "POST"
    assert body["path"] == raw_path
    assert body["headers"] == [
        ["Host", "backend"],
        ["X-Dup", "one"],
        ["x-dup", "two"],
        ["X-Acting-User", "alice"],
        ["Content-Length", "5"],
        ["Connection", "close"],
    ]
    assert body["body_length"] == 5
    assert body["body_sha256"] == hashlib.sha256(b"hello").hexdigest()


async def test_echo_streams_bodies_larger_than_the_request_size_limit(client: Client) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    count = 48  # 3 MiB in all, over aiohttp's 1 MiB limit for bodies read whole

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    resp = await client.put(f"{REST}/_echo/upload", data=upload())
    body = await json_of(resp, 200)
    assert body["body_length"] == len(chunk) * count
    assert body["body_sha256"] == hashlib.sha256(chunk * count).hexdigest()


@pytest.mark.parametrize("size", [0, 1, STREAM_CHUNK_SIZE, 3 * STREAM_CHUNK_SIZE + 17])
async def test_blob_streams_exactly_size_bytes_of_the_pattern(client: Client, size: int) -> None:
    resp = await client.get(f"{REST}/_blob?size={size}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)
    data = await resp.read()
    assert len(data) == size
    assert data == blob_chunk(0, size)
    assert data == bytes(i % BLOB_MODULUS for i in range(size))


def test_blob_chunks_join_up_at_any_offset() -> None:
    size = STREAM_CHUNK_SIZE
    whole = blob_chunk(0, 3 * size)
    assert blob_chunk(0, 1000) + blob_chunk(1000, 300_000) == blob_chunk(0, 301_000)
    assert blob_chunk(size, size) == whole[size : 2 * size]


async def test_blob_head_has_length_and_no_body(client: Client) -> None:
    resp = await client.head(f"{REST}/_blob?size=1000")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "1000"
    assert await resp.read() == b""


@pytest.mark.parametrize("query", ["", "?size=-1", "?size=abc", "?size=99999999999999"])
async def test_blob_with_bad_size_is_400(client: Client, query: str) -> None:
    resp = await client.get(f"{REST}/_blob{query}")
    assert (await json_of(resp, 400))["error"] == "invalid_request"


async def test_slow_answers_after_the_delay(client: Client) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = await json_of(await client.get(f"{REST}/_slow?delay=0.2"), 200)
    assert body == {"slept": 0.2}
    assert loop.time() - started >= 0.2


@pytest.mark.parametrize("delay", ["31", "-1", "nan", "soon", ""])
async def test_slow_with_bad_delay_is_400(client: Client, delay: str) -> None:
    resp = await client.get(f"{REST}/_slow?delay={delay}")
    assert (await json_of(resp, 400))["error"] == "invalid_request"


# --------------------------------------------------------------------------- serving


async def test_start_demo_backend_on_port_zero_serves_on_the_bound_port() -> None:
    runner = await start_demo_backend("127.0.0.1", 0, acting_user_header="X-Who")
    try:
        url = runner_url(runner)
        assert runner.addresses[0][1] != 0
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"{url}{REST}/rules/r1", json={}, headers={"X-Who": "dora"}) as resp,
        ):
            assert resp.status == 201
            assert (await resp.json())["createdBy"] == "dora"
    finally:
        await runner.cleanup()


async def test_tokens_are_rs256_signed_and_verify_with_the_published_jwks(
    aiohttp_server: Callable[[web.Application], Awaitable[Any]],
) -> None:
    """Issue 23: the demo backend's tokens are real signed JWTs keygate can verify."""
    server = await aiohttp_server(
        create_demo_backend_app(users={"ada": "pw-ada-1"}, groups={"ada": ("ops",)})
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.make_url("/1Integrate/rest/token"),
            json={"username": "ada", "password": "pw-ada-1"},
        ) as resp,
    ):
        token = (await resp.json())["token"]
    verifier = TokenVerifier(
        issuer=TOKEN_ISSUER,
        audience=TOKEN_AUDIENCE,
        algorithms=("RS256",),
        jwks_url=str(server.make_url("/1Integrate/rest/jwks")),
        leeway=0,
    )
    claims = await verifier.verify(token)
    assert (claims["sub"], claims["groups"], claims["iss"]) == ("ada", ["ops"], TOKEN_ISSUER)
    head, body, signature = token.split(".")
    with pytest.raises(TokenInvalid):
        await verifier.verify(f"{head}.{body}.{signature[::-1]}")
