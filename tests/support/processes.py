"""Subprocess helpers: free ports, `python -m gateway` runs, `serve` processes, /proc probes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.config import ALL_ROLE, create_key, write_config
from support.upstreams import Backend
from support.workers import free_port as free_port  # the port helpers' old home

PYTHON = sys.executable


REPO_ROOT = Path(__file__).resolve().parents[2]


# Seconds a subprocess gateway gets to start accepting connections.
START_TIMEOUT = 15.0


# Working directory of subprocesses: nowhere near the repo's own config/ (no accidental use).
NEUTRAL_CWD = Path(tempfile.gettempdir())


async def wait_for_port(
    port: int, timeout: float = START_TIMEOUT, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until 127.0.0.1:port accepts a connection; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as error:
            if process is not None and process.poll() is not None:
                raise AssertionError(
                    f"process exited with {process.returncode} before listening"
                ) from error
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nothing listening on port {port} after {timeout}s"
                ) from error
            await asyncio.sleep(0.05)
        else:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for gateway subprocesses: this one, without KEYGATE_CONFIG, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "KEYGATE_CONFIG"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` to completion and capture its output."""
    return subprocess.run(
        [PYTHON, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=NEUTRAL_CWD,
        env=cli_env(env),
        timeout=timeout,
        check=False,
    )


async def arun_cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run `python -m gateway ARGS` without blocking the event loop; return (rc, out, err)."""
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=NEUTRAL_CWD,
        env=cli_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@dataclass
class ServeProcess:
    """A `python -m gateway serve` subprocess with its stderr captured to a file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra_pids: list[int] = field(default_factory=list)

    def log_text(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the process, wait for it, return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def start_serve(config: Path, port: int, log_path: Path, *args: str) -> ServeProcess:
    """Start `python -m gateway serve --config CONFIG ARGS`; the caller waits for the port."""
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(
            [PYTHON, "-m", "gateway", "serve", "--config", str(config), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=NEUTRAL_CWD,
            env=cli_env(),
        )
    finally:
        log_file.close()
    return ServeProcess(process, port, log_path)


@contextlib.contextmanager
def reaped(serve: ServeProcess) -> Iterator[ServeProcess]:
    """Make sure a serve process (and any pids noted in extra_pids) is gone afterwards."""
    try:
        yield serve
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait(timeout=10)
        for pid in serve.extra_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Served:
    """A running `serve` subprocess, its config and the secret of its one key."""

    serve: ServeProcess
    config: Path
    secret: str

    @property
    def base(self) -> str:
        """The proxy listener's base URL."""
        return f"http://127.0.0.1:{self.serve.port}"


@contextlib.asynccontextmanager
async def serving(
    directory: Path, backend: Backend, key_name: str, extra: dict[str, Any]
) -> AsyncIterator[Served]:
    """Run `serve` in front of the backend with one all-roles key; it must stop with 0."""
    port = free_port()
    config = write_config(
        directory, backend.url, listen_port=port, admin_port=free_port(), extra=extra
    )
    secret = await create_key(config, key_name, [ALL_ROLE])
    serve = start_serve(config, port, directory.parent / f"{directory.name}-serve.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        yield Served(serve, config, secret)
        assert serve.stop() == 0, serve.log_text()


def rss_bytes(pid: int) -> int:
    """Return a process's resident set size from /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def children_of(pid: int) -> set[int]:
    """Return the pids whose parent is `pid` (scanning /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


# Concurrent CLI runs `many` starts at once (subprocesses on a 2-core machine).
PARALLEL_RUNS = 4


def many(*commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent `python -m gateway` commands concurrently; results in order."""
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))
