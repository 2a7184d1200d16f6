"""Durable, at-least-once webhook delivery against real receivers on loopback: restarts of
real `keygate serve` processes, one receiver down beside a healthy one, the persisted retry
schedule run on an injected clock up to abandonment, 12,000 events pending, prompt drain,
and the per-receiver metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.config import write_config
from support.processes import arun_cli, free_port, reaped, start_serve, wait_for_port
from support.stores import new_key
from support.upstreams import Backend

from gateway.events import delivery
from gateway.events import webhooks as notify
from gateway.events.delivery import Delivery, ReceiverWorker
from gateway.events.outbox import EVENT_ACTIONS
from gateway.runtime.metrics import ProxyMetrics, WebhookCounts
from gateway.serve.wiring import running_gateway
from gateway.settings import load_settings
from gateway.store.base import AuditEvent, KeyStore, StoreContents
from gateway.store.factory import store_for

SECRET = "whsec-delivery-test"
SECRET_ENV = "KEYGATE_TEST_DELIVERY_SECRET"
WAIT = 15.0  # seconds an expected delivery may take (covers one persisted back-off step)
# Credentials a receiver URL may carry; none may appear in a log, metric or CLI output.
USER, PASSWORD, TOKEN = "hookuser", "hunter2pass", "qsecret456"


@dataclass
class Receiver:
    """Records every POST (event, Keygate-Event-Id, accepted?); answers 503 while `down`."""

    down: bool = False
    hang: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)  # accepted, in arrival order
    seen: list[tuple[str, str, bool]] = field(default_factory=list)  # (body id, header, accepted)
    arrived: list[float] = field(default_factory=list)  # monotonic time of each accepted event

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hang:
            await asyncio.sleep(3600)
        item = json.loads(body)
        header = request.headers.get(notify.SIGNATURE_HEADER, "")
        assert notify.verify(SECRET.encode(), header, body, time.time())
        accepted = not self.down
        self.seen.append((item["id"], request.headers.get(notify.EVENT_ID_HEADER, ""), accepted))
        if not accepted:
            return web.Response(status=503)
        self.events.append(item)
        self.arrived.append(time.monotonic())
        return web.Response(status=204)

    @property
    def attempts(self) -> int:
        return len(self.seen)

    async def wait_for(self, check: Callable[[], bool], wait: float = WAIT) -> None:
        deadline = time.monotonic() + wait
        while not check():
            assert time.monotonic() < deadline, (len(self.events), self.attempts)
            await asyncio.sleep(0.02)


async def start_receiver(receiver: Receiver) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


def plain_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/hook"


def secret_url(port: int) -> str:
    return f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/hooks/XoXoSecretToken123?token={TOKEN}"


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    """Start receivers on demand; every one is stopped afterwards."""
    runners: list[web.AppRunner] = []

    async def make(**state: bool) -> tuple[Receiver, int]:
        made = Receiver(**state)
        runner, port = await start_receiver(made)
        runners.append(runner)
        return made, port

    yield make
    for runner in runners:
        await runner.cleanup()


def hook_config(directory: Path, backend: Backend, *urls: str, **ports: int) -> Path:
    return write_config(
        directory,
        backend.url,
        extra={
            "notify": {
                "webhooks": [{"url": url, "secret": {"env": SECRET_ENV}} for url in urls],
                "poll_interval": 0.1,
            }
        },
        **ports,
    )


async def metrics_text(admin_port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin_port}/metrics") as response,
    ):
        return await response.text()


def names(events: list[dict[str, Any]]) -> list[str]:
    return [str(item["data"]["key_name"]) for item in events]


@pytest.mark.slow
async def test_events_queued_while_the_receiver_is_down_survive_a_clean_restart(
    tmp_path: Path, backend: Backend, receivers: Callable[..., Any]
) -> None:
    hook, hook_port = await receivers(down=True)
    port, admin = free_port(), free_port()
    config = hook_config(
        tmp_path / "cfg", backend, plain_url(hook_port), listen_port=port, admin_port=admin
    )
    first = start_serve(config, port, tmp_path / "first.log")
    with reaped(first):
        await wait_for_port(admin, process=first.process)
        await asyncio.sleep(0.5)  # delivery starts after the history that exists
        store = store_for(load_settings(config))
        await store.open()
        try:
            await store.create_key(new_key("probe"), "admin-test")
            await hook.wait_for(lambda: hook.attempts >= 1)  # delivery was tried and refused
            for index in range(20):
                await store.create_key(new_key(f"queued-{index:02}"), "admin-test")
        finally:
            await store.close()
        await asyncio.sleep(0.3)
        assert await asyncio.to_thread(first.stop) == 0, first.log_text()
    assert hook.events == []
    refused_ids = {body_id for body_id, _, _ in hook.seen}
    hook.down = False
    second = start_serve(config, port, tmp_path / "second.log")
    with reaped(second):
        await wait_for_port(admin, process=second.process)
        await hook.wait_for(lambda: len({item["id"] for item in hook.events}) >= 21)
        assert await asyncio.to_thread(second.stop) == 0, second.log_text()
    unique: dict[str, dict[str, Any]] = {}
    for item in hook.events:
        unique.setdefault(item["id"], item)
    delivered = list(unique.values())
    assert names(delivered) == ["probe", *(f"queued-{index:02}" for index in range(20))]
    audit_ids = [item["data"]["audit_id"] for item in delivered]
    assert audit_ids == sorted(audit_ids)
    assert [item["id"] for item in delivered] == [f"evt_{audit_id}" for audit_id in audit_ids]
    assert all(body_id == header for body_id, header, _ in hook.seen)
    assert refused_ids <= set(unique)  # the ids refused before the restart are the ids sent


@pytest.mark.usefixtures("quick_retries")
async def test_one_receiver_down_does_not_delay_another(
    tmp_path: Path, backend: Backend, receivers: Callable[..., Any]
) -> None:
    dead, dead_port = await receivers(down=True)
    healthy, healthy_port = await receivers()
    config = hook_config(tmp_path / "cfg", backend, secret_url(dead_port), plain_url(healthy_port))
    async with running_gateway(load_settings(config)) as gateway:
        await asyncio.sleep(0.3)
        store = gateway.runtime.store
        for index in range(5):
            made = time.monotonic()
            await store.create_key(new_key(f"k{index}"), "admin-test")
            await healthy.wait_for(lambda i=index: len(healthy.events) == i + 1, wait=1.0)
            assert healthy.arrived[-1] - made < 1.0
        await dead.wait_for(lambda: dead.attempts >= 2)
    assert names(healthy.events) == [f"k{index}" for index in range(5)]
    assert dead.events == []


@pytest.mark.usefixtures("quick_retries")
async def test_metrics_count_delivery_per_receiver_without_urls(
    tmp_path: Path, backend: Backend, receivers: Callable[..., Any]
) -> None:
    dead, dead_port = await receivers(down=True)
    healthy, healthy_port = await receivers()
    config = hook_config(tmp_path / "cfg", backend, secret_url(dead_port), plain_url(healthy_port))
    dead_id = notify.receiver_id(secret_url(dead_port))
    healthy_id = notify.receiver_id(plain_url(healthy_port))
    async with running_gateway(load_settings(config)) as gateway:
        assert gateway.admin_port is not None
        await asyncio.sleep(0.3)
        for index in range(3):
            await gateway.runtime.store.create_key(new_key(f"m{index}"), "admin-test")
        await healthy.wait_for(lambda: len(healthy.events) == 3)
        await dead.wait_for(lambda: dead.attempts >= 2)
        await asyncio.sleep(0.3)  # the next poll recounts what is pending
        text = await metrics_text(gateway.admin_port)
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("keygate_webhook_")
    }

    def value(name: str, receiver: str) -> float:
        return values[f'keygate_webhook_{name}{{receiver="{receiver}"}}']

    assert value("delivered_total", healthy_id) == 3, text
    assert value("pending", healthy_id) == 0, text
    assert value("retried_total", healthy_id) == 0, text
    assert value("delivered_total", dead_id) == 0, text
    assert value("pending", dead_id) == 3, text
    assert value("retried_total", dead_id) >= 2, text
    assert value("abandoned_total", dead_id) == 0, text
    for secret in (USER, PASSWORD, TOKEN, "127.0.0.1:"):
        assert secret not in text


@dataclass
class FakeClock:
    """Unix time that moves only when the test says so."""

    at: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.at


@pytest.fixture
async def sqlite_store(tmp_path: Path, backend: Backend) -> AsyncIterator[tuple[KeyStore, Path]]:
    config = hook_config(tmp_path / "cfg", backend)
    store = store_for(load_settings(config))
    await store.open()
    try:
        yield store, config
    finally:
        await store.close()


@pytest.mark.slow
async def test_retries_back_off_to_the_maximum_survive_a_restart_and_end_logged(
    sqlite_store: tuple[KeyStore, Path],
    backend: Backend,
    receivers: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, config = sqlite_store
    hook, port = await receivers(down=True)
    webhook = notify.Webhook(secret_url(port), SECRET.encode())
    clock = FakeClock()
    counts = WebhookCounts()
    caplog.set_level(logging.INFO, logger="keygate.notify")

    async with aiohttp.ClientSession() as session:

        def worker(owner: str = "test-owner") -> ReceiverWorker:
            return ReceiverWorker(
                store, webhook, session, counts, poll_interval=1.0, owner=owner, now=clock
            )

        first = worker()
        assert await first.step() > 0  # nothing yet: the receiver starts at the newest entry
        await store.create_key(new_key("doomed"), "admin-test")
        await store.create_key(new_key("after"), "admin-test")
        delays: list[float] = []
        while True:
            wait = await first.step()
            state = first.state
            assert state is not None
            if state.attempts > len(delays):
                assert state.next_attempt is not None
                delays.append(state.next_attempt - clock.at)
            if len(delays) == 5:
                break
            clock.at += wait
        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
        assert hook.attempts == 5
        due = state.next_attempt

        # A restart (a new worker, another process's lease) resumes the schedule from the
        # store: nothing is sent before the persisted next attempt.
        first.stop()
        await first.run()  # stops at once, giving its lease up
        clock.at += 5
        second = worker("another-process")
        wait = await second.step()
        assert 0 < wait <= 11.0
        assert second.state is not None and second.state.next_attempt == due
        assert hook.attempts == 5
        clock.at += wait
        steps = 0
        while counts.abandoned == 0:
            steps += 1
            assert steps < 20_000
            wait = await second.step()
            state = second.state
            assert state is not None
            if state.attempts > len(delays) and state.next_attempt is not None:
                delays.append(state.next_attempt - clock.at)
            clock.at += wait
        # The receiver comes back: the next event goes, the abandoned one stays abandoned.
        hook.down = False
        clock.at += 1
        await second.step()
        assert names(hook.events) == ["after"]
        second.stop()
        await second.run()

    assert delays[:11] == [2.0**n for n in range(10)] + [600.0]
    assert max(delays) == notify.RETRY_MAX == 600.0
    assert set(delays[10:]) == {600.0}
    # Abandoned at the first failed attempt at least RETRY_GIVE_UP after the first one.
    assert sum(delays[:-1]) < notify.RETRY_GIVE_UP <= sum(delays)
    tried = len(delays) + 1
    assert hook.attempts == tried + 1  # every retry, the abandoning one, then "after"
    doomed = hook.seen[0][0]
    assert {body_id for body_id, _, _ in hook.seen[:tried]} == {doomed}
    abandoned = await store.list_abandoned()
    assert [(a.type, f"evt_{a.audit_id}", a.attempts, a.last_error) for a in abandoned] == [
        ("key.created", doomed, tried, "HTTP 503")
    ]
    shown = notify.redact_url(secret_url(port))
    logged = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert len(logged) == 1 and doomed in logged[0] and shown in logged[0], logged
    for secret in (USER, PASSWORD, TOKEN, "XoXoSecretToken123"):
        assert secret not in caplog.text

    # `keygate notify status` (a real CLI process) lists it, with the URL redacted.
    hook_config(config.parent, backend, secret_url(port))
    code, out, err = await arun_cli("notify", "status", "--config", str(config))
    assert code == 0, err
    assert "1 abandoned event(s)" in out and doomed in out and "key.created" in out, out
    assert shown in out and "HTTP 503" in out
    code, out, err = await arun_cli("notify", "status", "--json", "--config", str(config))
    assert code == 0, err
    status = json.loads(out)
    assert [item["event_id"] for item in status["abandoned"]] == [doomed]
    assert status["receivers"][0]["pending"] == 0 and status["receivers"][0]["url"] == shown
    for secret in (USER, PASSWORD, TOKEN, "XoXoSecretToken123"):
        assert secret not in out


@pytest.mark.slow
async def test_twelve_thousand_events_with_the_receiver_down_stay_pending_then_arrive_in_order(
    tmp_path: Path, backend: Backend, receivers: Callable[..., Any]
) -> None:
    hook, port = await receivers(down=True)
    config = hook_config(tmp_path / "cfg", backend, plain_url(port))
    settings = load_settings(config)
    total = 12_000
    async with running_gateway(settings) as gateway:
        assert gateway.admin_port is not None
        runtime_store = gateway.runtime.store
        deadline = time.monotonic() + WAIT
        while not await runtime_store.list_receivers():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        now = time.time()
        audit = [
            AuditEvent(index, now, "admin-test", "create", index, f"bulk-{index}", {})
            for index in range(1, total + 1)
        ]
        await runtime_store.import_contents(StoreContents([], [], audit), replace=False)
        await hook.wait_for(lambda: hook.attempts >= 2)
        await asyncio.sleep(0.3)
        text = await metrics_text(gateway.admin_port)
        rid = notify.receiver_id(plain_url(port))
        assert f'keygate_webhook_pending{{receiver="{rid}"}} {float(total)}' in text, text
        hook.down = False
        await hook.wait_for(lambda: len(hook.events) >= 1_000)
    # Stopped part-way: what was delivered and what is still pending add up to every event.
    delivered = [item["data"]["audit_id"] for item in hook.events]
    assert delivered == list(range(1, len(delivered) + 1))  # in order, nothing skipped
    store = store_for(settings)
    await store.open()
    try:
        (state,) = await store.list_receivers()
        pending = await store.count_audit_after(state.cursor, EVENT_ACTIONS)
        assert await store.list_abandoned() == []
    finally:
        await store.close()
    assert 1_000 <= state.cursor <= len(delivered)  # written after acknowledgement
    assert state.cursor + pending == total
    # Memory stays bounded: a worker reads the log a batch at a time.
    assert delivery.AUDIT_BATCH <= 1_000


async def test_drain_returns_promptly_and_an_event_cut_short_is_sent_again(
    sqlite_store: tuple[KeyStore, Path], receivers: Callable[..., Any]
) -> None:
    store, _ = sqlite_store
    backing_off, backing_port = await receivers(down=True)
    hanging, hanging_port = await receivers(hang=True)
    hooks = (
        notify.Webhook(plain_url(backing_port), SECRET.encode()),
        notify.Webhook(plain_url(hanging_port), SECRET.encode()),
    )
    metrics = ProxyMetrics()
    sender = Delivery(store, hooks, metrics, poll_interval=0.05)
    await sender.start()
    deadline = time.monotonic() + WAIT
    while len(await store.list_receivers()) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await store.create_key(new_key("in-flight"), "admin-test")
    await backing_off.wait_for(lambda: backing_off.attempts >= 1)
    await asyncio.sleep(0.2)  # the hanging receiver holds its POST
    started = time.monotonic()
    await sender.drain(timeout=0.5)
    assert time.monotonic() - started < 1.0
    states = {s.receiver: s for s in await store.list_receivers()}
    cursors = {states[hook.receiver_id].cursor for hook in hooks}
    assert len(cursors) == 1  # neither cursor moved: both events will be sent again
    # The next start sends the cut-short event again, to the receiver now answering.
    hanging.hang = False
    again = Delivery(store, hooks[1:], ProxyMetrics(), poll_interval=0.05)
    await again.start()
    try:
        await hanging.wait_for(lambda: len(hanging.events) == 1)
    finally:
        await again.drain()
    assert names(hanging.events) == ["in-flight"]
    assert delivery.STOP_WAIT <= 5
