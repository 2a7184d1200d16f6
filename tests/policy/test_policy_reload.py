"""Policy reload: SIGHUP to a supervisor and its workers, `keygate policy reload`, a file watch;
a broken file keeps the old policy; GET /api/v1/policy and /metrics say what is loaded."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from support.config import REST, add_key, create_key, write_config
from support.http import http_request, raw_request
from support.processes import free_port, reaped, run_cli, start_serve, wait_for_port
from support.upstreams import Backend

from gateway.keys.rules import key_json
from gateway.serve.wiring import running_gateway
from gateway.settings import load_settings

ROLE = "reloadable"
PATH = f"{REST}/_echo/reload"
RELOAD_BOUND = 1.0  # seconds within which every worker must apply a reloaded policy


def policy(allow: list[str]) -> dict[str, Any]:
    return {"roles": {ROLE: {"allow": allow}, "other": {"allow": []}}, "protected": []}


def write_policy(config: Path, data: dict[str, Any] | str) -> None:
    text = data if isinstance(data, str) else yaml.safe_dump(data)
    (config.parent / "policy.yaml").write_text(text, encoding="utf-8")


async def statuses(port: int, secret: str, count: int) -> list[int]:
    """Status of `count` GETs, each on a new connection (spread over the workers)."""
    out = []
    for _ in range(count):
        response = await raw_request(port, http_request("GET", PATH, [("X-API-Key", secret)]))
        out.append(response.status)
    return out


@pytest.mark.slow
async def test_sighup_reloads_every_worker_and_a_broken_file_keeps_the_old_policy(
    tmp_path: Path, backend: Backend
) -> None:
    port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path / "reload",
        backend.url,
        listen_port=port,
        admin_port=admin_port,
        policy=policy([f"GET {REST}/_echo/**"]),
    )
    secret = await create_key(config, "reloaded", [ROLE])
    serve = start_serve(config, port, tmp_path / "reload.log", "--workers", "2")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        await wait_for_port(admin_port, process=serve.process)
        await asyncio.sleep(0.5)
        assert set(await statuses(port, secret, 10)) == {200}

        write_policy(config, policy([]))  # the role now allows nothing
        started = time.monotonic()
        done = run_cli("policy", "reload", "--config", str(config))
        assert done.returncode == 0, done.stderr
        assert f"pid {serve.process.pid}" in done.stdout
        while set(await statuses(port, secret, 6)) != {403}:
            assert time.monotonic() - started < RELOAD_BOUND + 1, "a worker kept the old policy"
        assert set(await statuses(port, secret, 20)) == {403}  # every worker, every time

        # A broken file: the CLI lists the problem and signals nothing...
        write_policy(config, "roles: {reloadable: {allow: [FETCH /x]}}\n")
        refused = run_cli("policy", "reload", "--config", str(config))
        assert refused.returncode != 0
        assert "unknown method 'FETCH'" in refused.stderr
        # ...and a SIGHUP anyway keeps the policy in force, logging every problem.
        serve.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(RELOAD_BOUND)
        assert set(await statuses(port, secret, 10)) == {403}
        log = serve.log_text()
        assert "policy reload (SIGHUP) failed; the old policy stays in force" in log
        assert "unknown method 'FETCH'" in log

        async with aiohttp.ClientSession() as session:
            metrics = await (await session.get(f"http://127.0.0.1:{admin_port}/metrics")).text()
        assert 'keygate_policy_reloads_total{result="ok"} 1.0' in metrics
        assert 'keygate_policy_reloads_total{result="failed"} 1.0' in metrics
        assert serve.stop() == 0, serve.log_text()


# Seconds between checks of the watched policy file in the watch test.
TEST_WATCH_INTERVAL = 0.05


async def test_a_watched_file_reloads_and_keys_with_removed_roles_grant_nothing(
    tmp_path: Path, backend: Backend
) -> None:
    config = write_config(
        tmp_path / "watch",
        backend.url,
        policy=policy([f"GET {REST}/_echo/**"]),
        extra={"policy_watch": True},
    )
    # The shipped 1 s between checks, shortened: the test waits for one check after the write.
    async with running_gateway(
        load_settings(config), policy_watch_interval=TEST_WATCH_INTERVAL
    ) as gateway:
        secret = await add_key(gateway, "watched", [ROLE])
        first = gateway.runtime.policy_source
        assert first is not None
        sha_before = first.loaded.sha256
        assert (await statuses(gateway.proxy_port, secret, 1)) == [200]
        write_policy(config, {"roles": {"other": {"allow": [f"GET {REST}/**"]}}})
        started = time.monotonic()
        while ROLE in gateway.runtime.policy.roles:
            assert time.monotonic() - started < 3, "the watch did not reload the policy"
            await asyncio.sleep(TEST_WATCH_INTERVAL / 2)
        assert (await statuses(gateway.proxy_port, secret, 1)) == [403]
        assert first.loaded.sha256 != sha_before
        runtime = gateway.runtime
        row = await runtime.store.get_key_by_name("watched")
        assert row is not None
        assert key_json(row, time.time(), runtime.policy)["unknown_roles"] == [ROLE]


async def test_get_policy_says_what_is_loaded(tmp_path: Path, backend: Backend) -> None:
    config = write_config(tmp_path / "info", backend.url, policy=policy(["GET /x"]))
    async with running_gateway(load_settings(config)) as gateway:
        runtime = gateway.runtime
        assert runtime.reload_policy("test") is True  # unchanged file: counted, kept
        write_policy(config, "roles: [not, a, mapping]\n")
        assert runtime.reload_policy("test") is False
        holder = runtime.policy_source
        assert holder is not None
        assert dict(holder.reloads) == {"unchanged": 1, "failed": 1}
        assert holder.last_problems
        assert holder.loaded.source == str(config.parent / "policy.yaml")
        assert len(holder.loaded.sha256) == 64
        assert json.dumps(holder.loaded.loaded_at)
