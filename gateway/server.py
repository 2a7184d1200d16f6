"""Process model for `keygate serve`: one process, or a supervisor of N SO_REUSEPORT workers."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gateway import access_writer
from gateway.app import running_gateway
from gateway.logs import (
    accept_reopen_signal,
    configure_logging,
    hold_reopen_signal,
    reopen_logs,
    reopen_on_signal,
)
from gateway.settings import Settings

log = logging.getLogger("keygate.server")
# Seconds a worker must live to count as started; faster deaths back off before restarting.
CRASH_WINDOW = 5.0
# Most seconds to wait before restarting a worker that keeps crashing.
MAX_RESTART_DELAY = 10.0
# Extra seconds past the grace period before the supervisor kills a worker that won't stop.
KILL_MARGIN = 5.0
SUPERVISOR_POLL = 0.2  # seconds between supervisor checks on its workers
# Exit statuses of a worker killed from outside rather than failing by itself.
_EXTERNAL_SIGNALS = frozenset({-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT})
PARENT_POLL = 0.5  # seconds between a worker's checks that its supervisor is alive
# Environment a worker gets from its supervisor: the supervisor's pid, and the descriptor
# on which the worker reports that it is serving.
SUPERVISOR_PID_ENV = "KEYGATE_SUPERVISOR_PID"
READY_FD_ENV = "KEYGATE_READY_FD"
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


class PortInUseError(OSError):
    """A listener's port is already held, typically by another keygate."""


def ensure_ports_free(settings: Settings) -> None:
    """Refuse to start workers on ports another process holds (SO_REUSEPORT would share them).

    A plain bind without SO_REUSEPORT fails on a port held by anyone, including workers of
    another keygate whose supervisor died; the supervisor's workers would otherwise bind
    beside them and split the traffic.
    """
    for what, listener in (("proxy", settings.listen), ("admin", settings.admin)):
        if listener.port == 0:
            continue
        family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((listener.host, listener.port))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                raise PortInUseError(
                    f"{what} port {listener.host}:{listener.port} is already in use "
                    "(another keygate still running?); stop it first"
                ) from None


def _die_with_parent() -> None:
    """Ask Linux to send this worker SIGTERM when its supervisor dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


async def _watch_supervisor(supervisor: int, stop: asyncio.Event) -> None:
    """Stop this worker when its supervisor is gone (the portable safety net for PDEATHSIG)."""
    while not stop.is_set():
        if os.getppid() != supervisor:
            log.error("supervisor %d is gone; stopping this worker", supervisor)
            stop.set()
            return
        await asyncio.sleep(PARENT_POLL)


def _report_ready() -> None:
    """Tell the supervisor (if any) that this worker is serving."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None or not fd.isdigit():
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), b"1")
        os.close(int(fd))


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
    settings: Settings,
    *,
    reuse_port: bool,
    serve_admin: bool,
    ready_line: bool = True,
    processes: int = 1,
    worker: int = 0,
) -> None:
    """Run one gateway process until SIGTERM or SIGINT, then drain and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, reopen_logs)  # log.file: logrotate's postrotate
    supervisor = os.environ.get(SUPERVISOR_PID_ENV, "")
    watcher: asyncio.Task[None] | None = None
    if supervisor.isdigit():
        watcher = asyncio.create_task(_watch_supervisor(int(supervisor), stop))
    async with running_gateway(
        settings,
        reuse_port=reuse_port,
        serve_admin=serve_admin,
        processes=processes,
        worker=worker,
    ) as gw:
        runtime = gw.runtime
        loop.add_signal_handler(signal.SIGHUP, runtime.reload_policy, "SIGHUP")
        _report_ready()
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
    if watcher is not None:
        watcher.cancel()
    access_writer.flush()  # no access line is lost at shutdown
    log.info("stopped")


def run_server(settings: Settings, workers_value: str, worker_index: int | None = None) -> int:
    """Run `keygate serve`: in this process for one worker, else as a supervisor."""
    # SIGUSR1 reopens log.file (logrotate); set before the file is opened, then let through
    # (a worker starts with it blocked by its supervisor: see Supervisor._spawn).
    signal.signal(signal.SIGUSR1, reopen_on_signal)
    accept_reopen_signal()
    configure_logging(settings.log_level, settings.log_format, settings.log_file)
    if settings.access_log and settings.log_level in ("debug", "info"):
        access_writer.install()  # access lines batched off the request path
    workers = resolve_workers(workers_value)
    # Until the gateway installs its own handler, a SIGHUP must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if worker_index is not None or workers == 1:
        if worker_index is not None:
            _die_with_parent()
        uses_uvloop = install_uvloop()
        if worker_index in (None, 0):
            log.info("event loop: %s", "uvloop" if uses_uvloop else "asyncio")
        with pid_file(settings.pid_file if worker_index is None else None):
            asyncio.run(
                serve_until_stopped(
                    settings,
                    reuse_port=worker_index is not None,
                    serve_admin=worker_index in (None, 0),
                    processes=workers,
                    worker=worker_index or 0,
                )
            )
        return 0
    ensure_ports_free(settings)
    with pid_file(settings.pid_file):
        return Supervisor(
            settings.path, workers, settings.grace_period, settings.max_start_failures
        ).run()


@contextlib.contextmanager
def pid_file(path: Path | None) -> Iterator[None]:
    """Write this process's pid to `path` while the block runs (for `keygate policy reload`)."""
    if path is None:
        yield
        return
    mine = f"{os.getpid()}\n"
    try:
        path.write_text(mine, encoding="ascii")
    except OSError as error:
        log.warning("cannot write the pid file %s: %s", path, error.strerror)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text(encoding="ascii") == mine:  # never remove another server's
                path.unlink()


