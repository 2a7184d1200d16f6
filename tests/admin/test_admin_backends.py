"""Hostile cursors and filters get a 4xx JSON answer from the admin API on every store backend.

A filter, or a cursor outside the document's syntax, is a 400; a well-formed cursor that
holds hostile text is one no listing made: 422. Neither reaches a store.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.stores import StoreBackend
from yarl import URL

from gateway.admin.app import create_admin_app
from gateway.admin.basic_auth import Authenticator
from gateway.admin.parsing import (
    CURSOR_MAX_LENGTH,
    MAX_QUERY_LENGTH,
    encode_cursor,
    encode_sort_cursor,
)
from gateway.admin.passwords import hash_password
from gateway.admin.throttle import LoginThrottle
from gateway.policy.rules import policy_from_data
from gateway.runtime.context import Runtime
from gateway.settings import settings_from_data
from gateway.store.base import KeyStore

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

TEST_COST = 2**4  # scrypt N for the test admin: fast
PASSWORD = "root-password"
ROOT = {"Authorization": aiohttp.encode_basic_auth("root", PASSWORD)}
POLICY = policy_from_data({"roles": {"reader": {"allow": ["GET /a/**"]}}}, "test-policy")
# Text no store should ever be handed: NUL, other controls, a lone surrogate, too long.
HOSTILE_TEXTS = ["a\x00b", "\x00", "a\x01b", "a\x7fb", "a\x85b", "a\ud800b", "\udfff", "x" * 2000]


def raw_cursor(*items: object) -> str:
    """A cursor holding any JSON, encoded as encode_sort_cursor encodes its own."""
    raw = json.dumps(list(items), separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, backend_store: KeyStore, tmp_path: Path
) -> AsyncIterator[Client]:
    """The admin API on the backend under test, with one admin and a few keys."""
    settings = settings_from_data(
        {"upstream": {"url": "http://127.0.0.1:9"}, "store": {"url": "sqlite:///unused.db"}},
        tmp_path / "gateway.yaml",
        environ={},
    )
    await backend_store.add_admin("root", hash_password(PASSWORD, n=TEST_COST), (), True, "setup")
    runtime = Runtime(settings=settings, store=backend_store, policy=POLICY)
    await runtime.load_table()
    throttle = LoginThrottle(delay_base=0.001, delay_max=0.001, lockout_base=0.05)
    app = create_admin_app(
        runtime, authenticator=Authenticator(backend_store, throttle, dummy_cost=TEST_COST)
    )
    client = await aiohttp_client(app)
    for name in ("alpha", "beta", "gamma"):
        response = await client.post(
            "/api/v1/keys", json={"name": name, "roles": ["reader"]}, headers=ROOT
        )
        assert response.status == 201, await response.text()
    yield client


async def expect_400(
    client: Client, url: str, params: dict[str, str], field: str, status: int = 400
) -> None:
    """Assert a 400 (or `status`) JSON error naming `field`."""
    response = await client.get(url, params=params, headers=ROOT)
    text = await response.text()
    assert response.status == status, (params, text)
    assert response.content_type == "application/json", text
    body = json.loads(text)
    assert body["field"] == field and body["message"], body


@pytest.mark.parametrize("sort", ["name", "-name"])
async def test_a_hostile_name_in_a_sort_cursor_is_refused(
    client: Client, store_backend: StoreBackend, sort: str
) -> None:
    for text in HOSTILE_TEXTS:
        cursor = encode_sort_cursor(sort, text, 1) if len(text) < 200 else raw_cursor(sort, text, 1)
        status = 400 if len(cursor) > CURSOR_MAX_LENGTH else 422
        params = {"sort": sort, "cursor": cursor}
        await expect_400(client, "/api/v1/keys", params, "cursor", status)
    # The cursors the API makes itself keep working.
    response = await client.get("/api/v1/keys", params={"sort": sort, "limit": "1"}, headers=ROOT)
    page = await response.json()
    assert response.status == 200 and page["next_cursor"], page
    params = {"sort": sort, "limit": "1", "cursor": page["next_cursor"]}
    response = await client.get("/api/v1/keys", params=params, headers=ROOT)
    assert response.status == 200 and len((await response.json())["items"]) == 1


@pytest.mark.parametrize("sort", ["created_at", "-last_used_at"])
async def test_an_out_of_range_time_in_a_sort_cursor_is_a_422(
    client: Client, store_backend: StoreBackend, sort: str
) -> None:
    for value in (10**30, -(10**30), 1e300, "1", None, [1]):
        params = {"sort": sort, "cursor": raw_cursor(sort, value, 1)}
        await expect_400(client, "/api/v1/keys", params, "cursor", 422)


async def test_hostile_filters_are_a_400(client: Client, store_backend: StoreBackend) -> None:
    # Query strings never carry a lone surrogate: its bytes decode to U+FFFD (tested below).
    for text in (text for text in HOSTILE_TEXTS if not _has_surrogate(text)):
        await expect_400(client, "/api/v1/keys", {"q": text}, "q")
        for name in ("actor", "key_name"):
            await expect_400(client, "/api/v1/audit", {name: text}, name)
        await expect_400(client, "/api/v1/audit", {"since": text}, "since")
    assert MAX_QUERY_LENGTH < 2000  # the long text above is over the bound
    surrogate = quote("a\ud800b".encode("utf-8", "surrogatepass"))
    for url in (f"/api/v1/keys?q={surrogate}", f"/api/v1/audit?actor={surrogate}"):
        response = await client.get(URL(url, encoded=True), headers=ROOT)
        assert response.status == 200, await response.text()


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in text)


async def test_hostile_cursors_are_a_400(client: Client, store_backend: StoreBackend) -> None:
    for cursor in ("a\x00", encode_cursor("k", 1) + "\x00", "A" * 2000):
        await expect_400(client, "/api/v1/keys", {"cursor": cursor}, "cursor")
        await expect_400(client, "/api/v1/keys", {"sort": "name", "cursor": cursor}, "cursor")
        await expect_400(client, "/api/v1/audit", {"cursor": cursor}, "cursor")
    # A lone surrogate, sent as its raw UTF-8 escape (the client's params would drop it and
    # send an empty cursor, which is the first page).
    surrogate = quote("\ud800".encode("utf-8", "surrogatepass"))
    for url in ("/api/v1/keys?cursor=", "/api/v1/keys?sort=name&cursor=", "/api/v1/audit?cursor="):
        response = await client.get(URL(url + surrogate, encoded=True), headers=ROOT)
        assert response.status == 400, await response.text()
