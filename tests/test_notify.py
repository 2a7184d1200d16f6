"""Webhook notifications against real receivers on loopback: signatures, retries, no blocking."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gateway import notify
from gateway.notify import Notifier, Webhook, event, sign, verify

SECRET = b"whsec-test-secret"


@dataclass
class Receiver:
    """A webhook receiver that fails its first `fail_first` deliveries."""

    fail_first: int = 0
    received: list[tuple[dict[str, object], bool]] = field(default_factory=list)
    attempts: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        header = request.headers.get(notify.SIGNATURE_HEADER, "")
        self.received.append((json.loads(body), verify(SECRET, header, body, time.time())))
        return web.Response(status=204)


async def serve(receiver: Receiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Back-off in tens of milliseconds (the schedule, not the logic, is what changes)."""
    monkeypatch.setattr(notify, "BACKOFF_BASE", 0.02)


@pytest.fixture
async def notifier_for() -> AsyncIterator[list[Notifier]]:
    made: list[Notifier] = []
    yield made
    for notifier in made:
        await notifier.close()


def test_signatures_verify_only_unchanged_fresh_bodies() -> None:
    body = b'{"type":"key.revoked"}'
    header = sign(SECRET, 1_000, body)
    assert verify(SECRET, header, body, 1_000)
    assert not verify(SECRET, header, body + b" ", 1_000)
    assert not verify(b"other", header, body, 1_000)
    assert not verify(SECRET, header, body, 1_000 + notify.SIGNATURE_TOLERANCE + 1)
    assert not verify(SECRET, "v1=abc", body, 1_000)


async def test_events_arrive_signed_and_never_hold_a_secret(
    notifier_for: list[Notifier],
) -> None:
    receiver = Receiver()
    runner, url = await serve(receiver)
    try:
        notifier = Notifier((Webhook(url, SECRET),))
        notifier_for.append(notifier)
        await notifier.start()
        notifier.publish(event("key.created", {"id": 3, "name": "etl"}, 1_800_000_000.0))
        await notifier.drain(5)
        assert len(receiver.received) == 1
        payload, signed = receiver.received[0]
        assert signed
        assert payload["type"] == "key.created"
        assert payload["data"] == {"id": 3, "name": "etl"}
        assert payload["created_at"] == "2027-01-15T08:00:00Z"
    finally:
        await runner.cleanup()


async def test_a_receiver_that_is_down_gets_retries(
    notifier_for: list[Notifier], fast_retries: None
) -> None:
    receiver = Receiver(fail_first=3)
    runner, url = await serve(receiver)
    try:
        notifier = Notifier((Webhook(url, SECRET),))
        notifier_for.append(notifier)
        await notifier.start()
        notifier.publish(event("key.revoked", {"id": 1}, time.time()))
        await notifier.drain(5)
        assert receiver.attempts == 4
        assert [signed for _, signed in receiver.received] == [True]
        assert (notifier.delivered, notifier.failed) == (1, 0)
    finally:
        await runner.cleanup()


async def test_publishing_never_waits_and_the_queue_is_bounded(
    monkeypatch: pytest.MonkeyPatch, notifier_for: list[Notifier]
) -> None:
    monkeypatch.setattr(notify, "QUEUE_LIMIT", 50)
    notifier = Notifier((Webhook("http://127.0.0.1:1/hook", SECRET),))  # nobody listens
    notifier_for.append(notifier)  # not started: nothing leaves the queue
    started = time.perf_counter()
    for index in range(200):
        notifier.publish(event("key.created", {"id": index}, 0.0))
    assert time.perf_counter() - started < 0.5
    assert notifier.dropped == 150
    await asyncio.sleep(0)
