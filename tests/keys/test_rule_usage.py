"""Usage per policy rule, the last client addresses and least-privilege advice, counted
through the real proxy (real upstream on loopback) and read back through the admin API: on
SQLite and PostgreSQL, and two gateways on one PostgreSQL schema adding up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.config import REST, add_key, policy_data, write_config
from support.stores import StoreBackend
from support.upstreams import Backend

from gateway.admin.passwords import hash_password
from gateway.keys.usage import ADDRESSES_KEPT
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

READER, WRITER, OPERATOR = "insight-reader", "insight-writer", "insight-operator"
ADMIN = ("insight-admin", "insight-admin-password")
AUTH = {"Authorization": aiohttp.encode_basic_auth(*ADMIN)}
ECHO = f"{REST}/_echo/**"


def insight_policy() -> dict[str, Any]:
    policy = policy_data()
    policy["roles"][READER] = {"allow": [f"GET {ECHO}", f"GET {REST}/_status/*"]}
    policy["roles"][WRITER] = {"allow": [f"POST,PUT {ECHO}"]}
    policy["roles"][OPERATOR] = {
        "allow": [f"DELETE {ECHO}", f"* {REST}/_admin/**", f"GET {REST}/_ops/*"]
    }
    return policy


def config_for(
    directory: Path, backend: Backend, store: StoreBackend | None = None, keep_days: int = 90
) -> Path:
    extra: dict[str, Any] = {"usage": {"flush_interval": 60, "keep_days": keep_days}}
    if store is not None and store.name == "postgres":
        extra["store"] = {"url": store.location, "schema": store.schema}
    return write_config(directory, backend.url, extra=extra, policy=insight_policy())


@contextlib.asynccontextmanager
async def gateway_for(config: Path) -> AsyncIterator[RunningGateway]:
    async with running_gateway(load_settings(config)) as running:
        yield running


async def add_admin(gateway: RunningGateway) -> None:
    await gateway.runtime.store.add_admin(
        ADMIN[0], hash_password(ADMIN[1], n=2**4), (), True, "test"
    )


async def call(gateway: RunningGateway, key: str, method: str, path: str, address: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(
            method, f"http://127.0.0.1:{gateway.proxy_port}{REST}{path}", headers={"X-API-Key": key}
        ) as response,
    ):
        await response.read()
        return response.status


async def admin_get(gateway: RunningGateway, path: str, **params: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{gateway.admin_port}/api/v1/{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params=params, headers=AUTH) as response,
    ):
        return response.status, await response.json()


async def send_reads(gateway: RunningGateway, key: str) -> None:
    """Three GETs and two HEADs under _echo and two GETs under _status (all the reader's
    rules), from three addresses; then a DELETE no rule allows (403) from a fourth."""
    statuses = [
        *[await call(gateway, key, "GET", "/_echo/a", "127.0.0.1") for _ in range(3)],
        *[await call(gateway, key, "HEAD", "/_echo/b", "127.0.0.2") for _ in range(2)],
        *[await call(gateway, key, "GET", "/_status/200", "127.0.0.3") for _ in range(2)],
        await call(gateway, key, "DELETE", "/_nothing", "127.0.0.4"),
    ]
    assert statuses == [200] * 7 + [403]


async def test_rules_addresses_and_advice_through_the_proxy(
    tmp_path: Path, backend: Backend, store_backend: StoreBackend
) -> None:
    async with gateway_for(config_for(tmp_path / "c", backend, store_backend)) as gateway:
        await add_admin(gateway)
        key = await add_key(gateway, "three-roles", [READER, WRITER, OPERATOR])
        await add_key(gateway, "never-used", [READER, WRITER])
        await send_reads(gateway, key)
        # Nothing in the store before the flush: no write per request.
        status, body = await admin_get(gateway, "keys/three-roles/rules")
        assert status == 200 and body["items"] == [], body
        await gateway.runtime.usage.flush(gateway.runtime.store)

        status, body = await admin_get(gateway, "keys/three-roles/rules")
        assert status == 200, body
        assert body["key_name"] == "three-roles" and body["days"] == 30
        assert body["since"].endswith("T00:00:00Z")
        items = [(i["role"], i["methods"], i["path"], i["count"]) for i in body["items"]]
        assert items == [
            (READER, ["GET"], ECHO, 5),  # HEAD is allowed by the GET rule
            (READER, ["GET"], f"{REST}/_status/*", 2),
        ]
        assert all(i["last_used_at"].endswith("Z") for i in body["items"])

        status, body = await admin_get(gateway, f"keys/{body['key_id']}/addresses")
        assert status == 200, body
        # Newest first; the refused request's address is seen too.
        assert [i["address"] for i in body["items"]] == [
            "127.0.0.4",
            "127.0.0.3",
            "127.0.0.2",
            "127.0.0.1",
        ]

        status, advice = await admin_get(gateway, "keys/three-roles/advice")
        assert status == 200, advice
        assert advice["requests"] == 7 and advice["unused"] is False
        assert advice["used_roles"] == [READER]
        assert advice["unused_roles"] == [OPERATOR, WRITER]  # the key's roles, sorted
        assert advice["suggested_roles"] == [READER]
        assert [(r["role"], r["path"], r["count"]) for r in advice["used_rules"]] == [
            (READER, ECHO, 5),
            (READER, f"{REST}/_status/*", 2),
        ]
        assert {(r["role"], tuple(r["methods"]), r["path"]) for r in advice["unused_rules"]} == {
            (WRITER, ("POST", "PUT"), ECHO),
            (OPERATOR, ("DELETE",), ECHO),
            (OPERATOR, ("*",), f"{REST}/_admin/**"),
            (OPERATOR, ("GET",), f"{REST}/_ops/*"),
        }
        assert advice["message"] == (
            f"In the last 30 days this key used only role '{READER}' (2 of its 6 rules); "
            f"roles '{OPERATOR}', '{WRITER}' were never used."
        )

        status, idle = await admin_get(gateway, "keys/never-used/advice", days="7")
        assert status == 200, idle
        assert idle["unused"] is True and idle["suggested_roles"] is None
        assert idle["requests"] == 0 and idle["used_rules"] == [] and idle["days"] == 7
        assert idle["unused_roles"] == [READER, WRITER]
        assert idle["message"] == "In the last 7 days this key made no requests."
        status, none = await admin_get(gateway, "keys/never-used/addresses")
        assert status == 200 and none["items"] == []


async def test_insight_query_bounds(tmp_path: Path, backend: Backend) -> None:
    async with gateway_for(config_for(tmp_path / "c", backend, keep_days=10)) as gateway:
        await add_admin(gateway)
        await add_key(gateway, "bounds-bot", [READER])
        for path in ("rules", "advice"):
            status, body = await admin_get(gateway, f"keys/bounds-bot/{path}")
            assert status == 200 and body["days"] == 10, body  # 30 bounded by keep_days
            for days in ("0", "abc", "-1", "1.5", "123456"):
                status, body = await admin_get(gateway, f"keys/bounds-bot/{path}", days=days)
                assert status == 400 and body["field"] == "days", (days, body)
            status, body = await admin_get(gateway, f"keys/bounds-bot/{path}", days="11")
            assert status == 422 and body["error"] == "out_of_range", body
            status, body = await admin_get(gateway, f"keys/bounds-bot/{path}", limit="3")
            assert status == 400 and body["field"] == "limit", body
            for ref in ("999999", "no-such-key"):
                status, body = await admin_get(gateway, f"keys/{ref}/{path}")
                assert status == 404 and body["error"] == "not_found", body
        status, body = await admin_get(gateway, "keys/no-such-key/addresses")
        assert status == 404


async def test_addresses_are_bounded(tmp_path: Path, backend: Backend) -> None:
    async with gateway_for(config_for(tmp_path / "c", backend)) as gateway:
        await add_admin(gateway)
        key = await add_key(gateway, "many-places", [READER])
        addresses = [f"127.0.1.{n}" for n in range(1, ADDRESSES_KEPT + 6)]
        for address in addresses:
            assert await call(gateway, key, "GET", "/_echo/x", address) == 200
        await gateway.runtime.usage.flush(gateway.runtime.store)
        status, body = await admin_get(gateway, "keys/many-places/addresses")
        assert status == 200
        assert [i["address"] for i in body["items"]] == addresses[::-1][:ADDRESSES_KEPT]


@pytest.mark.parametrize("store_backend", ["postgres"], indirect=True)
async def test_two_gateways_on_postgres_add_up_rule_counts(
    tmp_path: Path, backend: Backend, store_backend: StoreBackend
) -> None:
    first = config_for(tmp_path / "a", backend, store_backend)
    second = config_for(tmp_path / "b", backend, store_backend)
    async with gateway_for(first) as one, gateway_for(second) as two:
        await add_admin(one)
        key = await add_key(one, "fleet-rules", [READER, WRITER, OPERATOR])
        await two.runtime.apply_own_writes()
        await send_reads(one, key)
        await send_reads(two, key)
        await one.runtime.usage.flush(one.runtime.store)
        await two.runtime.usage.flush(two.runtime.store)
        status, body = await admin_get(two, "keys/fleet-rules/rules")
        assert status == 200, body
        assert [(i["path"], i["count"]) for i in body["items"]] == [
            (ECHO, 10),
            (f"{REST}/_status/*", 4),
        ]
        status, advice = await admin_get(one, "keys/fleet-rules/advice")
        assert advice["requests"] == 14 and advice["suggested_roles"] == [READER]
