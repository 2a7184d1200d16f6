"""Usage counts from two workers of one `keygate serve --workers 2` add up in the store:
each worker counts in memory and flushes additively, the last batch at shutdown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from support.config import REST, create_key, policy_data, write_config
from support.http import http_request, raw_request
from support.processes import ServeProcess, free_port, reaped, start_serve, wait_for_port
from support.upstreams import Backend

from gateway.settings import load_settings
from gateway.store.factory import store_for

ROLE = "usage-reader"
ALLOWED = 60  # GETs the policy allows: forwarded
DENIED = 20  # POSTs it does not allow: refused by the policy (403)
CONNECTIONS = 8  # clients sending at once, each request on a new connection


async def both_workers_serving(serve: ServeProcess, timeout: float = 30.0) -> None:
    """Wait until both workers logged that they serve (each listens on the shared port)."""
    deadline = time.monotonic() + timeout
    while serve.log_text().count("keygate serving") < 2:
        assert serve.process.poll() is None, serve.log_text()
        assert time.monotonic() < deadline, serve.log_text()
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_two_workers_usage_adds_up_in_the_store(tmp_path: Path, backend: Backend) -> None:
    policy = policy_data()
    policy["roles"][ROLE] = {"allow": [f"GET {REST}/_echo/**"]}
    port = free_port()
    config = write_config(
        tmp_path / "w2",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        policy=policy,
        extra={"usage": {"flush_interval": 60}},  # only the shutdown flush writes
    )
    secret = await create_key(config, "usage-w2", [ROLE])
    serve = start_serve(config, port, tmp_path / "w2.log", "--workers", "2")
    asks = [("GET", f"{REST}/_echo/a")] * ALLOWED + [("POST", f"{REST}/_echo/a")] * DENIED
    statuses: list[int] = []

    async def client(share: list[tuple[str, str]]) -> None:
        for method, path in share:
            answer = await raw_request(port, http_request(method, path, [("X-API-Key", secret)]))
            statuses.append(answer.status)

    started = time.time()
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        await both_workers_serving(serve)
        await asyncio.wait_for(
            asyncio.gather(*(client(asks[i::CONNECTIONS]) for i in range(CONNECTIONS))), 60
        )
        assert serve.stop() == 0, serve.log_text()
        log = serve.log_text()
    assert sorted(statuses) == [200] * ALLOWED + [403] * DENIED
    pids = {line.split()[2] for line in log.splitlines() if "keygate.access" in line}
    assert len(pids) == 2, f"both workers answered: {pids}"
    store = store_for(load_settings(config))
    await store.open()
    try:
        key = await store.get_key_by_name("usage-w2")
        assert key is not None
        hour = int(started) // 3600
        rows = await store.usage_hours(key.id, hour - 1, int(time.time()) // 3600 + 1)
    finally:
        await store.close()
    assert sum(row.forwarded for row in rows) == ALLOWED
    assert sum(row.denied for row in rows) == DENIED
    assert key.use_count == ALLOWED
    # Each worker saw the one loopback address: each counts it once per hour.
    assert sum(row.addresses for row in rows) >= 1
