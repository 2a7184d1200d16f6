"""Running wrk and parsing its `--latency` report."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

# Seconds wrk's own run may overrun `duration` before the harness gives up on it.
WRK_OVERRUN_S = 30.0

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL_RE = re.compile(rf"^\s*(\d+) requests in {_TIME},", re.MULTILINE)
_PERCENTILE_RE = re.compile(rf"^\s*(50|99)(?:\.0+)?%\s+{_TIME}\s*$", re.MULTILINE)
_NON_2XX_RE = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
_SOCKET_RE = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles and error counts."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Return non-2xx/3xx responses plus socket errors."""
        return self.non_2xx + sum(self.socket_errors.values())

    @property
    def error_fraction(self) -> float:
        """Return errors per completed request (1.0 when nothing completed)."""
        return 1.0 if self.requests == 0 else min(1.0, self.errors / self.requests)


def find_wrk() -> str | None:
    """Return the wrk binary from PATH, or None."""
    return shutil.which("wrk")


def wrk_version(binary: str) -> str:
    """Return wrk's version (first line of `wrk -v`, which exits non-zero)."""
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else "unknown"


def _ms(value: str, unit: str) -> float:
    """Convert one wrk time value to milliseconds."""
    return float(value) * _TIME_UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Parse wrk's stdout (run with --latency); raise ValueError when a field is missing."""
    rps = _RPS_RE.search(output)
    total = _TOTAL_RE.search(output)
    percentiles = {m.group(1): _ms(m.group(2), m.group(3)) for m in _PERCENTILE_RE.finditer(output)}
    if rps is None or total is None or set(percentiles) != {"50", "99"}:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = _NON_2XX_RE.search(output)
    sockets = _SOCKET_RE.search(output)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True))
        if sockets
        else {}
    )
    return WrkResult(
        requests=int(total.group(1)),
        duration_s=_ms(total.group(2), total.group(3)) / 1000.0,
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def run_wrk(
    binary: str,
    url: str,
    *,
    duration_s: float,
    connections: int,
    threads: int,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
) -> tuple[WrkResult, str]:
    """Run wrk against `url` and return the parsed result and the raw report."""
    argv = [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        f"--timeout={timeout_s:g}s",
        "--latency",
    ]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration_s + timeout_s + WRK_OVERRUN_S,
        check=False,
    )
    if done.returncode != 0:
        raise ValueError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout}")
    return parse_wrk(done.stdout), done.stdout
