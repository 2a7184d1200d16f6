"""The admin listener's access log: the page's change-feed polls are not written at info."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from test_admin_api import ROOT, make_app, make_runtime

from gateway.admin.access_log import AdminAccessLogger
from gateway.runtime.context import Runtime

ACCESS = "keygate.access"
POLLS = 5  # the page polls every POLL_MS; a handful of polls stands for a page left open


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[str]:
    """A real admin listener on a loopback port, with the access log `keygate serve` writes."""
    runtime: Runtime = await make_runtime(tmp_path)
    runner = web.AppRunner(
        make_app(runtime), access_log=logging.getLogger(ACCESS), access_log_class=AdminAccessLogger
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await runtime.store.close()


def lines(caplog: pytest.LogCaptureFixture, level: int, path: str) -> list[logging.LogRecord]:
    """The access lines at exactly `level` naming `path`."""
    return [
        r
        for r in caplog.records
        if r.name == ACCESS and r.levelno == level and f" {path} " in r.getMessage()
    ]


async def test_polls_are_written_at_debug_not_info(
    admin: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS)
    async with aiohttp.ClientSession(headers=ROOT) as http:
        for _ in range(POLLS):
            async with http.get(admin + "/api/v1/changes") as answer:
                assert answer.status == 200, await answer.text()
        async with http.get(admin + "/api/v1/keys") as answer:
            assert answer.status == 200
    assert lines(caplog, logging.INFO, "/api/v1/changes") == []
    assert len(lines(caplog, logging.DEBUG, "/api/v1/changes")) == POLLS
    # Other requests keep their info line.
    assert len(lines(caplog, logging.INFO, "/api/v1/keys")) == 1


async def test_polls_write_nothing_at_info_level(
    admin: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    async with aiohttp.ClientSession(headers=ROOT) as http:
        for _ in range(POLLS):
            async with http.get(admin + "/api/v1/changes") as answer:
                assert answer.status == 200
    assert [r for r in caplog.records if r.name == ACCESS] == []


async def test_a_refused_poll_is_still_written_at_info(
    admin: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=ACCESS)
    async with aiohttp.ClientSession() as http, http.get(admin + "/api/v1/changes") as answer:
        assert answer.status == 401  # no credentials
    assert len(lines(caplog, logging.INFO, "/api/v1/changes")) == 1
