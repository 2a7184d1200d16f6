"""Process model for `keygate serve`: one process, or a supervisor of N SO_REUSEPORT workers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.app import running_gateway
from gateway.settings import Settings

log = logging.getLogger("keygate.server")
# Seconds a worker must live to count as started; faster deaths back off before restarting.
CRASH_WINDOW = 5.0
# Most seconds to wait before restarting a worker that keeps crashing.
MAX_RESTART_DELAY = 10.0
# Extra seconds past the grace period before the supervisor kills a worker that won't stop.
KILL_MARGIN = 5.0
SUPERVISOR_POLL = 0.2  # seconds between supervisor checks on its workers


def configure_logging(level: str) -> None:
    """Send log lines to stderr with a timestamp and the process id."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def resolve_workers(value: str) -> int:
    """Parse `--workers`: a positive integer or `auto` (the CPU count)."""
    if value == "auto":
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--workers must be a positive integer or 'auto', not {value!r}")
    return int(value)


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when uvloop is installed; return whether it is used."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve_until_stopped(
    settings: Settings, *, reuse_port: bool, serve_admin: bool, ready_line: bool = True
) -> None:
    """Run one gateway process until SIGTERM or SIGINT, then drain and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running_gateway(settings, reuse_port=reuse_port, serve_admin=serve_admin) as gw:
        if ready_line:
            admin = f", admin on {settings.admin.host}:{gw.admin_port}" if serve_admin else ""
            log.info(
                "keygate serving %d keys: proxy on %s:%d -> %s%s",
                len(gw.runtime.table),
                settings.listen.host,
                gw.proxy_port,
                settings.upstream.url,
                admin,
            )
        await stop.wait()
        log.info("stopping: draining in-flight requests (grace %.0fs)", settings.grace_period)
    log.info("stopped")


def run_server(settings: Settings, workers_value: str, worker_index: int | None = None) -> int:
    """Run `keygate serve`: in this process for one worker, else as a supervisor."""
    configure_logging(settings.log_level)
    workers = resolve_workers(workers_value)
    if worker_index is not None or workers == 1:
        uses_uvloop = install_uvloop()
        if worker_index in (None, 0):
            log.info("event loop: %s", "uvloop" if uses_uvloop else "asyncio")
        asyncio.run(
            serve_until_stopped(
                settings,
                reuse_port=worker_index is not None,
                serve_admin=worker_index in (None, 0),
            )
        )
        return 0
    return Supervisor(settings.path, workers, settings.grace_period).run()


class Supervisor:
    """Starts N worker processes, restarts any that die, and drains them all on SIGTERM."""

    def __init__(self, config: Path, workers: int, grace_period: float) -> None:
        self._config = config
        self._grace = grace_period
        self._workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        self._started: list[float] = [0.0] * workers
        self._failures: list[int] = [0] * workers
        self._stopping = False

    def _spawn(self, index: int) -> None:
        command = [
            sys.executable, "-m", "gateway", "serve", "--config", str(self._config),
            "--worker-index", str(index),
        ]  # fmt: skip
        self._workers[index] = subprocess.Popen(command)
        self._started[index] = time.monotonic()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; return 0 after a clean drain."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("supervisor %d starting %d workers", os.getpid(), len(self._workers))
        for index in range(len(self._workers)):
            self._spawn(index)
        while not self._stopping:
            time.sleep(SUPERVISOR_POLL)
            for index, process in enumerate(self._workers):
                if process is None or process.poll() is None or self._stopping:
                    continue
                self._restart(index, process.returncode)
        return self._drain()

    def _restart(self, index: int, returncode: int) -> None:
        lived = time.monotonic() - self._started[index]
        process = self._workers[index]
        pid = process.pid if process is not None else -1
        self._failures[index] = self._failures[index] + 1 if lived < CRASH_WINDOW else 1
        delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (self._failures[index] - 1))
        log.error(
            "worker %d (pid %d) exited with status %d after %.1fs; restarting in %.1fs",
            index, pid, returncode, lived, delay,
        )  # fmt: skip
        self._workers[index] = None
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self._stopping:
            time.sleep(SUPERVISOR_POLL)
        if not self._stopping:
            self._spawn(index)

    def _drain(self) -> int:
        live = [p for p in self._workers if p is not None and p.poll() is None]
        log.info("supervisor stopping %d workers", len(live))
        for process in live:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace + KILL_MARGIN
        status = 0
        for process in live:
            try:
                code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                code = process.wait()
            status = status or (0 if code == 0 else 1)
        log.info("supervisor stopped")
        return status
