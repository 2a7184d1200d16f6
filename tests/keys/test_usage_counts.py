"""Hourly usage counted through the real proxy and read back through the admin API: a
known request mix (forwarded, refused by the policy, by the rate limit, upstream 5xx) from
several loopback addresses, on SQLite and PostgreSQL, and two gateways adding up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.config import REST, add_key, policy_data, write_config
from support.stores import StoreBackend
from support.upstreams import Backend

from gateway.admin.passwords import hash_password
from gateway.keys.usage_series import MAX_USAGE_POINTS
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

ROLE = "usage-caller"
HOUR_END_MARGIN = 10.0  # seconds: a mix is never started closer than this to an hour's end
LIMIT = 8  # requests per minute (and burst) of the role: the 9th admitted request is a 429
ADMIN = ("usage-admin", "usage-admin-password")
AUTH = {"Authorization": aiohttp.encode_basic_auth(*ADMIN)}


def usage_policy() -> dict[str, Any]:
    policy = policy_data()
    policy["roles"][ROLE] = {
        "allow": [f"GET {REST}/_echo/**", f"GET {REST}/_status/*"],
        "rate_limit": {"requests": LIMIT, "per": "minute", "burst": LIMIT},
    }
    return policy


def config_for(
    directory: Path, backend: Backend, store: StoreBackend | None = None, keep_days: int = 90
) -> Path:
    """A gateway config with the usage policy; on `store` when PostgreSQL, else SQLite."""
    # Flushed by the test, never on its own during one.
    extra: dict[str, Any] = {"usage": {"flush_interval": 60, "keep_days": keep_days}}
    if store is not None and store.name == "postgres":
        extra["store"] = {"url": store.location, "schema": store.schema}
    return write_config(directory, backend.url, extra=extra, policy=usage_policy())


@contextlib.asynccontextmanager
async def gateway_for(config: Path) -> AsyncIterator[RunningGateway]:
    async with running_gateway(load_settings(config)) as running:
        yield running


async def call(gateway: RunningGateway, key: str, method: str, path: str, address: str) -> int:
    """Send one request from a loopback `address`; return the status."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.request(
            method, f"http://127.0.0.1:{gateway.proxy_port}{REST}{path}", headers={"X-API-Key": key}
        ) as response,
    ):
        await response.read()
        return response.status


async def send_mix(gateway: RunningGateway, key: str) -> None:
    """Four forwarded, two upstream 503s (forwarded too), three refused by the policy,
    two more forwarded, then two refused by the rate limit: from four addresses.

    Sent in one hour: a mix about to straddle the hour's end waits for the next hour.
    """
    left = 3600 - time.time() % 3600
    if left < HOUR_END_MARGIN:
        await asyncio.sleep(left + 0.1)
    statuses = [
        *[await call(gateway, key, "GET", "/_echo/a", "127.0.0.1") for _ in range(4)],
        *[await call(gateway, key, "GET", "/_status/503", "127.0.0.2") for _ in range(2)],
        *[await call(gateway, key, "POST", "/_echo/a", "127.0.0.3") for _ in range(3)],
        *[await call(gateway, key, "GET", "/_echo/b", "127.0.0.1") for _ in range(2)],
        *[await call(gateway, key, "GET", "/_echo/c", "127.0.0.4") for _ in range(2)],
    ]
    assert statuses == [200] * 4 + [503] * 2 + [403] * 3 + [200] * 2 + [429] * 2


async def add_admin(gateway: RunningGateway) -> None:
    await gateway.runtime.store.add_admin(
        ADMIN[0], hash_password(ADMIN[1], n=2**4), (), True, "test"
    )


