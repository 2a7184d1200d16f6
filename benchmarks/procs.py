"""Child processes, loopback ports and small HTTP probes for the benchmark harness."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
# Seconds a child gets to exit after SIGTERM before its process group gets SIGKILL.
TERMINATE_GRACE_S = 10.0
# Seconds one HTTP probe (connect + full response) may take.
PROBE_TIMEOUT_S = 10.0
# Seconds between readiness polls.
POLL_INTERVAL_S = 0.05


class BenchError(Exception):
    """A benchmark step failed; the message says which step and why."""


def free_ports(count: int) -> list[int]:
    """Return `count` distinct free loopback TCP ports (bound to port 0, held until all found)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """Return one free loopback TCP port."""
    return free_ports(1)[0]


class ManagedProcess:
    """A child in its own session; stopping it terminates, then kills, its whole process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start `argv` with stdout and stderr going to `log_path`."""
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise
        self.pgid = self.popen.pid  # start_new_session: the child leads its own group

    def alive(self) -> bool:
        """Return True while the lead process has not exited."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        """Return the last lines of the process's combined output."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _group_alive(self) -> bool:
        """Return True while any process of the child's group still exists."""
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        """Send `sig` to the child's process group, ignoring an already-empty group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)

    def stop(self) -> None:
        """Terminate the process group, wait, then kill whatever is left; idempotent."""
        try:
            self._stop()
        except BaseException:  # interrupted while waiting: leave nothing running
            self._signal_group(signal.SIGKILL)
            raise
        finally:
            self._log.close()

    def _stop(self) -> None:
        """SIGTERM the group, wait up to the grace period, then SIGKILL it."""
        if self.alive() or self._group_alive():
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + TERMINATE_GRACE_S
            while time.monotonic() < deadline:
                self.popen.poll()
                if not self.alive() and not self._group_alive():
                    break
                time.sleep(POLL_INTERVAL_S)
            else:
                self._signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=TERMINATE_GRACE_S)


def wait_for_port(port: int, timeout_s: float, process: ManagedProcess | None = None) -> None:
    """Wait until the loopback port accepts a TCP connection; fail early if `process` dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and not process.alive():
            raise BenchError(
                f"{process.name} exited with code {process.popen.returncode} before listening "
                f"on port {port}; last output:\n{process.log_tail()}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                name = process.name if process is not None else "server"
                raise BenchError(
                    f"{name} did not listen on port {port} within {timeout_s:g} s ({exc})"
                ) from None
            time.sleep(POLL_INTERVAL_S)


@dataclass(frozen=True)
class Probe:
    """One HTTP response as a self-check sees it."""

    status: int
    body: bytes


def http_get(port: int, path: str, headers: Mapping[str, str] | None = None) -> Probe:
    """Send one GET to the loopback port and return status and full body."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=PROBE_TIMEOUT_S)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        return Probe(response.status, response.read())
    finally:
        conn.close()


def wait_for_status(
    port: int,
    path: str,
    headers: Mapping[str, str],
    status: int,
    timeout_s: float,
    process: ManagedProcess | None = None,
) -> None:
    """Poll a GET until it returns `status`; fail with the last answer when time runs out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        if process is not None and not process.alive():
            raise BenchError(
                f"{process.name} exited with code {process.popen.returncode}; "
                f"last output:\n{process.log_tail()}"
            )
        try:
            probe = http_get(port, path, headers)
            if probe.status == status:
                return
            last = f"HTTP {probe.status}: {probe.body[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise BenchError(
                f"GET {path} on port {port} did not return {status} within {timeout_s:g} s "
                f"(last: {last})"
            )
        time.sleep(POLL_INTERVAL_S * 4)
