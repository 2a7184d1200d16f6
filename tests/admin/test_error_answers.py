"""Every error the admin API renders: status, code, message, field and headers, in one table."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.admin.app import ROUTES
from gateway.admin.errors import ApiError, error_middleware
from gateway.keys import rules as key_rules
from gateway.store.base import (
    KeyExpiredError,
    NameConflictError,
    NotFoundError,
    OutsideGrantsError,
    StoreUnavailableError,
)

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

OUTSIDE = OutsideGrantsError("k", ("admin",))
EXPIRED = KeyExpiredError("key 'k' expired; give it a new expiry first")
UNAVAILABLE = StoreUnavailableError("keygate.db", "the disk is full")
LOST = StoreUnavailableError("pg", "connection lost", outcome_unknown=True)
M_UNAVAILABLE = "the key store is unavailable: the disk is full; nothing was changed, retry later"
M_LOST = (
    "the key store connection was lost while the change was being committed: connection "
    "lost; it may have been made: check before retrying (a create retried with the same "
    "Idempotency-Key header is safe)"
)
# (error raised by a handler, status, body, extra headers) as the middleware answers them.
ANSWERS: list[tuple[Exception, int, dict[str, Any], dict[str, str]]] = [
    (
        ApiError(418, "teapot", "short and stout", field="f"),
        418,
        {"error": "teapot", "message": "short and stout", "field": "f"},
        {},
    ),
    (
        ApiError(429, "slow", "later", headers={"Retry-After": "3"}, extra={"n": 1}),
        429,
        {"error": "slow", "message": "later", "n": 1},
        {"Retry-After": "3"},
    ),
    (
        key_rules.InputError("bad name", "name"),
        400,
        {"error": key_rules.E_INVALID, "message": "bad name", "field": "name"},
        {},
    ),
    (
        key_rules.InputError("no such role", "roles", key_rules.E_UNKNOWN_ROLE),
        422,
        {"error": "unknown_role", "message": "no such role", "field": "roles"},
        {},
    ),
    (
        key_rules.GrantError(["b", "a"]),
        403,
        {
            "error": "grant_forbidden",
            "message": "you may not grant role(s): a, b",
            "field": "roles",
        },
        {},
    ),
    (
        NameConflictError("k"),
        409,
        {
            "error": "name_conflict",
            "message": "a key with that name already exists",
            "field": "name",
        },
        {},
    ),
    (NotFoundError("k"), 404, {"error": "not_found", "message": "no key with that id"}, {}),
    (OUTSIDE, 403, {"error": "grant_forbidden", "message": str(OUTSIDE)}, {}),
    (EXPIRED, 409, {"error": "key_expired", "message": str(EXPIRED), "field": "expires_at"}, {}),
    (
        UNAVAILABLE,
        503,
        {"error": "store_unavailable", "message": M_UNAVAILABLE},
        {"Retry-After": "5"},
    ),
    (
        LOST,
        503,
        {"error": "store_unavailable", "message": M_LOST, "outcome_unknown": True},
        {"Retry-After": "5"},
    ),
    (
        web.HTTPRequestEntityTooLarge(10, 20),
        413,
        {"error": "body_too_large", "message": "request body is too large"},
        {},
    ),
    (
        web.HTTPUnsupportedMediaType(),
        415,
        {"error": "unsupported_media_type", "message": "Unsupported Media Type"},
        {},
    ),
    (
        web.HTTPTooManyRequests(headers={"Retry-After": "7"}),
        429,
        {"error": "http_error", "message": "Too Many Requests"},
        {"Retry-After": "7"},
    ),
    (
        RuntimeError("secret detail"),
        500,
        {"error": "internal_error", "message": "internal error"},
        {},
    ),
]


@pytest.mark.parametrize(
    ("error", "status", "body", "headers"), ANSWERS, ids=[type(row[0]).__name__ for row in ANSWERS]
)
async def test_each_error_renders_its_answer(
    aiohttp_client: ClientFactory,
    error: Exception,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
) -> None:
    async def fail(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", fail)
    client = await aiohttp_client(app)
    resp = await client.get("/")
    assert resp.status == status
    assert resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    assert json.loads(await resp.text()) == body
    for name, value in headers.items():
        assert resp.headers[name] == value


def _routes_by_path(app: web.Application) -> dict[str, set[str]]:
    """Each resource's path as the document writes it, and the methods served there."""
    methods: dict[str, set[str]] = {}
    for route in app.router.routes():
        if route.method != "HEAD":
            methods.setdefault(route.resource.canonical, set()).add(route.method)
    return methods


async def test_every_405_names_the_allowed_methods_in_allow(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    from test_admin_api import ROOT, make_app, make_runtime

    runtime = await make_runtime(tmp_path)
    try:
        client = await aiohttp_client(make_app(runtime))
        assert client.app is not None
        served = _routes_by_path(client.app)
        assert len(served) == len({path for _method, path, _handler, _name in ROUTES})
        for path, allowed in served.items():
            target = re.sub(r"\{[^}]*\}", "1", path)  # /api/v1/keys/1, /static/1, ...
            for wrong in (
                m for m in ("PUT", "DELETE", "PATCH", "POST", "OPTIONS") if m not in allowed
            ):
                headers = {**ROOT, "Content-Type": "application/json"}
                resp = await client.request(wrong, target, headers=headers)
                text = await resp.text()
                assert resp.status == 405, (wrong, target, text)
                assert json.loads(text) == {
                    "error": "method_not_allowed",
                    "message": "method not allowed on this resource",
                }
                # Exactly its own: a literal route (revoke-all) beside a templated one
                # ({id}) names no method of the other (the document's Allow).
                assert set(resp.headers["Allow"].split(",")) == allowed, (wrong, target)
    finally:
        await runtime.store.close()