async def usage(gateway: RunningGateway, key_ref: str, **params: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{gateway.admin_port}/api/v1/keys/{key_ref}/usage"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params=params, headers=AUTH) as response,
    ):
        return response.status, await response.json()


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def this_hour_point(body: dict[str, Any]) -> dict[str, Any]:
    hour = datetime.fromtimestamp(int(time.time()) // 3600 * 3600, UTC)
    [point] = [p for p in body["points"] if datetime.fromisoformat(p["start"]) == hour]
    return point


EXPECTED = {
    "forwarded": 8,
    "denied": 3,
    "limited": 2,
    "upstream_errors": 2,
    "addresses": 4,
    "addresses_capped": False,
}


async def test_a_request_mix_is_counted_per_hour(
    tmp_path: Path, backend: Backend, store_backend: StoreBackend
) -> None:
    async with gateway_for(config_for(tmp_path / "c", backend, store_backend)) as gateway:
        await add_admin(gateway)
        key = await add_key(gateway, "usage-bot", [ROLE])
        idle = await add_key(gateway, "idle-bot", [ROLE])
        assert idle
        await send_mix(gateway, key)
        # Nothing reaches the store before a flush: no write per request.
        status, body = await usage(gateway, "usage-bot")
        assert status == 200 and all(p["forwarded"] == 0 for p in body["points"])
        await gateway.runtime.usage.flush(gateway.runtime.store)
        status, body = await usage(gateway, "usage-bot")
        assert status == 200, body
        assert body["step"] == "hour" and body["key_name"] == "usage-bot"
        assert len(body["points"]) in (24, 25)  # the last 24 hours, in whole hours
        point = this_hour_point(body)
        assert {k: point[k] for k in EXPECTED} == EXPECTED
        assert sum(p["forwarded"] for p in body["points"]) == 8
        # The same by day, and by id.
        status, by_day = await usage(gateway, str(body["key_id"]), step="day")
        assert status == 200
        assert sum(p["forwarded"] for p in by_day["points"]) == 8
        assert max(p["addresses"] for p in by_day["points"]) == 4
        # Another key counted nothing; use_count counts forwarded requests as before.
        status, other = await usage(gateway, "idle-bot")
        assert status == 200 and all(p["forwarded"] == 0 for p in other["points"])
        row = await gateway.runtime.store.get_key_by_name("usage-bot")
        assert row is not None and row.use_count == 8


async def test_usage_query_bounds(tmp_path: Path, backend: Backend) -> None:
    async with gateway_for(config_for(tmp_path / "c", backend, keep_days=200)) as gateway:
        await add_admin(gateway)
        await add_key(gateway, "bounded-bot", [ROLE])
        now = datetime.now(UTC)
        ok = [
            {"from": iso(now - timedelta(days=199)), "step": "day"},
            {"from": iso(now - timedelta(days=90)), "step": "hour"},
            {"from": iso(now - timedelta(hours=2)), "to": iso(now)},
        ]
        for params in ok:
            status, body = await usage(gateway, "bounded-bot", **params)
            assert status == 200, (params, body)
        status, body = await usage(gateway, "bounded-bot", **ok[2])
        assert len(body["points"]) in (2, 3)
        malformed = [
            ({"step": "minute"}, "step"),
            ({"from": "yesterday"}, "from"),
            ({"from": "2026-01-01T00:00:00"}, "from"),  # no time zone
            ({"to": "2026-01-01T00:00:60Z"}, "to"),  # a leap second
            ({"limit": "3"}, "limit"),
        ]
        for params, field in malformed:
            status, body = await usage(gateway, "bounded-bot", **params)
            assert status == 400, (params, body)
            assert body["error"] == "invalid_request" and body["field"] == field, body
        out_of_range = [
            ({"from": iso(now - timedelta(days=201))}, "from"),  # past usage.keep_days
            ({"from": "2000-01-01T00:00:00Z"}, "from"),
            ({"from": iso(now), "to": iso(now - timedelta(hours=1))}, "to"),
            ({"from": iso(now), "to": iso(now)}, "to"),
            ({"to": iso(now + timedelta(days=2))}, "to"),
            ({"to": "9999-12-31T23:59:59Z"}, "to"),
            ({"from": iso(now - timedelta(days=101)), "step": "hour"}, "from"),  # > max points
        ]
        for params, field in out_of_range:
            status, body = await usage(gateway, "bounded-bot", **params)
            assert status == 422, (params, body)
            assert body["error"] == "out_of_range" and body["field"] == field, body
        for ref in ("999999", "no-such-key", "0"):
            status, body = await usage(gateway, ref)
            assert status == 404 and body["error"] == "not_found", (ref, body)
        assert 90 * 24 < MAX_USAGE_POINTS < 101 * 24  # why 90 days by hour pass, 101 not


@pytest.mark.parametrize("store_backend", ["postgres"], indirect=True)
async def test_two_gateways_on_postgres_add_up(
    tmp_path: Path, backend: Backend, store_backend: StoreBackend
) -> None:
    first = config_for(tmp_path / "a", backend, store_backend)
    second = config_for(tmp_path / "b", backend, store_backend)
    async with gateway_for(first) as one, gateway_for(second) as two:
        await add_admin(one)
        key = await add_key(one, "fleet-bot", [ROLE])
        await two.runtime.apply_own_writes()
        await send_mix(one, key)
        await send_mix(two, key)
        await one.runtime.usage.flush(one.runtime.store)
        await two.runtime.usage.flush(two.runtime.store)
        status, body = await usage(two, "fleet-bot")
        assert status == 200, body
        point = this_hour_point(body)
        # Each instance's rate limit is its own (local limiter): each sent the same mix.
        doubled = {k: v * 2 for k, v in EXPECTED.items() if k != "addresses_capped"}
        assert {k: point[k] for k in doubled} == doubled


async def test_forward_auth_decisions_are_counted(tmp_path: Path, backend: Backend) -> None:
    async with gateway_for(config_for(tmp_path / "c", backend)) as gateway:
        key = await add_key(gateway, "fa-bot", [ROLE])
        left = 3600 - time.time() % 3600
        if left < HOUR_END_MARGIN:
            await asyncio.sleep(left + 0.1)
        statuses = []
        # nginx auth_request: the original method and target in headers, asked with GET.
        for method in ["GET"] * (LIMIT + 1) + ["POST"]:
            headers = {
                "X-API-Key": key,
                "X-Original-Method": method,
                "X-Original-URI": f"{REST}/_echo/fa",
            }
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"http://127.0.0.1:{gateway.proxy_port}/_keygate/nginx", headers=headers
                ) as response,
            ):
                statuses.append(response.status)
        # nginx is answered 403 for a rate-limit refusal too (it passes on 401 and 403 only).
        assert statuses == [200] * LIMIT + [403, 403]
        await gateway.runtime.usage.flush(gateway.runtime.store)
        row = await gateway.runtime.store.get_key_by_name("fa-bot")
        assert row is not None
        hour = int(time.time()) // 3600
        [counted] = await gateway.runtime.store.usage_hours(row.id, hour, hour)
        assert (counted.forwarded, counted.denied, counted.limited) == (LIMIT, 1, 1)
        assert counted.addresses == 1  # the front proxy's connection: loopback
