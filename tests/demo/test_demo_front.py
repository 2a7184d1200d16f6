"""`keygate demo --front nginx`: the demo backend behind Debian's nginx, keygate deciding."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import aiohttp
import pytest
from support.fronts import NGINX_SITE, find_nginx, tool_or_skip
from support.processes import NEUTRAL_CWD, PYTHON, cli_env, free_port

from gateway.demo import front
from gateway.demo.command import DEMO_KEY_NAME

EXIT_AFTER = 10.0  # seconds the demo runs before exiting by itself
START_TIMEOUT = 25.0  # seconds until the demo must have printed its key
KEY_PATTERN = re.compile(r"^\s+(kg_[0-9A-Za-z]{36})$", re.MULTILINE)


def test_the_demo_runs_the_very_nginx_example_deploy_ships() -> None:
    packaged = (Path(front.__file__).parent.parent / front.EXAMPLE).read_text(encoding="utf-8")
    assert packaged == NGINX_SITE.read_text(encoding="utf-8")
    site = front.site_config(18080, 19000, 18000)
    assert "127.0.0.1:18080" in site and "127.0.0.1:19000" in site
    assert "listen 127.0.0.1:18000;" in site and "8080" not in site.replace("18080", "")


def test_without_nginx_the_demo_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(front.shutil, "which", lambda name: None)
    monkeypatch.setattr(front, "NGINX_FALLBACK", str(tmp_path / "no-nginx"))
    with pytest.raises(front.FrontError, match=r"apt-get install -y nginx"):
        front.find_nginx()


@pytest.mark.slow
async def test_demo_front_nginx_serves_the_backend_through_nginx_with_keygate_deciding(
    tmp_path: Path,
) -> None:
    tool_or_skip("nginx", find_nginx())
    port, admin_port, backend_port, front_port = (free_port() for _ in range(4))
    data_dir = tmp_path / "demo-data"
    with (tmp_path / "demo.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "gateway", "demo", "--front", "nginx",
            "--port", str(port), "--admin-port", str(admin_port),
            "--backend-port", str(backend_port), "--front-port", str(front_port),
            "--data-dir", str(data_dir), "--exit-after", str(EXIT_AFTER),
            stdout=asyncio.subprocess.PIPE, stderr=log, cwd=NEUTRAL_CWD, env=cli_env(),
        )  # fmt: skip
    try:
        assert process.stdout is not None
        printed = ""
        deadline = time.monotonic() + START_TIMEOUT
        while (match := KEY_PATTERN.search(printed)) is None or "Press Ctrl-C" not in printed:
            line = await asyncio.wait_for(process.stdout.readline(), deadline - time.monotonic())
            assert line, f"demo exited early:\n{printed}\n{(tmp_path / 'demo.log').read_text()}"
            printed += line.decode()
        key = match[1]
        assert f"nginx on 127.0.0.1:{front_port}" in printed
        rest = f"http://127.0.0.1:{front_port}/1Integrate/rest"
        assert f'-H "X-API-Key: {key}" {rest}/sessions/' in printed
        assert f"127.0.0.1:{port}/1Integrate" not in printed  # the calls go through nginx
        with_key = {"X-API-Key": key}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{rest}/sessions/", headers=with_key) as response:
                assert response.status == 200
                assert response.headers["Server"].startswith("nginx")
            async with session.put(f"{rest}/sessions/d/s1", json={}, headers=with_key) as r:
                assert r.status == 201 and (await r.json())["createdBy"] == DEMO_KEY_NAME
            async with session.put(f"{rest}/rules/d/r1", json={}, headers=with_key) as r:
                assert r.status == 403 and (await r.json())["error"] == "forbidden"
            async with session.get(f"{rest}/apikeys", headers=with_key) as r:
                assert r.status == 403 and (await r.json())["error"] == "forbidden_protected"
            async with session.get(f"{rest}/sessions/") as r:  # no key: the backend's login
                assert r.status == 401 and (await r.json())["error"] == "unauthenticated"
        nginx_pid = int((data_dir / "nginx" / "nginx.pid").read_text())
        assert await asyncio.wait_for(process.wait(), EXIT_AFTER + 15) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(nginx_pid, 0)  # nginx stopped with the demo
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