class Supervisor:
    """Starts N worker processes, restarts any that die, and drains them all on SIGTERM."""

    def __init__(
        self, config: Path, workers: int, grace_period: float, max_start_failures: int
    ) -> None:
        self._config = config
        self._grace = grace_period
        self._max_start_failures = max_start_failures
        self._workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        self._started: list[float] = [0.0] * workers
        self._failures: list[int] = [0] * workers
        self._ready_pipes: list[int | None] = [None] * workers  # read ends, until ready
        self._ready: list[bool] = [False] * workers
        self._start_failures = 0  # consecutive workers that died before serving
        self._stopping = False

    def _spawn(self, index: int) -> None:
        command = [
            sys.executable, "-m", "gateway", "serve", "--config", str(self._config),
            "--worker-index", str(index), "--workers", str(len(self._workers)),
        ]  # fmt: skip
        read_end, write_end = os.pipe()
        env = {
            **os.environ,
            SUPERVISOR_PID_ENV: str(os.getpid()),
            READY_FD_ENV: str(write_end),
        }
        hold_reopen_signal()  # the worker starts with SIGUSR1 blocked, until it can reopen
        try:
            self._workers[index] = subprocess.Popen(command, env=env, pass_fds=(write_end,))
        finally:
            accept_reopen_signal()
            os.close(write_end)
        self._close_ready_pipe(index)
        self._ready_pipes[index] = read_end
        self._ready[index] = False
        self._started[index] = time.monotonic()

    def _close_ready_pipe(self, index: int) -> None:
        fd = self._ready_pipes[index]
        if fd is not None:
            os.close(fd)
            self._ready_pipes[index] = None

    def _check_ready(self) -> None:
        """Note workers that reported serving; a ready worker resets the crash-loop count."""
        pipes = {fd: i for i, fd in enumerate(self._ready_pipes) if fd is not None}
        if not pipes:
            return
        readable, _, _ = select.select(list(pipes), [], [], 0)
        for fd in readable:
            index = pipes[fd]
            if os.read(fd, 1) == b"1":
                self._ready[index] = True
                self._start_failures = 0
            self._close_ready_pipe(index)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _on_hangup(self, signum: int, _frame: object) -> None:
        """Pass SIGHUP (reload the policy) on to every live worker."""
        for process in self._workers:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGHUP)

    def _on_usr1(self, signum: int, frame: object) -> None:
        """Reopen log.file (logrotate's postrotate) here and in every live worker."""
        reopen_on_signal(signum, frame)
        for process in self._workers:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGUSR1)

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; return 0 after a clean drain."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        log.info("supervisor %d starting %d workers", os.getpid(), len(self._workers))
        for index in range(len(self._workers)):
            self._spawn(index)
        while not self._stopping:
            time.sleep(SUPERVISOR_POLL)
            self._check_ready()
            for index, process in enumerate(self._workers):
                if process is None or process.poll() is None or self._stopping:
                    continue
                self._check_ready()
                # Killed from outside (an operator's kill -9, the OOM killer) is not a
                # failure to start; exiting on its own before serving is.
                killed = process.returncode in _EXTERNAL_SIGNALS
                if not self._ready[index] and not killed:
                    self._start_failures += 1
                    if self._start_failures >= self._max_start_failures:
                        log.error(
                            "worker %d failed to start %d times in a row (last exit status "
                            "%d; its error is above); stopping",
                            index, self._start_failures, process.returncode,
                        )  # fmt: skip
                        self._workers[index] = None
                        self._drain()
                        return 1
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
            # SIGTERM is what was asked for: a worker still starting has no handler yet.
            status = status or (0 if code in (0, -signal.SIGTERM) else 1)
        for index in range(len(self._workers)):
            self._close_ready_pipe(index)
        log.info("supervisor stopped")
        return status
