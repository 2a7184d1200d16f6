"""Webhook events from a running gateway to a real receiver on loopback: changes made by the
admin API and by other processes, expiry notices once per threshold across restarts, a
receiver that is down (retries) without slowing the proxy."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.config import ALL_ROLE, REST, create_key, write_config
from support.processes import arun_cli, free_port
from support.upstreams import Backend

from gateway.events import webhooks as notify
from gateway.events.outbox import audit_event
from gateway.keys import keyformat as keys
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.store.base import AuditEvent, NewKey
from gateway.store.factory import store_for

SECRET = "whsec-outbox-test"
SECRET_ENV = "KEYGATE_TEST_WEBHOOK_SECRET"
DAY = 86_400
WAIT = 10.0  # seconds an expected event may take to arrive
# POSTs a receiver that is down refuses, and proxied requests made meanwhile, before it is up.
FAILED_ATTEMPTS = 3
REQUESTS_WHILE_DOWN = 20


@dataclass
class Receiver:
    """Collects signed events; answers 503 while `down`."""

    events: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    attempts: int = 0
    down: bool = False
    signed: bool = True

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.down:
            return web.Response(status=503)
        body = await request.read()
        header = request.headers.get(notify.SIGNATURE_HEADER, "")
        self.signed = self.signed and notify.verify(SECRET.encode(), header, body, time.time())
        self.bodies.append(body)
        self.events.append(json.loads(body))
        return web.Response(status=204)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.events if item["type"] == kind]

    async def wait_for(self, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not check():
            assert time.monotonic() < deadline, [item["type"] for item in self.events]
            await asyncio.sleep(0.02)


async def outbox_started(gateway: RunningGateway) -> None:
    """Wait until the receiver's cursor is in the store: the outbox starts after the history
    that exists when it first runs."""
    deadline = time.monotonic() + WAIT
    while not await gateway.runtime.store.list_receivers():
        assert time.monotonic() < deadline, "the outbox never started"
        await asyncio.sleep(0.01)


async def start_receiver(receiver: Receiver, port: int = 0) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    made = Receiver()
    runner, url = await start_receiver(made)
    try:
        yield made, url
    finally:
        await runner.cleanup()


def hook_config(directory: Path, backend: Backend, url: str) -> Path:
    """A config whose one webhook is `url`, read for events and checking expiries every 0.1 s."""
    return write_config(
        directory,
        backend.url,
        extra={
            "notify": {
                "webhooks": [{"url": url, "secret": {"env": SECRET_ENV}}],
                "poll_interval": 0.1,
            },
            "expiry": {"warn_days": 10, "notify_days": [14, 7, 1], "check_interval": 0.1},
        },
    )


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


def iso_in(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


async def metrics_text(admin_port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin_port}/metrics") as response,
    ):
        return await response.text()


def test_audit_events_carry_details_and_stable_ids_never_admin_logins() -> None:
    entry = AuditEvent(7, 1_800_000_000.0, "alice", "revoke", 3, "etl", {})
    item = audit_event(entry)
    assert item is not None
    assert (item["id"], item["type"], item["created_at"]) == (
        "evt_7",
        "key.revoked",
        "2027-01-15T08:00:00Z",
    )
    assert item["data"] == {
        "audit_id": 7,
        "actor": "alice",
        "key_id": 3,
        "key_name": "etl",
        "details": {},
    }
    assert audit_event(AuditEvent(8, 1.0, "?", "admin_login_failed", None, None, {})) is None


async def test_changes_from_anywhere_and_expiry_notices_reach_the_webhook_once(
    tmp_path: Path, backend: Backend, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    config = hook_config(tmp_path / "cfg", backend, url)
    settings = load_settings(config)
    before = await create_key(config, "before-webhooks", [ALL_ROLE])
    async with running_gateway(settings) as gateway:
        assert gateway.admin_port is not None
        await outbox_started(gateway)
        # Another process's writes (what the CLI does: its own store connection).
        soon = await create_key(config, "expires-soon", [ALL_ROLE], expires_at=iso_in(3 * DAY))
        await hook.wait_for(lambda: len(hook.of_type("key.expiring")) == 1)
        other = store_for(settings)
        await other.open()
        try:
            row = await other.get_key_by_name("expires-soon")
            assert row is not None
            await other.set_revoked(row.id, True, "cli:test")
            await other.set_revoked(row.id, False, "cli:test")
            rolled = await other.roll_key(
                row.id, keys.digest(keys.generate_key()), "kg_abcdefg", 60, "cli:test"
            )
            assert rolled.previous_digest is not None
            await other.revoke_all("cli:test")
            await other.delete_revoked("cli:test")
        finally:
            await other.close()
        await hook.wait_for(lambda: len(hook.of_type("keys.deleted_revoked")) == 1)
        types = [item["type"] for item in hook.events if item["type"] != "key.expiring"]
        assert types == [
            "key.created",
            "key.revoked",
            "key.reinstated",
            "key.rolled",
            "keys.revoked_all",
            "keys.deleted_revoked",
        ]
        created = hook.of_type("key.created")[0]
        assert created["data"]["key_name"] == "expires-soon"
        assert created["id"] == f"evt_{created['data']['audit_id']}"
        expiring = hook.of_type("key.expiring")[0]["data"]
        assert expiring["key_name"] == "expires-soon"
        assert (expiring["days_left"], expiring["threshold_days"]) == (3, 7)
        assert hook.signed
        everything = b"".join(hook.bodies)
        for secret in (soon, before):
            assert secret.encode() not in everything
            assert keys.digest(secret).hex().encode() not in everything
        assert b"before-webhooks" not in everything  # history before the outbox is not sent

    # A key that stays, expiring in 20 hours: thresholds 14, 7 and 1 all crossed at once.
    await create_key(config, "expires-tomorrow", [ALL_ROLE], expires_at=iso_in(20 * 3600))
    seen = len(hook.events)
    async with running_gateway(settings) as gateway:
        assert gateway.admin_port is not None
        await hook.wait_for(lambda: len(hook.of_type("key.expiring")) == 2)
        notice = hook.of_type("key.expiring")[1]["data"]
        assert (notice["key_name"], notice["threshold_days"], notice["days_left"]) == (
            "expires-tomorrow",
            1,
            1,
        )
        # The created event of a key made while no gateway ran is sent after the restart.
        await hook.wait_for(lambda: len(hook.of_type("key.created")) == 2)
        assert "keygate_keys_expiring 1.0" in await metrics_text(gateway.admin_port)
    count = len(hook.events)
    assert count == seen + 2

    # A third start sends nothing again: the cursor and the notices sent are in the store.
    async with running_gateway(settings):
        await asyncio.sleep(0.6)
    assert len(hook.events) == count


@pytest.mark.usefixtures("quick_retries")
async def test_a_receiver_that_is_down_gets_the_events_later_and_the_proxy_does_not_wait(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    hook = Receiver(down=True)
    runner, url = await start_receiver(hook, port)
    config = hook_config(tmp_path / "cfg", backend, url)
    secret = await create_key(config, "busy", [ALL_ROLE])
    try:
        async with running_gateway(load_settings(config)) as gateway:
            await outbox_started(gateway)
            runtime = gateway.runtime
            for index in range(20):
                await runtime.store.create_key(dataclass_new_key(f"burst-{index}"), "admin-test")
            slowest = 0.0
            proxied = f"http://127.0.0.1:{gateway.proxy_port}{REST}/_echo/x"
            async with aiohttp.ClientSession() as session:
                # Requests go through while delivery is tried and retried (doubling the
                # wait): at least FAILED_ATTEMPTS refused POSTs, for at least REQUESTS_WHILE_DOWN.
                deadline = time.monotonic() + WAIT
                requests = 0
                while hook.attempts < FAILED_ATTEMPTS or requests < REQUESTS_WHILE_DOWN:
                    assert time.monotonic() < deadline, (hook.attempts, requests)
                    started = time.monotonic()
                    async with session.get(proxied, headers={"X-API-Key": secret}) as response:
                        assert response.status == 200
                    slowest = max(slowest, time.monotonic() - started)
                    requests += 1
            assert hook.attempts >= FAILED_ATTEMPTS
            assert slowest < 0.25, slowest  # the proxy never waited for the webhook
            hook.down = False
            await hook.wait_for(lambda: len(hook.of_type("key.created")) == 20)
            assert hook.signed
    finally:
        await runner.cleanup()


def dataclass_new_key(name: str) -> NewKey:
    """A NewKey with a fresh secret (never shown: only its digest reaches the store)."""
    secret = keys.generate_key()
    return NewKey(name, "", (ALL_ROLE,), keys.digest(secret), keys.display_prefix(secret))


@pytest.mark.slow
async def test_notify_test_sends_a_signed_sample_and_reports_a_receiver_that_is_down(
    tmp_path: Path, backend: Backend, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    config = hook_config(tmp_path / "cfg", backend, url)
    code, out, err = await arun_cli("notify", "test", "--config", str(config))
    assert code == 0, err
    assert f"{url}: delivered" in out
    assert [item["type"] for item in hook.events] == ["keygate.test"] and hook.signed

    dead = hook_config(tmp_path / "dead", backend, f"http://127.0.0.1:{free_port()}/hook")
    code, out, err = await arun_cli("notify", "test", "--config", str(dead))
    assert code != 0
    assert "ClientConnectorError" in out and "did not accept" in err


@pytest.mark.slow
async def test_keys_list_shows_expiring_keys(tmp_path: Path, backend: Backend) -> None:
    config = hook_config(tmp_path / "cfg", backend, "http://127.0.0.1:9/hook")
    await create_key(config, "in-three-days", [ALL_ROLE], expires_at=iso_in(3 * DAY + 60))
    await create_key(config, "in-a-month", [ALL_ROLE], expires_at=iso_in(30 * DAY))
    await create_key(config, "forever", [ALL_ROLE])
    code, out, err = await arun_cli("keys", "list", "--status", "expiring", "--config", str(config))
    assert code == 0, err
    assert "in-three-days" in out and "(in 3 days)" in out
    assert "in-a-month" not in out and "forever" not in out
    code, out, err = await arun_cli("keys", "list", "--config", str(config))
    assert "(in 3 days)" in out and out.count(" days)") == 1


@pytest.mark.slow
async def test_a_key_created_with_the_cli_reaches_the_webhook(
    tmp_path: Path, backend: Backend, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    config = hook_config(tmp_path / "cfg", backend, url)
    async with running_gateway(load_settings(config)):
        await asyncio.sleep(0.3)
        code, out, err = await arun_cli(
            "keys", "create", "--name", "from-cli", "--role", ALL_ROLE, "--json",
            "--config", str(config),
        )  # fmt: skip
        assert code == 0, err
        await hook.wait_for(lambda: len(hook.of_type("key.created")) == 1)
    created = hook.of_type("key.created")[0]["data"]
    assert created["key_name"] == "from-cli" and created["actor"].startswith("cli:")
    assert json.loads(out)["secret"].encode() not in b"".join(hook.bodies)
