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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.keys.snapshot import store_unreachable
from gateway.proxy import access_writer
from gateway.runtime.logs import (
    accept_reopen_signal,
    configure_logging,
    hold_reopen_signal,
    reopen_logs,
    reopen_on_signal,
)
from gateway.serve.wiring import running_gateway
from gateway.settings import DEFAULT_HANG_TIMEOUT, Listener, Settings
from gateway.store.base import StoreUnavailableError

log = logging.getLogger("keygate.server")
# Seconds a worker must live to count as started; faster deaths back off before restarting.
CRASH_WINDOW = 5.0
# Most seconds to wait before restarting a worker that keeps crashing.
MAX_RESTART_DELAY = 10.0
# Extra seconds past the grace period before the supervisor kills a worker that won't stop.
KILL_MARGIN = 5.0
SUPERVISOR_POLL = 0.2  # seconds between supervisor checks on its workers
PORT_WAIT_POLL = 0.2  # seconds between checks for ports a killed keygate's workers still hold
# Exit statuses of a worker killed from outside rather than failing by itself.
_EXTERNAL_SIGNALS = frozenset({-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT})
HEARTBEAT_INTERVAL = 1.0  # seconds between a worker's heartbeats to its supervisor
# Bytes a worker writes on its status pipe: "serving now", and "my event loop still runs".
STATUS_READY = b"r"
STATUS_BEAT = b"."
STATUS_READ_SIZE = 4096  # bytes read from a status pipe at once
PARENT_POLL = 0.5  # seconds between a worker's checks that its supervisor is alive
# Environment a worker gets from its supervisor: the supervisor's pid, and the descriptor
# of its status pipe (readiness, then a heartbeat).
SUPERVISOR_PID_ENV = "KEYGATE_SUPERVISOR_PID"
READY_FD_ENV = "KEYGATE_READY_FD"
# Exit status of a worker that could not start only because the store is unreachable (and
# it had no usable snapshot): EX_TEMPFAIL; the supervisor retries it without counting it.
EXIT_STORE_UNAVAILABLE = 75
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


class PortInUseError(OSError):
    """A listener's port is already held, typically by another keygate."""


def ensure_ports_free(settings: Settings) -> None:
    """Refuse to start workers on ports another process holds (SO_REUSEPORT would share them).

    A plain bind without SO_REUSEPORT fails on a port held by anyone, including workers of
    another keygate whose supervisor died; the supervisor's workers would otherwise bind
    beside them and split the traffic.
    """
    check_ports_free([("proxy", settings.listen), ("admin", settings.admin)])


def check_ports_free(listeners: Sequence[tuple[str, Listener]]) -> None:
    """Raise PortInUseError naming the first listener whose address another process holds."""
    for what, listener in listeners:
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


