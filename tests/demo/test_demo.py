"""`keygate demo` as a process: the key it prints makes its allowed/denied/protected calls."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp
import pytest
from support.processes import NEUTRAL_CWD, PYTHON, cli_env, free_port, wait_for_port

from gateway.admin.passwords import verify_password
from gateway.demo.command import (
    DEMO_ADMIN_NAME,
    DEMO_KEY_NAME,
    DEMO_ROLES,
    curl_lines,
    fresh_demo_credentials,
    write_demo_config,
)
from gateway.keys import keyformat as keys
from gateway.settings import load_settings
from gateway.store.factory import store_for

# Starts real processes (CLI, server, demo): deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow

EXIT_AFTER = 8.0  # seconds the demo runs before exiting by itself
KEY_PATTERN = re.compile(r"^\s+(kg_[0-9A-Za-z]{36})$", re.MULTILINE)
ADMIN_PATTERN = re.compile(r"-u demo-admin:(\S+) ")
START_TIMEOUT = 20.0  # seconds until the demo must have printed its key


async def test_demo_prints_a_key_and_its_example_calls_behave(tmp_path: Path) -> None:
    port, admin_port, backend_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "demo-data"
    with (tmp_path / "demo.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "gateway", "demo",
            "--port", str(port), "--admin-port", str(admin_port),
            "--backend-port", str(backend_port), "--data-dir", str(data_dir),
            "--exit-after", str(EXIT_AFTER),
            stdout=asyncio.subprocess.PIPE, stderr=log, cwd=NEUTRAL_CWD, env=cli_env(),
        )  # fmt: skip
    try:
        assert process.stdout is not None
        printed = ""
        deadline = time.monotonic() + START_TIMEOUT
        while (match := KEY_PATTERN.search(printed)) is None or "Press Ctrl-C" not in printed:
            line = await asyncio.wait_for(process.stdout.readline(), deadline - time.monotonic())
            assert line, f"demo exited before printing its key:\n{printed}"
            printed += line.decode()
        key = match[1]
        assert f"gateway on 127.0.0.1:{port}" in printed
        assert f"backend on 127.0.0.1:{backend_port}" in printed
        assert f"admin on 127.0.0.1:{admin_port}" in printed
        assert f"API Keys page: open http://127.0.0.1:{admin_port}/ in a browser" in printed
        password = ADMIN_PATTERN.search(printed)
        assert password is not None
        assert f"Name: {DEMO_ADMIN_NAME}   Password: {password[1]}" in printed
        assert f'-H "X-API-Key: {key}" http://127.0.0.1:{port}/1Integrate/rest/sessions/' in printed
        await wait_for_port(admin_port)

        rest = f"http://127.0.0.1:{port}/1Integrate/rest"
        with_key = {"X-API-Key": key}
        async with aiohttp.ClientSession() as session:
            # allowed: 1int-user may read sessions
            async with session.get(f"{rest}/sessions/", headers=with_key) as response:
                assert response.status == 200
                assert (await response.json())["kind"] == "sessions"
            # allowed: sessions-control; the backend records the key's name
            async with session.put(
                f"{rest}/sessions/demo/s1", json={}, headers=with_key
            ) as response:
                assert response.status == 201
                assert (await response.json())["createdBy"] == "demo-integration"
            # denied: 1int-user may not write rules
            async with session.put(f"{rest}/rules/demo/r1", json={}, headers=with_key) as r:
                assert r.status == 403
                assert (await r.json())["error"] == "forbidden"
            # protected: key management, whatever the roles
            async with session.get(f"{rest}/apikeys", headers=with_key) as response:
                assert response.status == 403
                assert (await response.json())["error"] == "forbidden_protected"
            # no key: passes through; the backend asks for its own login
            async with session.get(f"{rest}/sessions/") as response:
                assert response.status == 401
            # the printed admin credentials work on the admin API; the key does not
            admin_match = ADMIN_PATTERN.search(printed)
            assert admin_match is not None, printed
            login = {"Authorization": aiohttp.encode_basic_auth(DEMO_ADMIN_NAME, admin_match[1])}
            admin = f"http://127.0.0.1:{admin_port}/api/v1"
            async with session.get(f"{admin}/keys", headers=login) as response:
                assert response.status == 200
                names = [item["name"] for item in (await response.json())["items"]]
                assert names == [DEMO_KEY_NAME]
            async with session.get(f"{admin}/keys", headers=with_key) as response:
                assert response.status == 403
                assert (await response.json())["error"] == "api_key_forbidden"
        rest_out = await asyncio.wait_for(process.stdout.read(), EXIT_AFTER + 10)
        code = await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, (tmp_path / "demo.log").read_text()
    assert key not in rest_out.decode()  # shown once, in the banner
    assert (data_dir / "gateway.yaml").exists() and (data_dir / "policy.yaml").exists()
    for stored in data_dir.glob("keygate.db*"):
        assert key.encode() not in stored.read_bytes()


async def test_each_demo_run_replaces_the_demo_key_and_admin_password(tmp_path: Path) -> None:
    config = write_demo_config(tmp_path / "demo", 18080, 18081, 19000)
    first, first_password = await fresh_demo_credentials(config)
    second, second_password = await fresh_demo_credentials(config)
    assert first != second
    assert first_password != second_password
    settings = load_settings(config)
    store = store_for(settings)
    await store.open()
    try:
        rows = await store.list_keys()
    finally:
        await store.close()
    assert [(row.name, row.roles) for row in rows] == [(DEMO_KEY_NAME, tuple(DEMO_ROLES))]
    assert rows[0].digest == keys.digest(second)
    store = store_for(settings)
    await store.open()
    try:
        admin = await store.get_admin(DEMO_ADMIN_NAME)
    finally:
        await store.close()
    assert admin is not None and admin.grant_all
    assert verify_password(second_password, admin.password_hash)
    assert not verify_password(first_password, admin.password_hash)
    assert second_password not in admin.password_hash
    for line in curl_lines(second, 18080).splitlines():
        if line.startswith("curl"):
            assert "http://127.0.0.1:18080/1Integrate/rest/" in line
