"""Behaviour of the demo 1Integrate-like backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.admin.identity import TokenInvalid, TokenVerifier
from gateway.demo.backend import (
    DEMO_STATE,
    TOKEN_AUDIENCE,
    TOKEN_ISSUER,
    create_demo_backend_app,
    public_jwks,
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


def test_each_backend_signs_with_its_own_key_made_once() -> None:
    """Issue 21.5: the key is made on first use, yet stays one key per backend, not shared."""
    first = create_demo_backend_app()[DEMO_STATE]
    second = create_demo_backend_app()[DEMO_STATE]
    assert first.signing_key is first.signing_key
    assert public_jwks(first) == public_jwks(first)
    own = public_jwks(first)["keys"][0]["n"]
    assert own != public_jwks(second)["keys"][0]["n"]
