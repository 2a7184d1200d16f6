"""Rolling a key on a running gateway: no request fails during the overlap, then `key_rolled`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest
from support.config import ALL_ROLE, REST, create_key, write_config
from support.processes import arun_cli, free_port, reaped, start_serve, wait_for_port
from support.upstreams import Backend

CLIENTS = 8  # concurrent clients hammering the gateway
OVERLAP = 4  # seconds the old secret keeps working after the roll


@pytest.mark.slow
async def test_a_roll_under_load_fails_no_request_then_the_old_secret_is_refused(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(tmp_path / "roll", backend.url, listen_port=port, admin_port=free_port())
    old = await create_key(config, "rolling-bot", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "roll.log", "--workers", "2")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        url = f"http://127.0.0.1:{port}{REST}/_echo/roll"
        current = {"secret": old}
        statuses: list[tuple[str, int]] = []
        stop = asyncio.Event()

        async def hammer(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                secret = current["secret"]
                async with session.get(url, headers={"X-API-Key": secret}) as response:
                    await response.read()
                    statuses.append((secret, response.status))

        async with aiohttp.ClientSession() as session:
            clients = [asyncio.create_task(hammer(session)) for _ in range(CLIENTS)]
            await asyncio.sleep(0.5)
            code, out, err = await arun_cli(
                "keys",
                "roll",
                "rolling-bot",
                "--overlap",
                str(OVERLAP),
                "--json",
                "--config",
                str(config),
            )
            assert code == 0, err
            rolled_at = time.monotonic()
            rolled = json.loads(out)
            new = rolled["secret"]
            assert rolled["previous_expires_at"] is not None
            await asyncio.sleep(0.5)  # the old secret still works meanwhile
            current["secret"] = new  # the client deploys its new secret
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)

            assert statuses and all(status == 200 for _, status in statuses), [
                s for s in statuses if s[1] != 200
            ][:5]
            assert {secret for secret, _ in statuses} == {old, new}
            assert sum(1 for secret, _ in statuses if secret == old) > 50

            # Once the overlap has ended, on every worker, the old secret answers key_rolled.
            await asyncio.sleep(max(0.0, rolled_at + OVERLAP + 0.2 - time.monotonic()))
            for _ in range(6):
                async with session.get(url, headers={"X-API-Key": old}) as response:
                    assert response.status == 401
                    assert (await response.json())["error"] == "key_rolled"
                async with session.get(url, headers={"X-API-Key": new}) as response:
                    assert response.status == 200
        assert serve.stop() == 0, serve.log_text()
