"""Admin API authentication: Basic accounts, refusing API keys, failed-login throttling."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.admin.app import create_admin_app
from gateway.admin.basic_auth import Authenticator
from gateway.admin.passwords import hash_password
from gateway.admin.throttle import LoginThrottle
from gateway.policy.rules import policy_from_data
from gateway.runtime.context import Runtime
from gateway.settings import settings_from_data
from gateway.store.sqlite import SqliteKeyStore

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

TEST_COST = 2**4  # scrypt N for test accounts
SLOW_COST = 2**16  # scrypt N for the account that shows hashing stays off the event loop
PASSWORD = "correct horse battery"
KEYS = "/api/v1/keys"
POLICY = policy_from_data(
    {"roles": {"reader": {"description": "Read", "allow": ["GET /a/**"]}}}, "test-policy"
)


def basic(name: str, password: str) -> dict[str, str]:
    """Return an Authorization header with HTTP Basic credentials."""
    return {"Authorization": aiohttp.encode_basic_auth(name, password)}


ROOT = basic("root", PASSWORD)
WRONG = basic("root", "not the password")


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = settings_from_data(
        {"upstream": {"url": "http://127.0.0.1:9"}, "store": {"url": "sqlite:///k.db"}},
        tmp_path / "gateway.yaml",
        environ={},
    )
    store = SqliteKeyStore(tmp_path / "keygate.db")
    await store.open()
    await store.add_admin("root", hash_password(PASSWORD, n=TEST_COST), (), True, "setup")
    rt = Runtime(settings=settings, store=store, policy=POLICY)
    await rt.load_table()
    try:
        yield rt
    finally:
        await store.close()


AppFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def serve(aiohttp_client: ClientFactory, runtime: Runtime) -> AppFactory:
    """Start an admin listener with a throttle tuned by keyword arguments."""

    async def start(**throttle: Any) -> Client:
        settings: dict[str, Any] = {"delay_base": 0.001, "delay_max": 0.001, **throttle}
        authenticator = Authenticator(
            runtime.store, LoginThrottle(**settings), dummy_cost=TEST_COST
        )
        return await aiohttp_client(create_admin_app(runtime, authenticator=authenticator))

    return start


async def status_of(client: Client, headers: dict[str, str], path: str = KEYS) -> int:
    resp = await client.get(path, headers=headers)
    await resp.read()
    return resp.status


async def failed_logins(runtime: Runtime) -> list[Any]:
    return [
        event
        for event in await runtime.store.list_audit(limit=1000)
        if event.action == "admin_login_failed"
    ]


# ------------------------------------------------------------------ Basic auth


async def test_valid_credentials_are_accepted(serve: AppFactory) -> None:
    client = await serve()
    assert await status_of(client, ROOT) == 200


async def test_missing_credentials_ask_for_basic(serve: AppFactory, runtime: Runtime) -> None:
    client = await serve()
    resp = await client.get(KEYS)
    body = await resp.json()
    assert resp.status == 401 and body["error"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="keygate admin", charset="UTF-8"'
    assert await failed_logins(runtime) == []  # asking is not failing


async def test_wrong_password_is_401_and_audited_without_the_password(
    serve: AppFactory, runtime: Runtime
) -> None:
    client = await serve()
    resp = await client.get(KEYS, headers=WRONG)
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"
    events = await failed_logins(runtime)
    assert len(events) == 1
    assert events[0].actor == "local:root"
    assert events[0].details == {"remote": "127.0.0.1"}
    everything = json.dumps([e.details for e in await runtime.store.list_audit(limit=1000)])
    assert "not the password" not in everything and PASSWORD not in everything


@pytest.mark.parametrize(
    ("authorization", "actor"),
    [
        # Not an admin: the name may be a password typed into the name field.
        (aiohttp.encode_basic_auth("nobody", PASSWORD), "?"),
        ("Basic !!!not-base64!!!", "?"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "?"),
        ("Basic " + base64.b64encode(b"root:\xff\xfe").decode(), "?"),
        ("Basic " + base64.b64encode(b":password-only").decode(), "?"),
        ("Digest username=root", "?"),
        (aiohttp.encode_basic_auth("evil\x01name", PASSWORD), "?"),
        (aiohttp.encode_basic_auth("x" * 300, PASSWORD), "?"),
    ],
)
async def test_bad_credentials_are_401_and_audited(
    serve: AppFactory, runtime: Runtime, authorization: str, actor: str
) -> None:
    client = await serve()
    assert await status_of(client, {"Authorization": authorization}) == 401
    events = await failed_logins(runtime)
    assert [(e.actor, e.details) for e in events] == [(actor, {"remote": "127.0.0.1"})]


async def test_two_authorization_headers_are_refused(serve: AppFactory) -> None:
    client = await serve()
    headers = [("Authorization", ROOT["Authorization"]), ("Authorization", WRONG["Authorization"])]
    resp = await client.get(KEYS, headers=headers)
    assert resp.status == 401


async def test_password_change_and_removal_take_effect_at_once(
    serve: AppFactory, runtime: Runtime
) -> None:
    client = await serve()
    assert await status_of(client, ROOT) == 200  # remembered as verified
    new = "a brand new password"
    await runtime.store.set_admin_password("root", hash_password(new, n=TEST_COST), "test")
    assert await status_of(client, ROOT) == 401
    assert await status_of(client, basic("root", new)) == 200
    await runtime.store.remove_admin("root", "test")
    assert await status_of(client, basic("root", new)) == 401


async def test_grant_changes_apply_to_the_next_request(serve: AppFactory, runtime: Runtime) -> None:
    client = await serve()
    body = {"name": "k1", "roles": ["reader"]}
    resp = await client.post(KEYS, json=body, headers=ROOT)
    assert resp.status == 201
    await runtime.store.set_admin_grants("root", (), False, "test")
    resp = await client.post(KEYS, json={**body, "name": "k2"}, headers=ROOT)
    assert resp.status == 403 and (await resp.json())["error"] == "grant_forbidden"


# ------------------------------------------------------------------ throttling


async def test_failures_are_held_back_longer_each_time(serve: AppFactory) -> None:
    client = await serve(delay_base=0.05, delay_max=1.0, free_failures=10)
    elapsed = []
    for _ in range(3):
        started = time.perf_counter()
        assert await status_of(client, WRONG) == 401
        elapsed.append(time.perf_counter() - started)
    assert elapsed[0] >= 0.05 and elapsed[1] >= 0.1 and elapsed[2] >= 0.2
    started = time.perf_counter()
    assert await status_of(client, ROOT) == 200  # success is not held back
    assert time.perf_counter() - started < 0.2


async def test_lockout_after_repeated_failures_then_recovery(
    serve: AppFactory, runtime: Runtime
) -> None:
    clock = FakeClock(time.time())  # the lockout's clock: moved below, never slept on
    client = await serve(free_failures=3, lockout_base=0.4, clock=clock)
    for _ in range(3):
        assert await status_of(client, WRONG) == 401
    resp = await client.get(KEYS, headers=ROOT)  # even the right password waits
    body = await resp.json()
    assert resp.status == 429 and body["error"] == "too_many_attempts"
    assert resp.headers["Retry-After"] == "1" and body["retry_after"] == 1
    assert len(await failed_logins(runtime)) == 3  # locked-out tries do not check or count

    # An API key is still refused first, locked out or not.
    resp = await client.get(KEYS, headers={"X-API-Key": "kg_x", **ROOT})
    assert resp.status == 403 and (await resp.json())["error"] == "api_key_forbidden"
    # Health probes need no credentials and are never locked out.
    assert await status_of(client, {}, "/healthz") == 200

    clock.now += 0.39
    assert await status_of(client, ROOT) == 429  # 10 ms of the lockout left
    clock.now += 0.02
    assert await status_of(client, ROOT) == 200
    # The next failure locks out for twice as long (0.8 s from that failure).
    assert await status_of(client, WRONG) == 401
    resp = await client.get(KEYS, headers=ROOT)
    assert resp.status == 429
    clock.now += 0.79
    assert await status_of(client, ROOT) == 429
    clock.now += 0.02
    assert await status_of(client, ROOT) == 200


async def test_parallel_guesses_cannot_bypass_the_limit(
    serve: AppFactory, runtime: Runtime
) -> None:
    client = await serve(free_failures=5, lockout_base=60)
    statuses = await asyncio.gather(
        *(status_of(client, basic("root", f"guess-{i}")) for i in range(40))
    )
    assert statuses.count(401) <= 5
    assert statuses.count(429) >= 35
    assert len(await failed_logins(runtime)) <= 5


async def test_parallel_valid_requests_are_not_throttled(serve: AppFactory) -> None:
    client = await serve(free_failures=2)
    statuses = await asyncio.gather(*(status_of(client, ROOT) for _ in range(40)))
    assert statuses == [200] * 40


async def test_password_hashing_does_not_block_the_event_loop(
    serve: AppFactory, runtime: Runtime
) -> None:
    await runtime.store.add_admin("slow", hash_password(PASSWORD, n=SLOW_COST), (), True, "setup")
    client = await serve()
    slow = asyncio.ensure_future(status_of(client, basic("slow", "wrong password!")))
    slowest_probe = 0.0
    probes = 0
    while not slow.done():
        started = time.perf_counter()
        assert await status_of(client, {}, "/healthz") == 200
        slowest_probe = max(slowest_probe, time.perf_counter() - started)
        probes += 1
    assert await slow == 401
    assert probes >= 3  # the loop kept serving while the hash was computed
    assert slowest_probe < 0.1


# ------------------------------------------------------------------ the throttle itself


class FakeClock:
    """A settable wall clock."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteKeyStore]:
    """A real SQLite store for the throttle's shared counts."""
    opened = SqliteKeyStore(tmp_path / "throttle.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def wait_of(
    throttle: LoginThrottle, store: SqliteKeyStore, address: str, account: str | None = None
) -> float | None:
    """Ask the throttle about one attempt, releasing its reservation at once."""
    reservation = throttle.begin(address, account)
    try:
        return await throttle.retry_after(store, reservation, account=account is not None)
    finally:
        throttle.end(reservation)


