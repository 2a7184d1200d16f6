"""Faults operators hit at start and stop: bad TLS material, missing extras, busy ports, pipes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml
from support.config import ALL_ROLE, REST, create_key, init_store, write_config
from support.http import http_request, raw_request
from support.processes import (
    NEUTRAL_CWD,
    PYTHON,
    REPO_ROOT,
    children_of,
    cli_env,
    free_port,
    reaped,
    run_cli,
    start_serve,
    wait_for_port,
)
from support.upstreams import Backend

from gateway.admin.health import READY_TIMEOUT
from gateway.serve.wiring import running_gateway
from gateway.settings import ConfigError, UpstreamTLS, load_settings

KUBELET_DEFAULT_PROBE_TIMEOUT = 1  # seconds a probe waits when timeoutSeconds is not set
NOT_PEM = "this is not a PEM file\n"


def one_error_line(stderr: str) -> str:
    """The single `keygate: ...` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    assert "Event loop is closed" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("keygate: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def tls_config(directory: Path, tls: dict[str, str]) -> Path:
    """A config for an https:// upstream with `tls` (file names relative to `directory`)."""
    return write_config(
        directory,
        "https://127.0.0.1:9",
        listen_port=free_port(),
        admin_port=free_port(),
        extra={"upstream": {"tls": tls}},
    )


@pytest.mark.parametrize("key", ["ca_file", "cert_file"])
def test_non_pem_tls_file_is_a_config_problem(tmp_path: Path, key: str) -> None:
    directory = tmp_path / key
    config = tls_config(directory, {key: "bad.pem"})
    (directory / "bad.pem").write_text(NOT_PEM, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert f"upstream.tls.{key}" in str(raised.value)
    assert "PEM" in str(raised.value)


@pytest.mark.slow
def test_serve_with_a_non_pem_ca_file_fails_with_one_line_and_no_traceback(
    tmp_path: Path,
) -> None:
    config = tls_config(tmp_path / "serve", {"ca_file": "bad.pem"})
    (tmp_path / "serve" / "bad.pem").write_text(NOT_PEM, encoding="utf-8")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Event loop" not in result.stderr, result.stderr
    assert result.stderr.startswith("keygate: invalid config"), result.stderr
    assert "upstream.tls.ca_file" in result.stderr and "PEM" in result.stderr


async def test_a_failure_building_the_upstream_client_stops_everything_started(
    tmp_path: Path, backend: Backend
) -> None:
    """TLS material that breaks after the config check: no task left running, store closed."""
    directory = tmp_path / "late"
    config = write_config(directory, backend.url.replace("http:", "https:"))
    (directory / "bad.pem").write_text(NOT_PEM, encoding="utf-8")
    settings = load_settings(config)
    bad = UpstreamTLS(ca_file=str(directory / "bad.pem"))
    settings = msgspec.structs.replace(
        settings, upstream=msgspec.structs.replace(settings.upstream, tls=bad)
    )
    before = asyncio.all_tasks()
    with pytest.raises(OSError):
        async with running_gateway(settings):
            raise AssertionError("the gateway must not start")
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not left, left


@pytest.mark.slow
@pytest.mark.parametrize("which", ["proxy", "admin"])
def test_port_in_use_names_the_listener_and_address(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = {"proxy": free_port(), "admin": free_port(), which: busy}
        config = write_config(
            tmp_path / which,
            "http://127.0.0.1:9",
            listen_port=ports["proxy"],
            admin_port=ports["admin"],
        )
        result = run_cli("serve", "--config", str(config))
    assert result.returncode != 0
    line = one_error_line(result.stderr)
    assert f"{which} listener on 127.0.0.1:{busy}" in line and "address already in use" in line, (
        line
    )
    assert "Errno" not in line
    assert "drained" not in result.stderr, result.stderr


def without_package(directory: Path, package: str) -> dict[str, str]:
    """Environment for a subprocess in which `package` is not installed (as without its extra).

    A sitecustomize marks it absent in sys.modules, which is what an import and
    importlib.util.find_spec see for a package that is not there.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        f"import sys\nsys.modules[{package!r}] = None\n", encoding="utf-8"
    )
    return {"PYTHONPATH": f"{directory}{os.pathsep}{REPO_ROOT}"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("package", "extra", "setting"),
    [
        ("redis", {"rate_limits": {"redis_url": "redis://127.0.0.1:6379/0"}}, "redis_url"),
        ("asyncpg", {"store": {"url": "postgresql://keygate@127.0.0.1:9/keygate"}}, "store.url"),
    ],
)
def test_a_feature_without_its_extra_fails_at_config_load(
    tmp_path: Path, package: str, extra: dict[str, Any], setting: str
) -> None:
    config = write_config(tmp_path / "cfg", "http://127.0.0.1:9", extra=extra)
    env = without_package(tmp_path / "site", package)
    name = "redis" if package == "redis" else "postgres"
    for command in (["policy", "check"], ["serve", "--workers", "2"]):
        result = run_cli(*command, "--config", str(config), env=env, timeout=20)
        assert result.returncode != 0, (command, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("keygate: invalid config"), result.stderr
        assert setting in result.stderr and f"pip install 'keygate[{name}]'" in result.stderr


@pytest.mark.slow
def test_keys_list_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    config = init_store(write_config(tmp_path / "pipe", "http://127.0.0.1:9"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) is already gone: every write meets EPIPE
    try:
        result = subprocess.run(
            [PYTHON, "-m", "gateway", "keys", "list", "--json", "--config", str(config)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=NEUTRAL_CWD,
            env=cli_env(),
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode in (0, 141), result.stderr
    assert result.stderr == ""


DEMO_KEY = re.compile(r"^\s+(kg_[0-9A-Za-z]{36})$", re.MULTILINE)
DEMO_PASSWORD = re.compile(r"-u demo-admin:(\S+) ")
DEMO_RUNS_FOR = 30.0  # seconds the first demo runs before exiting by itself


@pytest.mark.slow
async def test_a_second_demo_on_busy_ports_touches_nothing_and_policy_reload_works(
    tmp_path: Path,
) -> None:
    port, admin_port, backend_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "demo"
    ports = [
        "--port", str(port), "--admin-port", str(admin_port),
        "--backend-port", str(backend_port), "--data-dir", str(data_dir),
    ]  # fmt: skip
    with (tmp_path / "demo.log").open("wb") as log:
        first = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "gateway", "demo", *ports, "--exit-after", str(DEMO_RUNS_FOR),
            stdout=asyncio.subprocess.PIPE, stderr=log, cwd=NEUTRAL_CWD, env=cli_env(),
        )  # fmt: skip
    try:
        assert first.stdout is not None
        printed = ""
        while "Press Ctrl-C" not in printed:
            line = await asyncio.wait_for(first.stdout.readline(), 20)
            assert line, "the demo exited before printing its key"
            printed += line.decode()
        key_match, password_match = DEMO_KEY.search(printed), DEMO_PASSWORD.search(printed)
        assert key_match is not None and password_match is not None
        key, password = key_match[1], password_match[1]
        await wait_for_port(admin_port)

        second = await asyncio.to_thread(run_cli, "demo", *ports, "--exit-after", "1")
        assert second.returncode != 0
        line = one_error_line(second.stderr)
        assert f"127.0.0.1:{port}" in line and "in use" in line, line

        config = data_dir / "gateway.yaml"
        reload = await asyncio.to_thread(run_cli, "policy", "reload", "--config", str(config))
        assert reload.returncode == 0, reload.stderr
        deadline = time.monotonic() + 10
        while "policy reload (SIGHUP)" not in (tmp_path / "demo.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
            await asyncio.sleep(0.05)

        auth = {"Authorization": aiohttp.encode_basic_auth("demo-admin", password)}
        async with aiohttp.ClientSession() as session:
            # The running demo's key and admin password are what it printed, untouched.
            async with session.get(
                f"http://127.0.0.1:{port}/1Integrate/rest/sessions/", headers={"X-API-Key": key}
            ) as response:
                assert response.status == 200
            async with session.get(
                f"http://127.0.0.1:{admin_port}/api/v1/keys", headers=auth
            ) as response:
                assert response.status == 200
    finally:
        if first.returncode is None:
            first.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.wait(), 20) == 0


SLOW_REQUESTS = 8  # concurrent slow requests: both workers get some (1 in 2**7 they don't)
SLOW_DELAY = 8.0  # seconds each slow request takes at the backend
RESTART_GRACE = 20  # seconds of grace: the slow requests finish within it


@pytest.mark.slow
async def test_a_restart_right_after_the_supervisor_was_killed_waits_for_its_draining_workers(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "kill",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"shutdown": {"grace_period": RESTART_GRACE}},
    )
    key = await create_key(config, "restart-bot", [ALL_ROLE])
    old = start_serve(config, port, tmp_path / "old.log", "--workers", "2")
    with reaped(old):
        await wait_for_port(port, process=old.process)
        deadline = time.monotonic() + 20
        while len(workers := children_of(old.process.pid)) < 2 or (
            old.log_text().count("keygate serving") < 2
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        old.extra_pids.extend(workers)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:

            async def slow() -> int:
                async with session.get(
                    f"http://127.0.0.1:{port}{REST}/_slow?delay={SLOW_DELAY}",
                    headers={"X-API-Key": key},
                ) as response:
                    await response.read()
                    return response.status

            in_flight = [asyncio.create_task(slow()) for _ in range(SLOW_REQUESTS)]
            server = backend.runner.server
            assert server is not None
            while server.requests_count < SLOW_REQUESTS:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            old.process.kill()  # the supervisor dies; its workers drain (PDEATHSIG)
            old.process.wait(5)
            new = start_serve(config, port, tmp_path / "new.log", "--workers", "2")
            with reaped(new):
                statuses = await asyncio.wait_for(asyncio.gather(*in_flight), RESTART_GRACE)
                assert statuses == [200] * SLOW_REQUESTS
                await wait_for_port(port, process=new.process)
                for pid in children_of(new.process.pid):
                    new.extra_pids.append(pid)
                response = await raw_request(
                    port, http_request("GET", f"{REST}/_echo/after", [("X-API-Key", key)])
                )
                assert response.status == 200
                assert new.stop(RESTART_GRACE + 10) == 0, new.log_text()
    assert "waiting" in new.log_text()


def test_the_shipped_probes_wait_longer_than_readiness_takes() -> None:
    deployment = yaml.safe_load((REPO_ROOT / "deploy/k8s/deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        waits = container[probe].get("timeoutSeconds", KUBELET_DEFAULT_PROBE_TIMEOUT)
        assert waits >= 2 * READY_TIMEOUT, (probe, waits, READY_TIMEOUT)


@pytest.mark.slow
async def test_readyz_answers_503_from_the_moment_draining_starts(
    tmp_path: Path, backend: Backend
) -> None:
    port, admin_port = free_port(), free_port()
    config = write_config(tmp_path / "drain", backend.url, listen_port=port, admin_port=admin_port)
    key = await create_key(config, "drain-bot", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "serve.log")
    with reaped(serve):
        await wait_for_port(admin_port, process=serve.process)
        ready = f"http://127.0.0.1:{admin_port}/readyz"
        async with aiohttp.ClientSession() as session:
            async with session.get(ready) as response:
                assert response.status == 200

            async def slow() -> int:
                async with session.get(
                    f"http://127.0.0.1:{port}{REST}/_slow?delay=2", headers={"X-API-Key": key}
                ) as response:
                    await response.read()
                    return response.status

            in_flight = asyncio.create_task(slow())
            server = backend.runner.server
            assert server is not None
            deadline = time.monotonic() + 5
            while server.requests_count == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            serve.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 1  # the drain has begun well within a second
            while True:
                async with session.get(ready) as response:
                    status, body = response.status, await response.json()
                if status == 503:
                    break
                assert time.monotonic() < deadline, "still ready while draining"
                await asyncio.sleep(0.02)
            assert body["checks"]["draining"] is True, body
            assert not in_flight.done()  # the drain is still under way
            assert await asyncio.wait_for(in_flight, 10) == 200
        assert serve.process.wait(15) == 0, serve.log_text()
