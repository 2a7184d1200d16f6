"""Webhook notifications against real receivers on loopback: signatures, ids, schedule, URLs."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from support.config import write_config
from support.processes import REPO_ROOT, run_cli
from support.stores import new_key

from gateway.events import webhooks as notify
from gateway.events.delivery import ReceiverWorker
from gateway.events.webhooks import Webhook, event, redact_url, sign, verify
from gateway.runtime.metrics import WebhookCounts
from gateway.settings import load_settings
from gateway.store.factory import store_for

SECRET = b"whsec-test-secret"


@dataclass
class Receiver:
    """A webhook receiver that fails its first `fail_first` deliveries."""

    fail_first: int = 0
    received: list[tuple[dict[str, object], bool]] = field(default_factory=list)
    attempts: int = 0
    ids: list[str] = field(default_factory=list)  # Keygate-Event-Id of each accepted event

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.attempts <= self.fail_first:
            return web.Response(status=503)
        header = request.headers.get(notify.SIGNATURE_HEADER, "")
        self.received.append((json.loads(body), verify(SECRET, header, body, time.time())))
        self.ids.append(request.headers.get(notify.EVENT_ID_HEADER, ""))
        return web.Response(status=204)


async def serve(receiver: Receiver) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


def test_signatures_verify_only_unchanged_fresh_bodies() -> None:
    body = b'{"type":"key.revoked"}'
    header = sign(SECRET, 1_000, body)
    assert verify(SECRET, header, body, 1_000)
    assert not verify(SECRET, header, body + b" ", 1_000)
    assert not verify(b"other", header, body, 1_000)
    assert not verify(SECRET, header, body, 1_000 + notify.SIGNATURE_TOLERANCE + 1)
    assert not verify(SECRET, "v1=abc", body, 1_000)


async def test_events_arrive_signed_with_their_id_in_a_header() -> None:
    receiver = Receiver()
    runner, url = await serve(receiver)
    try:
        item = event("key.created", {"id": 3, "name": "etl"}, 1_800_000_000.0)
        item["id"] = "evt_3"
        async with aiohttp.ClientSession() as session:
            problem = await notify.deliver_once(
                session, Webhook(url, SECRET), notify.encode(item), "evt_3"
            )
        assert problem is None
        payload, signed = receiver.received[0]
        assert signed
        assert (payload["id"], payload["type"]) == ("evt_3", "key.created")
        assert payload["data"] == {"id": 3, "name": "etl"}
        assert payload["created_at"] == "2027-01-15T08:00:00Z"
        assert receiver.ids == ["evt_3"]
    finally:
        await runner.cleanup()


def test_the_retry_schedule_doubles_from_a_second_to_ten_minutes() -> None:
    delays = [notify.retry_delay(n) for n in range(1, 14)]
    assert delays[:10] == [2.0**n for n in range(10)]
    assert delays[10:] == [notify.RETRY_MAX] * 3 == [600.0] * 3
    assert notify.retry_delay(10_000) == notify.RETRY_MAX
    assert notify.RETRY_GIVE_UP == 24 * 3600


# Credentials a webhook URL may carry: userinfo, a Slack-style token path, a query token.
USER, PASSWORD = "hookuser", "hunter2pass"
PATH_TOKENS = ("T0ABCDEF1", "B0GHIJKL2", "XoXoSecretToken123")
QUERY_TOKEN = "qsecret456"
CREDENTIALS = (USER, PASSWORD, *PATH_TOKENS, QUERY_TOKEN)


@dataclass
class Failing:
    """A receiver on every path that answers 500 to paths holding "fail", 204 to others."""

    seen: list[tuple[str, str]] = field(default_factory=list)  # (path with query, Authorization)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append((request.path_qs, request.headers.get("Authorization", "")))
        return web.Response(status=500 if "fail" in request.path else 204)


async def serve_failing(receiver: Failing) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)  # the receiver's own log is not keygate's
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


def secret_url(port: int, last: str = "fail") -> str:
    tokens = "/".join(PATH_TOKENS)
    return f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/services/{tokens}/{last}?token={QUERY_TOKEN}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example/hook", "https://hooks.example/hook"),
        ("https://hooks.example:8443/a/b", "https://hooks.example:8443/a/***"),
        ("https://u:p@hooks.example/a?x=1&y=2#frag", "https://***@hooks.example/a?x=***&y=***#***"),
        ("https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/services/***"),
        ("https://h.example/AbCdEf0123456789XyZ", "https://h.example/***"),  # a token first
        ("https://h.example/kg_ABCDEFGhijk", "https://h.example/***"),
        ("https://token@h.example", "https://***@h.example"),
        ("http://[::1]:9/hook?token", "http://[::1]:9/hook?token"),
    ],
)
def test_webhook_urls_are_shown_without_their_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_retries_log_the_webhook_url_without_its_credentials(
    config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Failing()
    runner, port = await serve_failing(receiver)
    store = store_for(load_settings(config_path))
    await store.open()
    clock = [1_800_000_000.0]
    try:
        hook = Webhook(secret_url(port), SECRET)
        assert PASSWORD not in repr(hook)
        async with aiohttp.ClientSession() as session:
            worker = ReceiverWorker(
                store,
                hook,
                session,
                WebhookCounts(),
                poll_interval=1.0,
                owner="test",
                now=lambda: clock[0],
            )
            await worker.step()
            await store.create_key(new_key("logged"), "admin-test")
            for _ in range(3):
                clock[0] += await worker.step()
    finally:
        await store.close()
        await runner.cleanup()
    # The receiver got the URL whole (the credentials are used, only never shown).
    assert len(receiver.seen) == 3
    path, authorization = receiver.seen[0]
    assert path == secret_url(port).split(str(port), 1)[1]
    assert authorization.startswith("Basic ")
    logged = caplog.text
    assert logged.count(f"http://***@127.0.0.1:{port}/services/***?token=***") == 3, logged
    for credential in CREDENTIALS:
        assert credential not in logged


@pytest.mark.slow
async def test_notify_test_prints_webhook_urls_without_credentials(tmp_path: Path) -> None:
    receiver = Failing()
    runner, port = await serve_failing(receiver)
    try:
        directory = tmp_path / "cfg"
        directory.mkdir()
        # A secret file written on Windows: its CRLF is not part of the URL.
        (directory / "hook.url").write_bytes(secret_url(port, "ok").encode() + b"\r\n")
        config = write_config(
            directory,
            "http://127.0.0.1:9",
            extra={
                "notify": {
                    "webhooks": [
                        {"url": {"file": "hook.url"}, "secret": {"env": "HOOK_SECRET"}},
                        {"url": {"env": "HOOK_URL"}, "secret": {"env": "HOOK_SECRET"}},
                    ]
                }
            },
        )
        env = {"HOOK_SECRET": "whsec", "HOOK_URL": secret_url(port), "PYTHONPATH": str(REPO_ROOT)}
        done = await asyncio.to_thread(run_cli, "notify", "test", "--config", str(config), env=env)
    finally:
        await runner.cleanup()
    shown = f"http://***@127.0.0.1:{port}/services/***?token=***"
    assert done.stdout.splitlines() == [f"{shown}: delivered", f"{shown}: HTTP 500"], done
    assert done.returncode != 0 and "1 of 2 webhook(s)" in done.stderr
    assert [path.split("?")[0].rsplit("/", 1)[1] for path, _ in receiver.seen] == ["ok", "fail"]
    for credential in CREDENTIALS:
        assert credential not in done.stdout + done.stderr