def wait_for_ports(settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
    """Check the ports are free; wait for them when a killed keygate's workers still drain.

    A supervisor killed with SIGKILL leaves its pid file behind and its workers draining
    (up to the grace period) on the ports. A restart then waits for them, bounded, instead
    of being refused; a port held while no dead keygate's pid file is left fails at once.
    """
    deadline = clock() + settings.shutdown.grace_period + KILL_MARGIN
    waited = False
    while True:
        try:
            ensure_ports_free(settings)
            return
        except PortInUseError as error:
            if not _left_by_a_dead_server(settings.pid_file) or clock() >= deadline:
                raise
            if not waited:
                log.warning(
                    "%s; waiting up to %.0fs for the workers of the killed keygate to drain",
                    str(error).split(" (", 1)[0],
                    deadline - clock(),
                )
                waited = True
        time.sleep(PORT_WAIT_POLL)


def _left_by_a_dead_server(path: Path | None) -> bool:
    """Whether `path` is a pid file naming a process that is no longer running."""
    if path is None:
        return False
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return False
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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


def _status_pipe() -> int | None:
    """The write end of this worker's status pipe to its supervisor (None: no supervisor)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None or not fd.isdigit():
        return None
    with contextlib.suppress(OSError):
        os.set_blocking(int(fd), False)  # a supervisor that reads nothing never blocks us
        return int(fd)
    return None


def _tell_supervisor(fd: int | None, note: bytes) -> None:
    """Write one status byte to the supervisor; a full or closed pipe is not our problem."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, note)


async def _heartbeat(fd: int) -> None:
    """Beat every HEARTBEAT_INTERVAL while this event loop runs (a hung loop falls silent)."""
    while True:
        _tell_supervisor(fd, STATUS_BEAT)
        await asyncio.sleep(HEARTBEAT_INTERVAL)


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
    status = _status_pipe()
    beating = asyncio.create_task(_heartbeat(status)) if status is not None else None
    async with running_gateway(
        settings,
        reuse_port=reuse_port,
        serve_admin=serve_admin,
        processes=processes,
        worker=worker,
    ) as gw:
        runtime = gw.runtime
        loop.add_signal_handler(signal.SIGHUP, runtime.reload_policy, "SIGHUP")
        _tell_supervisor(status, STATUS_READY)
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
        log.info(
            "stopping: draining in-flight requests (grace %.0fs)", settings.shutdown.grace_period
        )
    for task in (watcher, beating):
        if task is not None:
            task.cancel()
    access_writer.flush()  # no access line is lost at shutdown
    log.info("stopped")


def run_server(settings: Settings, workers_value: str, worker_index: int | None = None) -> int:
    """Run `keygate serve`: in this process for one worker, else as a supervisor."""
    # SIGUSR1 reopens log.file (logrotate); set before the file is opened, then let through
    # (a worker starts with it blocked by its supervisor: see Supervisor._spawn).
    signal.signal(signal.SIGUSR1, reopen_on_signal)
    accept_reopen_signal()
    configure_logging(settings.log.level, settings.log.format, settings.log.file)
    if settings.log.access_log and settings.log.level in ("debug", "info"):
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
            try:
                asyncio.run(
                    serve_until_stopped(
                        settings,
                        reuse_port=worker_index is not None,
                        serve_admin=worker_index in (None, 0),
                        processes=workers,
                        worker=worker_index or 0,
                    )
                )
            except StoreUnavailableError as error:
                if worker_index is None or not store_unreachable(error):
                    raise
                # Told apart from a crash: the supervisor retries without counting it.
                log.error("worker %d cannot start: %s", worker_index, error)
                return EXIT_STORE_UNAVAILABLE
        return 0
    wait_for_ports(settings)
    with pid_file(settings.pid_file):
        return Supervisor(
            settings.path,
            workers,
            settings.shutdown.grace_period,
            settings.supervisor.max_start_failures,
            settings.supervisor.hang_timeout,
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


@dataclass
class _Worker:
    """One worker slot: its process, status pipe, readiness, last heartbeat and restart plan."""

    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # monotonic seconds at spawn
    failures: int = 0  # quick deaths in a row (for the back-off)
    pipe: int | None = None  # read end of the worker's status pipe
    ready: bool = False
    last_beat: float | None = None  # monotonic seconds of the last heartbeat (None: none yet)
    restart_at: float | None = None  # monotonic seconds when a dead worker is started again


class Supervisor:
    """Starts N worker processes, restarts any that die or hang, and drains them on SIGTERM.

    One loop does everything: signal handlers only record the signal (a wake-up pipe ends
    the loop's wait), restarts are scheduled with a back-off time instead of slept, and
    each worker's status pipe carries its readiness and a heartbeat every
    HEARTBEAT_INTERVAL; a serving worker silent for `hang_timeout` seconds is killed and
    replaced.
    """

    def __init__(
        self,
        config: Path,
        workers: int,
        grace_period: float,
        max_start_failures: int,
        hang_timeout: float = DEFAULT_HANG_TIMEOUT,
    ) -> None:
        self._config = config
        self._grace = grace_period
        self._max_start_failures = max_start_failures
        self._hang_timeout = hang_timeout
        self._workers = [_Worker() for _ in range(workers)]
        self._start_failures = 0  # consecutive workers that died before serving
        self._signals: list[int] = []  # recorded by the handlers, acted on in the loop

    def _spawn(self, index: int) -> None:
        command = [
            sys.executable, "-m", "gateway", "serve", "--config", str(self._config),
            "--worker-index", str(index), "--workers", str(len(self._workers)),
        ]  # fmt: skip
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        env = {
            **os.environ,
            SUPERVISOR_PID_ENV: str(os.getpid()),
            READY_FD_ENV: str(write_end),
        }
        worker = self._workers[index]
        hold_reopen_signal()  # the worker starts with SIGUSR1 blocked, until it can reopen
        try:
            worker.process = subprocess.Popen(command, env=env, pass_fds=(write_end,))
        finally:
            accept_reopen_signal()
            os.close(write_end)
        self._close_pipe(worker)
        worker.pipe = read_end
        worker.ready = False
        worker.last_beat = None
        worker.restart_at = None
        worker.started = time.monotonic()

    @staticmethod
    def _close_pipe(worker: _Worker) -> None:
        if worker.pipe is not None:
            os.close(worker.pipe)
            worker.pipe = None

    def _read_pipes(self, readable: set[int]) -> None:
        """Note readiness and heartbeats; a ready worker resets the crash-loop count."""
        now = time.monotonic()
        for worker in self._workers:
            if worker.pipe is None or worker.pipe not in readable:
                continue
            try:
                data = os.read(worker.pipe, STATUS_READ_SIZE)
            except BlockingIOError:
                continue
            if not data:  # the worker closed its end: it is exiting
                self._close_pipe(worker)
                continue
            worker.last_beat = now
            if STATUS_READY in data and not worker.ready:
                worker.ready = True
                self._start_failures = 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        """Record the signal; the loop acts on it (the wake-up pipe ends its wait)."""
        self._signals.append(signum)

    def _forward(self, signum: int) -> None:
        """Pass a signal (SIGHUP: reload the policy; SIGUSR1: reopen logs) to live workers."""
        for worker in self._workers:
            process = worker.process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; return 0 after a clean drain."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)
        try:
            log.info("supervisor %d starting %d workers", os.getpid(), len(self._workers))
            for index in range(len(self._workers)):
                self._spawn(index)
            status = self._loop(wake_read)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)
        return status if status is not None else self._drain()

    def _loop(self, wake_read: int) -> int | None:
        """Run until a stop signal (None: drain) or a crash loop (its exit status)."""
        while True:
            pipes = [w.pipe for w in self._workers if w.pipe is not None]
            readable, _, _ = select.select([wake_read, *pipes], [], [], self._wait_time())
            if wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
            self._read_pipes(set(readable))
            signals, self._signals = self._signals, []
            if signal.SIGTERM in signals or signal.SIGINT in signals:
                return None
            if signal.SIGHUP in signals:
                self._forward(signal.SIGHUP)
            if signal.SIGUSR1 in signals:
                reopen_logs()  # log.file, here in the loop: no line is cut mid-write
                self._forward(signal.SIGUSR1)
            status = self._reap()
            if status is not None:
                return status
            self._kill_hung()
            self._start_due()

    def _wait_time(self) -> float:
        """Seconds the loop may wait: until the next scheduled restart, at most one poll."""
        now = time.monotonic()
        due = [w.restart_at - now for w in self._workers if w.restart_at is not None]
        return max(0.0, min([SUPERVISOR_POLL, *due]))

    def _reap(self) -> int | None:
        """Schedule a restart for each worker that exited; return 1 to end a crash loop."""
        for index, worker in enumerate(self._workers):
            process = worker.process
            if process is None or process.poll() is None:
                continue
            if worker.pipe is not None:  # a last readiness note may still be in the pipe
                self._read_pipes({worker.pipe})
            # Killed from outside (an operator's kill -9, the OOM killer, a hang) is not a
            # failure to start; exiting on its own before serving is.
            killed = process.returncode in _EXTERNAL_SIGNALS
            unreachable = process.returncode == EXIT_STORE_UNAVAILABLE
            delay: float | None = None
            if unreachable:
                # The store is away and no snapshot was usable: not a crash, so not counted
                # towards a crash loop; retried with the back-off until the store returns.
                log.warning(
                    "worker %d could not reach the store at start; it is retried, the others "
                    "keep serving",
                    index,
                )
            elif not worker.ready and not killed:
                self._start_failures += 1
                if self._start_failures >= self._max_start_failures:
                    if not any(w.ready and w is not worker for w in self._workers):
                        log.error(
                            "worker %d failed to start %d times in a row (last exit status "
                            "%d; its error is above); stopping",
                            index, self._start_failures, process.returncode,
                        )  # fmt: skip
                        worker.process = None
                        self._close_pipe(worker)
                        return self._drain() or 1
                    # Never stop a serving sibling for this one's failure: keep trying.
                    log.error(
                        "worker %d failed to start %d times in a row; the others keep "
                        "serving, retrying every %.0fs",
                        index, self._start_failures, MAX_RESTART_DELAY,
                    )  # fmt: skip
                    delay = MAX_RESTART_DELAY
            self._schedule_restart(index, process.returncode, delay)
        return None

    def _schedule_restart(self, index: int, returncode: int, delay: float | None) -> None:
        """Plan a dead worker's restart after a back-off that grows while it dies young."""
        worker = self._workers[index]
        lived = time.monotonic() - worker.started
        worker.failures = worker.failures + 1 if lived < CRASH_WINDOW else 1
        if delay is None:
            delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** (worker.failures - 1))
        pid = worker.process.pid if worker.process is not None else -1
        log.error(
            "worker %d (pid %d) exited with status %d after %.1fs; restarting in %.1fs",
            index, pid, returncode, lived, delay,
        )  # fmt: skip
        worker.process = None
        self._close_pipe(worker)
        worker.restart_at = time.monotonic() + delay

    def _kill_hung(self) -> None:
        """SIGKILL a worker whose heartbeats stopped (its replacement follows on reaping)."""
        now = time.monotonic()
        for index, worker in enumerate(self._workers):
            process = worker.process
            if process is None or worker.last_beat is None or process.poll() is not None:
                continue
            silent = now - worker.last_beat
            if silent > self._hang_timeout:
                log.error(
                    "worker %d (pid %d) sent no heartbeat for %.1fs (hung); killing it",
                    index, process.pid, silent,
                )  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                worker.last_beat = None

    def _start_due(self) -> None:
        """Start the workers whose restart time has come."""
        now = time.monotonic()
        for index, worker in enumerate(self._workers):
            if worker.restart_at is not None and worker.restart_at <= now:
                self._spawn(index)

    def _drain(self) -> int:
        live = [
            w.process for w in self._workers if w.process is not None and w.process.poll() is None
        ]
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
        for worker in self._workers:
            self._close_pipe(worker)
        log.info("supervisor stopped")
        return status