async def test_throttle_window_forgets_old_failures(store: SqliteKeyStore) -> None:
    clock = FakeClock()
    throttle = LoginThrottle(window=60, free_failures=2, lockout_base=10, clock=clock)
    await throttle.fail(store, "a", None)
    await throttle.fail(store, "a", None)
    assert await wait_of(throttle, store, "a") == pytest.approx(10)
    assert await wait_of(throttle, store, "b") is None  # per address
    clock.now += 10
    assert await wait_of(throttle, store, "a") is None
    await throttle.fail(store, "a", None)
    assert await wait_of(throttle, store, "a") == pytest.approx(20)  # doubled
    clock.now += 61
    assert await wait_of(throttle, store, "a") is None


async def test_throttle_delays_double_up_to_the_cap(store: SqliteKeyStore) -> None:
    throttle = LoginThrottle(delay_base=0.1, delay_max=0.5, free_failures=100)
    delays = [await throttle.fail(store, "a", None) for _ in range(5)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


async def test_throttle_lockouts_are_capped_shorter_for_accounts(store: SqliteKeyStore) -> None:
    clock = FakeClock()
    throttle = LoginThrottle(
        free_failures=1, lockout_base=1, lockout_max=300, account_lockout_max=30, clock=clock
    )
    for index in range(50):
        await throttle.fail(store, f"10.0.0.{index}", "root")  # one account, many addresses
        await throttle.fail(store, "10.9.9.9", None)  # one address
    assert await wait_of(throttle, store, "10.9.9.9") == pytest.approx(300)
    assert await wait_of(throttle, store, "10.1.1.1", "root") == pytest.approx(30)
    assert await wait_of(throttle, store, "10.1.1.1", "alice") is None


async def test_throttle_counts_checks_in_progress(store: SqliteKeyStore) -> None:
    throttle = LoginThrottle(free_failures=2)
    first = throttle.begin("a", None)
    assert await throttle.retry_after(store, first, account=False) is None
    second = throttle.begin("a", None)
    assert await throttle.retry_after(store, second, account=False) is None
    third = throttle.begin("a", None)
    assert await throttle.retry_after(store, third, account=False) is not None
    for reservation in (first, second, third):
        throttle.end(reservation)
    assert len(throttle) == 0  # nothing pending is remembered


async def test_throttle_forgets_failures_outside_the_window(store: SqliteKeyStore) -> None:
    clock = FakeClock()
    throttle = LoginThrottle(window=60, clock=clock)
    for index in range(1000):
        await throttle.fail(store, f"10.0.{index // 256}.{index % 256}", None)
    clock.now += 61
    await throttle.fail(store, "10.9.9.9", None)
    rows = list(await store._conn().execute_fetchall("SELECT COUNT(*) FROM login_failures"))
    assert rows == [(1,)]
