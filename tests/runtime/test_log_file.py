"""`log.file`: every log line of every process goes to one file, reopened on SIGUSR1 (logrotate)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from support.config import ALL_ROLE, REST, create_key, write_config
from support.processes import children_of, free_port, reaped, start_serve, wait_for_port
from support.upstreams import Backend

from gateway.settings import ConfigError, load_settings

WORKERS = 2
SETTLE = 10.0  # seconds to wait for lines to reach a file (the access writer flushes every 0.2 s)


async def _requests(port: int, key: str, count: int, tag: str) -> None:
    async with aiohttp.ClientSession() as session:
        for index in range(count):
            url = f"http://127.0.0.1:{port}{REST}/_echo/{tag}-{index}"
            async with session.get(url, headers={"X-API-Key": key}) as response:
                assert response.status == 200


async def _wait_for(path: Path, text: str) -> str:
    """Wait until `path` holds `text`; return its content."""
    for _ in range(int(SETTLE / 0.1)):
        content = path.read_text(encoding="utf-8") if path.exists() else ""
        if text in content:
            return content
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never reached {path}: {content!r}")


@pytest.mark.slow
async def test_sigusr1_reopens_the_log_file_in_the_supervisor_and_every_worker(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    (tmp_path / "cfg" / "logs").mkdir(parents=True)
    config = write_config(
        tmp_path / "cfg",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"log": {"file": "logs/keygate.log"}},  # relative to the config file
    )
    log_file = tmp_path / "cfg" / "logs" / "keygate.log"
    key = await create_key(config, "rotated", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "serve.out", "--workers", str(WORKERS))
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        supervisor = serve.process.pid
        for _ in range(50):
            workers = children_of(supervisor)
            if len(workers) == WORKERS:
                break
            await asyncio.sleep(0.1)
        serve.extra_pids.extend(workers)
        assert len(workers) == WORKERS
        await _requests(port, key, 20, "before")
        before = await _wait_for(log_file, "/_echo/before-19")
        assert f"supervisor {supervisor} starting" in before  # the supervisor's own lines too
        assert "keygate serving" in before

        os.rename(log_file, log_file.with_name("keygate.log.1"))  # what logrotate does
        serve.process.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.5)
        assert serve.process.poll() is None, serve.log_text()
        assert children_of(supervisor) == workers  # no worker died (or was restarted)

        await _requests(port, key, 40, "after")
        after = await _wait_for(log_file, "/_echo/after-39")
        assert "key=rotated" in after
        rotated = log_file.with_name("keygate.log.1").read_text(encoding="utf-8")
        assert "/_echo/after-" not in rotated

        assert serve.stop() == 0, serve.log_text()
        final = log_file.read_text(encoding="utf-8")
        # Each process wrote its last lines to the new file: the supervisor and both workers.
        assert "supervisor stopped" in final
        for pid in workers:
            assert f" {pid} INFO keygate.server: stopped" in final, final
        assert "supervisor stopped" not in log_file.with_name("keygate.log.1").read_text()
        # Nothing went to stderr but what is not a log line.
        assert "keygate.access" not in serve.log_text()


@pytest.mark.slow
async def test_sigusr1_leaves_a_server_logging_to_stderr_running(
    tmp_path: Path, backend: Backend
) -> None:
    """Without log.file there is nothing to reopen, but the signal still kills nobody."""
    port = free_port()
    config = write_config(tmp_path / "cfg", backend.url, listen_port=port, admin_port=free_port())
    key = await create_key(config, "signalled", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "serve.log", "--workers", str(WORKERS))
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        supervisor = serve.process.pid
        for _ in range(50):
            workers = children_of(supervisor)
            if len(workers) == WORKERS:
                break
            await asyncio.sleep(0.1)
        serve.extra_pids.extend(workers)
        serve.process.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.5)
        assert serve.process.poll() is None, serve.log_text()
        assert children_of(supervisor) == workers
        await _requests(port, key, 10, "still")
        assert serve.stop() == 0, serve.log_text()


STORM = 3.0  # seconds of SIGUSR1 every STORM_GAP from the supervisor's first line
STORM_GAP = 0.01


@pytest.mark.slow
async def test_sigusr1_while_workers_start_kills_none(tmp_path: Path, backend: Backend) -> None:
    """A worker gets SIGUSR1 passed on from its first instant (blocked until it can reopen)."""
    port = free_port()
    config = write_config(
        tmp_path / "cfg",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"log": {"file": "keygate.log"}},
    )
    log_file = tmp_path / "cfg" / "keygate.log"
    key = await create_key(config, "stormy", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "serve.out", "--workers", str(WORKERS))
    with reaped(serve):
        await _wait_for(log_file, "starting 2 workers")  # the supervisor's handler is set
        loop = asyncio.get_running_loop()
        until = loop.time() + STORM
        while loop.time() < until:
            serve.process.send_signal(signal.SIGUSR1)
            await asyncio.sleep(STORM_GAP)
        workers = children_of(serve.process.pid)
        serve.extra_pids.extend(workers)
        assert serve.process.poll() is None, serve.log_text()
        assert len(workers) == WORKERS
        await wait_for_port(port, process=serve.process)
        await _requests(port, key, 10, "stormed")
        await _wait_for(log_file, "/_echo/stormed-9")
        assert serve.stop() == 0, serve.log_text()
        text = log_file.read_text(encoding="utf-8")
        assert "exited with status" not in text, text  # no worker died and was restarted


def test_log_file_must_be_in_an_existing_directory(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", extra={"log": {"file": "nope/k.log"}})
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "log.file" in str(caught.value) and "nope" in str(caught.value)
    (tmp_path / "adir").mkdir()
    config = write_config(tmp_path, "http://127.0.0.1:9", extra={"log": {"file": "adir"}})
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "log.file" in str(caught.value)
    config = write_config(tmp_path, "http://127.0.0.1:9", extra={"log": {"file": "k.log"}})
    assert load_settings(config).log.file == tmp_path / "k.log"
