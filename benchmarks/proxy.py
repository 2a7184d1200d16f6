"""Proxy throughput benchmark: upstream direct, nginx peer, aiohttp bare and keygate under wrk.

    python -m benchmarks.proxy [--rounds 3] [--duration 5] [--only upstream,nginx,bare,keygate]

Everything runs on 127.0.0.1. One upstream nginx serves a ~100-byte JSON document and a
1 MiB file for the whole run. Each round starts every contender in turn (the starting
contender rotates per round), self-checks it, warms it up, measures the small and the 1 MiB
path with wrk, and stops it, so only one contender is alive while it is measured. The
table reports the median over rounds per contender and path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from benchmarks import cpu, keygate, nginx
from benchmarks.nginx import (
    APIKEYS_PATH,
    BENCH_KEY_NAME,
    BIG_PATH,
    BIG_SIZE,
    SMALL_BODY,
    SMALL_PATH,
    WHOAMI_PATH,
)
from benchmarks.procs import (
    LOOPBACK,
    BenchError,
    ManagedProcess,
    Probe,
    free_port,
    free_ports,
    http_get,
    wait_for_port,
    wait_for_status,
)
from benchmarks.wrk import WrkResult, find_wrk, run_wrk, wrk_version

EXIT_MISSING_TOOLS = 2
KEY_HEADER = keygate.KEY_HEADER
SPOOFED_USER = "spoofed-by-client"  # a client-sent X-Acting-User that must never reach upstream
INVALID_KEY = "kg_bad"
APT_TIMEOUT_S = 900.0  # seconds `apt-get install` may take
IDLE_CHECK_S = 1.0  # seconds of /proc/stat sampling before the run
SKIP_REASON_LINES = 8  # lines of a skip reason's detail (e.g. a log tail) in the report
BUSY_WARNING_FRACTION = 0.10  # warn when other work keeps more than this share of CPUs busy
OTHER_LOAD_NOTE_FRACTION = 0.05  # note runs where other processes took more of all CPUs

CONTENDERS = (
    "upstream",
    "nginx",
    "nginx-log",
    "nginx-auth",
    "nginx-auth-floor",
    "bare",
    "keygate-w1",
    "keygate-w2",
    "keygate-w2-log",
    "keygate-anon",
    "keygate-rl",
    "keygate-rl-redis",
)
KEYGATE_CONTENDERS = (
    "nginx-auth",
    "keygate-w1",
    "keygate-w2",
    "keygate-w2-log",
    "keygate-anon",
    "keygate-rl",
    "keygate-rl-redis",
)
ACCESS_LOG_WAIT_S = 5.0  # seconds a contender's buffered access log may take to show a line
# The limited bench key's own rate limit: far beyond what one machine sends, so it never
# refuses, and every keyed request pays for the limiter's decision.
NEVER_TRIGGERS = "1000000000/second,burst=1000000000"
LIMITED_KEY_NAME = "bench-limited"
REDIS_URL = os.environ.get("KEYGATE_BENCH_REDIS", "redis://127.0.0.1:6379/7")
LABELS = {
    "upstream": "upstream direct",
    "nginx": "nginx peer",
    "nginx-log": "nginx peer +log",
    "nginx-auth": "nginx auth +log",
    "nginx-auth-floor": "nginx auth stub",
    "bare": "aiohttp bare",
    "keygate-w1": "keygate w1",
    "keygate-w2": "keygate w2",
    "keygate-w2-log": "keygate w2 +log",
    "keygate-anon": "keygate anon",
    "keygate-rl": "keygate w2 limit local",
    "keygate-rl-redis": "keygate w2 limit redis",
}
ALIASES: dict[str, tuple[str, ...]] = {
    "upstream": ("upstream",),
    "direct": ("upstream",),
    "nginx": ("nginx",),
    "peer": ("nginx",),
    "nginx-log": ("nginx-log",),
    "nginx-auth": ("nginx-auth",),
    "auth-request": ("nginx-auth",),
    "forward-auth": ("nginx-auth",),
    "nginx-auth-floor": ("nginx-auth-floor",),
    "auth-floor": ("nginx-auth-floor",),
    "keygate-w2-log": ("keygate-w2-log",),
    "w2-log": ("keygate-w2-log",),
    "log": ("nginx-log", "keygate-w2-log"),
    "bare": ("bare",),
    "aiohttp": ("bare",),
    "keygate": KEYGATE_CONTENDERS,
    "keygate-w1": ("keygate-w1",),
    "w1": ("keygate-w1",),
    "keygate-w2": ("keygate-w2",),
    "w2": ("keygate-w2",),
    "keygate-anon": ("keygate-anon",),
    "anon": ("keygate-anon",),
    "keygate-rl": ("keygate-rl",),
    "rl": ("keygate-rl",),
    "keygate-rl-redis": ("keygate-rl-redis",),
    "rl-redis": ("keygate-rl-redis",),
}
PATHS = {"small": SMALL_PATH, "1MiB": BIG_PATH}
# (label, numerator, denominator): requests/s ratios printed per path.
RATIOS = (
    ("keygate w1 / nginx peer", "keygate-w1", "nginx"),
    ("keygate w2 / nginx peer", "keygate-w2", "nginx"),
    ("keygate w2 / nginx peer, logs on", "keygate-w2-log", "nginx-log"),
    ("keygate w2 log on / off", "keygate-w2-log", "keygate-w2"),
    ("nginx peer log on / off", "nginx-log", "nginx"),
    ("nginx auth_request / nginx peer, logs on", "nginx-auth", "nginx-log"),
    ("nginx auth_request to a stub / nginx peer, logs on", "nginx-auth-floor", "nginx-log"),
    ("keygate w1 / aiohttp bare", "keygate-w1", "bare"),
    ("keygate w2 / aiohttp bare", "keygate-w2", "bare"),
    ("keygate keyed / anon (w2)", "keygate-w2", "keygate-anon"),
    ("keygate local limit / no limit (w2)", "keygate-rl", "keygate-w2"),
    ("keygate redis limit / no limit (w2)", "keygate-rl-redis", "keygate-w2"),
    ("nginx peer / upstream direct", "nginx", "upstream"),
    ("aiohttp bare / upstream direct", "bare", "upstream"),
)
# Rough seconds to start and self-check one contender, for the up-front time estimate.
STARTUP_ESTIMATE_S = dict.fromkeys(KEYGATE_CONTENDERS, 4.0)
FORWARD_AUTH_WORKERS = 2  # keygate workers deciding for the nginx auth_request contender
DEFAULT_STARTUP_ESTIMATE_S = 1.5


# --- Command line and tools -------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.proxy",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender (median)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk warm-up")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (it shares the CPUs)")
    parser.add_argument(
        "--wrk-timeout", type=float, default=10.0, help="wrk --timeout, seconds per request"
    )
    parser.add_argument(
        "--only",
        default=",".join(CONTENDERS),
        help="comma list of contenders: upstream, nginx, nginx-log, nginx-auth, bare, keygate "
        "(= keygate-w1, keygate-w2, keygate-w2-log, keygate-anon, keygate-rl, keygate-rl-redis), "
        "log (= nginx-log, keygate-w2-log) or any of those; the -log ones write an access log "
        "(nginx buffered, keygate its default text lines), the others none; nginx-auth is "
        "deploy/nginx/keygate-forward-auth.conf (auth_request, keepalive) deciding with "
        "keygate --workers 2 on its decision listener (forward_auth.listen), both logging "
        "every request; rl and "
        "rl-redis are w2 with a key whose own rate limit never triggers, counted locally or "
        "in Redis ($KEYGATE_BENCH_REDIS, default redis://127.0.0.1:6379/7)",
    )
    parser.add_argument(
        "--nginx-workers", type=int, default=1, help="worker_processes of the nginx peer"
    )
    parser.add_argument(
        "--keys", type=int, default=10_000, help="keys in the nginx map and keygate's store"
    )
    parser.add_argument(
        "--seed-budget",
        type=float,
        default=keygate.SEED_BUDGET_S,
        help="seconds keygate key seeding may take before keygate is skipped",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=60.0, help="seconds for a contender to be ready"
    )
    parser.add_argument(
        "--max-error-fraction",
        type=float,
        default=0.5,
        help="a run with more errors (non-2xx + socket errors) per request is invalid",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for keygate and the bare proxy"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also save results as JSON")
    parser.add_argument(
        "--install",
        action="store_true",
        help="apt-get install missing nginx/wrk (only when running as root)",
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir (debugging)")
    args = parser.parse_args(argv)
    selected: set[str] = set()
    for token in filter(None, (t.strip().lower() for t in args.only.split(","))):
        if token not in ALIASES:
            parser.error(f"--only: unknown contender {token!r} (choose from {', '.join(ALIASES)})")
        selected.update(ALIASES[token])
    if not selected:
        parser.error("--only selects no contender")
    args.contenders = [c for c in CONTENDERS if c in selected]
    for name in ("rounds", "connections", "threads", "nginx_workers", "keys"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    return args


@dataclass(frozen=True)
class Tools:
    """Paths of the external programs the harness drives."""

    nginx: str
    wrk: str


def redis_problem(url: str) -> str | None:
    """Return why the Redis at `url` cannot be used for the redis contender, or None."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as error:
        return f"no Redis at {url} ({error}); start one or set $KEYGATE_BENCH_REDIS"
    finally:
        client.close()
    return None


def _find_tools() -> tuple[str | None, str | None]:
    """Return the nginx and wrk binaries, None for each one missing."""
    return nginx.find_nginx(), find_wrk()


def ensure_tools(install: bool) -> Tools | None:
    """Find nginx and wrk, installing them with apt-get when allowed; None when still missing."""
    found_nginx, found_wrk = _find_tools()
    missing = [name for name, path in (("nginx", found_nginx), ("wrk", found_wrk)) if not path]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        command = ["apt-get", "install", "-y", *missing]
        try:
            if subprocess.run(command, env=env, timeout=APT_TIMEOUT_S, check=False).returncode:
                subprocess.run(["apt-get", "update"], env=env, timeout=APT_TIMEOUT_S, check=False)
                subprocess.run(command, env=env, timeout=APT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            print("apt-get timed out", file=sys.stderr)
        found_nginx, found_wrk = _find_tools()
    if found_nginx and found_wrk:
        return Tools(nginx=found_nginx, wrk=found_wrk)
    missing = [name for name, path in (("nginx", found_nginx), ("wrk", found_wrk)) if not path]
    print(
        f"error: missing {' and '.join(missing)} "
        f"(searched PATH, and {nginx.NGINX_FALLBACK} for nginx).\n"
        f"Install on Debian/Ubuntu:  sudo apt-get install -y {' '.join(missing)}\n"
        "or rerun as root with --install to let the harness run apt-get.",
        file=sys.stderr,
    )
    return None


# --- Machine info -----------------------------------------------------------------------------


def _cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo (or the platform's guess)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or "unknown"


def _package_version(name: str) -> str:
    """Return an installed distribution's version, or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(tools: Tools, python: str) -> dict[str, str]:
    """Return what the numbers depend on: CPU, cores, kernel, interpreter and tool versions."""
    info = {
        "cpu": _cpu_model(),
        "nproc": str(len(os.sched_getaffinity(0))),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({python})",
        "aiohttp": _package_version("aiohttp"),
        "uvloop": _package_version("uvloop"),
        "nginx": nginx.nginx_version(tools.nginx),
        "wrk": wrk_version(tools.wrk),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    busy = cpu.busy_fraction(IDLE_CHECK_S)
    if busy is not None:
        info["busy"] = f"{busy:.0%} of all CPUs busy over {IDLE_CHECK_S:g} s before start"
        if busy > BUSY_WARNING_FRACTION:
            info["busy"] += " -- WARNING: machine not idle, numbers will be noisy"
    if Path(python).resolve() != Path(sys.executable).resolve():
        done = subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        info["python"] += f"; contenders use {python} {done.stdout.strip() or '?'}"
    return info


# --- Self-checks ------------------------------------------------------------------------------


def _expect(probe: Probe, status: int, what: str, body: bytes | None = None) -> None:
    """Fail the self-check unless the probe has the status (and body, when given)."""
    if probe.status != status or (body is not None and probe.body != body):
        want = f"{status}" + (f" with body {body[:80]!r}" if body is not None else "")
        raise BenchError(
            f"self-check failed: {what}: expected {want}, got {probe.status} "
            f"with body {probe.body[:200]!r}"
        )


def check_passthrough(port: int, headers: dict[str, str]) -> int:
    """Check the small and the 1 MiB document come back intact; return the number of checks."""
    _expect(http_get(port, SMALL_PATH, headers), 200, "small document", SMALL_BODY.encode())
    big = http_get(port, BIG_PATH, headers)
    _expect(big, 200, "1 MiB document")
    if len(big.body) != BIG_SIZE:
        raise BenchError(f"self-check failed: 1 MiB document has {len(big.body)} bytes")
    return 2


def check_key_enforcement(
    port: int, key: str, *, anonymous_passes: bool, key_name: str = BENCH_KEY_NAME
) -> int:
    """Check acting user, 403 on key management, 401 on a bad key, and the no-key answer."""
    spoof = {"X-Acting-User": SPOOFED_USER}
    _expect(
        http_get(port, WHOAMI_PATH, {KEY_HEADER: key, **spoof}),
        200,
        "keyed request reaches upstream with X-Acting-User = key name (client value replaced)",
        key_name.encode(),
    )
    _expect(http_get(port, APIKEYS_PATH, {KEY_HEADER: key}), 403, "key on apikeys path")
    _expect(http_get(port, WHOAMI_PATH, {KEY_HEADER: INVALID_KEY}), 401, "invalid key")
    if anonymous_passes:
        _expect(
            http_get(port, WHOAMI_PATH, spoof),
            200,
            "no key passes through with client X-Acting-User stripped",
            b"",
        )
    else:
        _expect(http_get(port, WHOAMI_PATH, spoof), 401, "no key")
    return 4


def check_access_log(path: Path, marker: str) -> int:
    """Check a contender's access log shows a keyed line within ACCESS_LOG_WAIT_S."""
    deadline = time.monotonic() + ACCESS_LOG_WAIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if marker in path.read_text(errors="replace"):
                return 1
        time.sleep(0.05)
    raise BenchError(f"self-check failed: no access line with {marker!r} in {path}")


# --- Results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A running, self-checked contender: where wrk goes, what it sends, which processes."""

    port: int
    headers: dict[str, str]
    pgids: tuple[int, ...]  # process groups that are the contender (beside the upstream)
    # What each of `pgids` is, for the CPU breakdown (e.g. "nginx", "keygate"); empty: none.
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    """One wrk measurement and the CPU share other processes took meanwhile."""

    wrk: WrkResult
    other_load: float | None  # share of all CPUs used outside the benchmark, 0..1
    cpu_us_per_request: float | None = None  # contender's own CPU time per request
    # CPU microseconds per request of each process group in the exchange (the contender's
    # roles, the upstream, wrk): where a multi-process contender's time goes.
    cpu_breakdown: dict[str, float] = field(default_factory=dict)
    # The share of each one's CPU spent in the kernel (system time: sockets, loopback, epoll).
    cpu_system_share: dict[str, float] = field(default_factory=dict)


@dataclass
class Summary:
    """One contender on one path: medians over rounds, error totals and validity."""

    contender: str
    label: str
    path: str
    rounds_rps: list[float]
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    other_load_max: float | None  # worst share of all CPUs other processes took in a round
    valid: bool
    cpu_us: float | None = None  # median contender CPU microseconds per request (noise-robust)
    note: str = ""


@dataclass(frozen=True)
class FrontNginx:
    """A running forward-auth nginx: its port, the request headers, its group, checks done."""

    port: int
    headers: dict[str, str]
    pgid: int
    checks: int


@dataclass
class Harness:
    """One benchmark run: the shared upstream, the contenders, and what they measured."""

    args: argparse.Namespace
    tools: Tools
    root: Path
    upstream_port: int = 0
    upstream_pgid: int = 0
    nginx_key: str = ""
    nginx_table: dict[str, str] = field(default_factory=dict)
    keygate_dir: Path | None = None
    keygate_key: str = ""
    limited_key: str = ""  # the bench key with its own (never-triggering) rate limit
    skipped: dict[str, str] = field(default_factory=dict)
    round_index: int = 0
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)

    # Preparation ------------------------------------------------------------------------------

    def prepare_nginx_peer(self) -> None:
        """Generate the peer's key table (bench key + filler keys)."""
        self.nginx_key, self.nginx_table = nginx.generate_keys(self.args.keys)

    def prepare_keygate(self) -> None:
        """Check the CLI, write policy and config, create the bench key and seed the rest."""
        problem = keygate.check_cli(python=self.args.python)
        if problem:
            self._skip_keygate(f"keygate CLI does not start yet: {problem}")
            return
        directory = self.root / "keygate"
        directory.mkdir()
        keygate.write_policy(directory)
        listen_port, admin_port = free_ports(2)
        config = keygate.write_config(
            directory,
            "keys.yaml",
            listen_port=listen_port,
            admin_port=admin_port,
            upstream_port=self.upstream_port,
        )
        try:
            keygate.init_store(config, python=self.args.python)
            self.keygate_key = keygate.create_key(config, BENCH_KEY_NAME, python=self.args.python)
            self.limited_key = keygate.create_key(
                config, LIMITED_KEY_NAME, python=self.args.python, rate_limit=NEVER_TRIGGERS
            )
            print(f"  keygate: created key {BENCH_KEY_NAME!r}; seeding {self.args.keys - 1} more")
            keygate.seed_keys(
                config, self.args.keys - 1, python=self.args.python, budget_s=self.args.seed_budget
            )
        except BenchError as exc:
            self._skip_keygate(f"keygate key setup failed: {exc}")
            return
        self.keygate_dir = directory
        if "keygate-rl-redis" in self.args.contenders:
            problem = redis_problem(REDIS_URL)
            if problem:
                print(f"  SKIP keygate-rl-redis: {problem}", flush=True)
                self.skipped["keygate-rl-redis"] = problem

    def _skip_keygate(self, reason: str) -> None:
        """Mark every selected keygate contender as skipped and say why."""
        print(f"  SKIP keygate contenders: {reason}", flush=True)
        for contender in KEYGATE_CONTENDERS:
            if contender in self.args.contenders:
                self.skipped[contender] = reason

    def _log_path(self, name: str) -> Path:
        """Return a per-round log file for a contender process (kept with --keep-temp)."""
        return self.root / f"{name}-round{self.round_index + 1}.log"

    # Contenders -------------------------------------------------------------------------------

    def serve(self, contender: str) -> contextlib.AbstractContextManager[Target]:
        """Return a context that runs and self-checks a contender and yields its Target."""
        starters: dict[str, Callable[[], contextlib.AbstractContextManager[Target]]] = {
            "upstream": self._upstream_direct,
            "nginx": self._nginx_peer,
            "nginx-log": lambda: self._nginx_peer(access_log=True),
            "nginx-auth": self._nginx_forward_auth,
            "nginx-auth-floor": self._nginx_forward_auth_floor,
            "bare": self._aiohttp_bare,
            "keygate-w1": lambda: self._keygate(1, keyed=True),
            "keygate-w2": lambda: self._keygate(2, keyed=True),
            "keygate-w2-log": lambda: self._keygate(2, keyed=True, access_log=True),
            "keygate-anon": lambda: self._keygate(2, keyed=False),
            "keygate-rl": lambda: self._keygate(2, keyed=True, limit="local"),
            "keygate-rl-redis": lambda: self._keygate(2, keyed=True, limit="redis"),
        }
        return starters[contender]()

    @contextlib.contextmanager
    def _upstream_direct(self) -> Iterator[Target]:
        """Yield the shared upstream nginx itself (the ceiling)."""
        checks = check_passthrough(self.upstream_port, {})
        print(f"self-check ok ({checks})", end="", flush=True)
        yield Target(self.upstream_port, {}, ())

    @contextlib.contextmanager
    def _nginx_peer(self, *, access_log: bool = False) -> Iterator[Target]:
        """Run the nginx peer (with its buffered access log, if asked) for the block."""
        port = free_port()
        process = nginx.start_peer(
            self.tools.nginx,
            self.root,
            port,
            self.upstream_port,
            self.nginx_table,
            self.args.nginx_workers,
            access_log=access_log,
        )
        try:
            headers = {KEY_HEADER: self.nginx_key}
            checks = check_passthrough(port, headers)
            checks += check_key_enforcement(port, self.nginx_key, anonymous_passes=False)
            if access_log:
                log = self.root / "peer-log" / nginx.ACCESS_LOG_NAME
                checks += check_access_log(log, f"key={BENCH_KEY_NAME}")
            print(f"self-check ok ({checks})", end="", flush=True)
            yield Target(port, headers, (process.pgid,), ("nginx",))
        finally:
            process.stop()

    @contextlib.contextmanager
    def _nginx_forward_auth(self) -> Iterator[Target]:
        """Run keygate (--workers 2, forward-auth, access log) and nginx asking it per request.

        nginx asks keygate's decision listener (forward_auth.listen): the lighter listener
        meant for decision traffic (about 20 us of CPU per decision against 30 on the proxy
        listener, benchmarks.request_cpu --forward-auth [--decision-listener]).
        """
        assert self.keygate_dir is not None
        keygate_port, admin_port, decision_port = free_ports(3)
        config = keygate.write_config(
            self.keygate_dir,
            "forward-auth.yaml",
            listen_port=keygate_port,
            admin_port=admin_port,
            upstream_port=self.upstream_port,
            access_log=True,
            forward_auth=True,
            decision_port=decision_port,
        )
        decider = keygate.start_keygate(
            config,
            FORWARD_AUTH_WORKERS,
            listen_port=keygate_port,
            key=self.keygate_key,
            log_path=self._log_path("keygate-forward-auth"),
            startup_timeout_s=self.args.startup_timeout,
            python=self.args.python,
        )
        try:
            with self._forward_auth_front(decision_port, "forward-auth") as front:
                checks = check_key_enforcement(front.port, self.keygate_key, anonymous_passes=True)
                checks += check_access_log(decider.log_path, "decision=nginx")
                print(f"self-check ok ({front.checks + checks})", end="", flush=True)
                yield Target(
                    front.port, front.headers, (front.pgid, decider.pgid), ("nginx", "keygate")
                )
        finally:
            decider.stop()

    @contextlib.contextmanager
    def _forward_auth_front(self, decider_port: int, name: str) -> Iterator[FrontNginx]:
        """Run the forward-auth nginx (deploy/nginx/) under root/`name`, asking the decision
        service on `decider_port`, self-checked: requests pass and its access line names the
        bench key."""
        port = free_port()
        front = nginx.start_forward_auth(
            self.tools.nginx,
            self.root,
            port,
            self.upstream_port,
            decider_port,
            self.args.nginx_workers,
            name=name,
        )
        try:
            headers = {KEY_HEADER: self.keygate_key or self.nginx_key}
            checks = check_passthrough(port, headers)
            log = self.root / name / nginx.ACCESS_LOG_NAME
            checks += check_access_log(log, f"key={BENCH_KEY_NAME}")
            yield FrontNginx(port, headers, front.pgid, checks)
        finally:
            front.stop()

    @contextlib.contextmanager
    def _nginx_forward_auth_floor(self) -> Iterator[Target]:
        """Run the same forward-auth nginx asking a stub that allows everything at nginx's
        own speed: the ceiling any decision service reaches behind nginx's auth_request."""
        decider_port = free_port()
        decider = nginx.start_stub_decider(
            self.tools.nginx, self.root, decider_port, BENCH_KEY_NAME
        )
        try:
            with self._forward_auth_front(decider_port, "forward-auth-stub") as front:
                print(f"self-check ok ({front.checks})", end="", flush=True)
                yield Target(
                    front.port, front.headers, (front.pgid, decider.pgid), ("nginx", "stub")
                )
        finally:
            decider.stop()

    @contextlib.contextmanager
    def _aiohttp_bare(self) -> Iterator[Target]:
        """Run benchmarks.bare_proxy on a fresh port for the duration of the block."""
        port = free_port()
        argv = [self.args.python, "-m", "benchmarks.bare_proxy", "--port", str(port)]
        argv += ["--upstream", f"http://{LOOPBACK}:{self.upstream_port}"]
        process = ManagedProcess(
            "aiohttp bare", argv, log_path=self._log_path("bare"), cwd=keygate.REPO_ROOT
        )
        try:
            wait_for_port(port, self.args.startup_timeout, process)
            wait_for_status(port, SMALL_PATH, {}, 200, self.args.startup_timeout, process)
            checks = check_passthrough(port, {})
            print(f"self-check ok ({checks})", end="", flush=True)
            yield Target(port, {}, (process.pgid,))
        finally:
            process.stop()

    @contextlib.contextmanager
    def _keygate(
        self, workers: int, *, keyed: bool, limit: str | None = None, access_log: bool = False
    ) -> Iterator[Target]:
        """Run `gateway serve --workers N` on fresh ports for the duration of the block.

        With `limit` ("local" or "redis") the key sent is the one with its own rate limit;
        with `access_log`, keygate logs every request (to its output file).
        """
        assert self.keygate_dir is not None
        key = self.keygate_key if limit is None else self.limited_key
        listen_port, admin_port = free_ports(2)
        config = keygate.write_config(
            self.keygate_dir,
            f"serve-w{workers}-{limit or 'nolimit'}.yaml",
            listen_port=listen_port,
            admin_port=admin_port,
            upstream_port=self.upstream_port,
            redis_url=REDIS_URL if limit == "redis" else None,
            access_log=access_log,
        )
        label = ("keyed" if keyed else "anon") + ("-log" if access_log else "")
        process = keygate.start_keygate(
            config,
            workers,
            listen_port=listen_port,
            key=key,
            log_path=self._log_path(f"keygate-w{workers}-{label}-{limit or 'nolimit'}"),
            startup_timeout_s=self.args.startup_timeout,
            python=self.args.python,
        )
        try:
            headers = {KEY_HEADER: key} if keyed else {}
            checks = check_passthrough(listen_port, headers)
            checks += check_key_enforcement(
                listen_port,
                key,
                anonymous_passes=True,
                key_name=BENCH_KEY_NAME if limit is None else LIMITED_KEY_NAME,
            )
            if access_log:
                checks += check_access_log(process.log_path, f"key={BENCH_KEY_NAME}")
            print(f"self-check ok ({checks})", end="", flush=True)
            yield Target(listen_port, headers, (process.pgid,), ("keygate",))
        finally:
            process.stop()

    # Measuring --------------------------------------------------------------------------------

    def estimate_s(self) -> float:
        """Return a rough duration of the measuring phase in seconds."""
        per_round = sum(
            STARTUP_ESTIMATE_S.get(c, DEFAULT_STARTUP_ESTIMATE_S)
            + self.args.warmup
            + len(PATHS) * self.args.duration
            for c in self.args.contenders
            if c not in self.skipped
        )
        return float(per_round * self.args.rounds)

    def measure(self) -> None:
        """Run every round: each active contender started, checked, warmed, measured, stopped."""
        for round_index in range(self.args.rounds):
            active = [c for c in self.args.contenders if c not in self.skipped]
            if not active:
                return
            shift = round_index % len(active)
            for contender in active[shift:] + active[:shift]:
                self._measure_one(contender, round_index)

    def _measure_one(self, contender: str, round_index: int) -> None:
        """Start, check, warm up and measure one contender on every path, then stop it."""
        self.round_index = round_index
        tag = f"  round {round_index + 1}/{self.args.rounds}  {LABELS[contender]:<15}"
        print(f"{tag} starting ... ", end="", flush=True)
        try:
            with self.serve(contender) as target:
                print(flush=True)
                base = f"http://{LOOPBACK}:{target.port}"
                if self.args.warmup > 0:
                    self._wrk(target, f"{base}{SMALL_PATH}", self.args.warmup)
                for path_name, path in PATHS.items():
                    run = self._wrk(target, f"{base}{path}", self.args.duration)
                    self.runs.setdefault((contender, path_name), []).append(run)
                    result = run.wrk
                    extra = f"  errors {result.errors}" if result.errors else ""
                    if run.other_load is not None and run.other_load > OTHER_LOAD_NOTE_FRACTION:
                        extra += f"  other load {run.other_load:.0%}"
                    if run.cpu_breakdown:
                        extra += "  cpu/req " + ", ".join(
                            f"{role} {us:,.0f}us ({run.cpu_system_share.get(role, 0):.0%} sys)"
                            for role, us in run.cpu_breakdown.items()
                        )
                    print(
                        f"{tag} {path_name:<6} {result.rps:>10,.0f} req/s  "
                        f"p50 {fmt_ms(result.p50_ms):>8}  p99 {fmt_ms(result.p99_ms):>8}{extra}",
                        flush=True,
                    )
        except (BenchError, ValueError, subprocess.TimeoutExpired) as exc:
            print(flush=True)
            reason = str(exc)
            self.skipped[contender] = reason
            print(f"{tag} FAILED, skipped from now on: {reason}", flush=True)

    def _wrk(self, target: Target, url: str, duration_s: float) -> Run:
        """Run wrk once with the run's settings, accounting for CPU used by other processes."""
        pgids = (self.upstream_pgid, *target.pgids)
        before = cpu.mark(pgids)
        own_before = cpu.group_seconds(target.pgids)
        groups = dict(zip(target.roles, target.pgids, strict=True)) if target.roles else {}
        if groups:
            groups["upstream"] = self.upstream_pgid
        groups_before = {role: cpu.group_split((pgid,)) for role, pgid in groups.items()}
        groups_before["wrk"] = cpu.children_split()
        result, _ = run_wrk(
            self.tools.wrk,
            url,
            duration_s=duration_s,
            connections=self.args.connections,
            threads=self.args.threads,
            timeout_s=self.args.wrk_timeout,
            headers=target.headers,
        )
        own = cpu.group_seconds(target.pgids) - own_before
        per_request = own / result.requests * 1e6 if result.requests and target.pgids else None
        breakdown: dict[str, float] = {}
        system_share: dict[str, float] = {}
        if groups and result.requests:
            after = {role: cpu.group_split((pgid,)) for role, pgid in groups.items()}
            after["wrk"] = cpu.children_split()
            for role, (user, system) in after.items():
                user -= groups_before[role][0]
                system -= groups_before[role][1]
                breakdown[role] = round((user + system) / result.requests * 1e6, 1)
                system_share[role] = round(system / (user + system), 2) if user + system else 0.0
        return Run(
            wrk=result,
            other_load=cpu.other_load(before, cpu.mark(pgids)),
            cpu_us_per_request=per_request,
            cpu_breakdown=breakdown,
            cpu_system_share=system_share,
        )

    # Reporting --------------------------------------------------------------------------------

    def summaries(self) -> list[Summary]:
        """Return one median summary per contender and path that has measurements."""
        out = []
        for contender in self.args.contenders:
            for path_name in PATHS:
                runs = self.runs.get((contender, path_name))
                if not runs:
                    continue
                results = [run.wrk for run in runs]
                bad = [r for r in results if r.error_fraction > self.args.max_error_fraction]
                loads = [run.other_load for run in runs if run.other_load is not None]
                notes = []
                if bad:
                    worst = max(r.error_fraction for r in bad)
                    notes.append(f"INVALID: {worst:.0%} errors in {len(bad)} round(s)")
                elif any(r.errors for r in results):
                    notes.append("some errors")
                if len(runs) < self.args.rounds:
                    notes.append(f"{len(runs)}/{self.args.rounds} rounds")
                if loads and max(loads) > OTHER_LOAD_NOTE_FRACTION:
                    notes.append(f"other load up to {max(loads):.0%}")
                out.append(
                    Summary(
                        contender=contender,
                        label=LABELS[contender],
                        path=path_name,
                        rounds_rps=[r.rps for r in results],
                        rps=statistics.median(r.rps for r in results),
                        p50_ms=statistics.median(r.p50_ms for r in results),
                        p99_ms=statistics.median(r.p99_ms for r in results),
                        requests=sum(r.requests for r in results),
                        non_2xx=sum(r.non_2xx for r in results),
                        socket_errors=sum(sum(r.socket_errors.values()) for r in results),
                        other_load_max=round(max(loads), 3) if loads else None,
                        valid=not bad,
                        cpu_us=_median_or_none([run.cpu_us_per_request for run in runs]),
                        note="; ".join(notes),
                    )
                )
        return out


def _median_or_none(values: list[float | None]) -> float | None:
    """Return the median of the known values, or None when there are none."""
    known = [value for value in values if value is not None]
    return round(statistics.median(known), 1) if known else None


def ratios(summaries: list[Summary]) -> list[dict[str, object]]:
    """Return the requests/s ratios per path; None where a side is missing or invalid."""
    by_key = {(s.contender, s.path): s for s in summaries}
    out: list[dict[str, object]] = []
    for label, numerator, denominator in RATIOS:
        row: dict[str, object] = {"ratio": label}
        for path_name in PATHS:
            top, bottom = by_key.get((numerator, path_name)), by_key.get((denominator, path_name))
            ok = top and bottom and top.valid and bottom.valid and bottom.rps > 0
            row[path_name] = round(top.rps / bottom.rps, 3) if ok and top and bottom else None
        out.append(row)
    return out


def cpu_breakdowns(harness: Harness) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    """Return each measured contender and path's median CPU microseconds per request by role,
    with the median share of it spent in the kernel."""
    out: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for key, runs in harness.runs.items():
        roles = [role for run in runs for role in run.cpu_breakdown]
        parts = {}
        for role in dict.fromkeys(roles):
            measured = [run for run in runs if role in run.cpu_breakdown]
            parts[role] = (
                statistics.median(run.cpu_breakdown[role] for run in measured),
                statistics.median(run.cpu_system_share.get(role, 0.0) for run in measured),
            )
        if parts:
            out[key] = parts
    return out


def fmt_ms(value: float) -> str:
    """Format milliseconds with a readable unit."""
    if value < 1.0:
        return f"{value * 1000:.0f}us"
    if value < 1000.0:
        return f"{value:.2f}ms"
    return f"{value / 1000:.2f}s"


def print_report(
    info: dict[str, str], settings: dict[str, object], harness: Harness
) -> dict[str, object]:
    """Print the results table and ratios; return the same data for --json."""
    summaries = harness.summaries()
    ratio_rows = ratios(summaries)
    print()
    header = (
        f"{'contender':<16} {'path':<6} {'req/s':>10} {'p50':>9} {'p99':>9} "
        f"{'non-2xx':>8} {'sock err':>8} {'cpu/req':>9}  {'req/s per round':<28} note"
    )
    print(header)
    print("-" * len(header))
    if not summaries:
        print("(no measurements)")
    for s in summaries:
        per_round = ", ".join(f"{x:,.0f}" for x in s.rounds_rps)
        cpu_text = "?" if s.cpu_us is None else f"{s.cpu_us:,.0f}us"
        print(
            f"{s.label:<16} {s.path:<6} {s.rps:>10,.0f} {fmt_ms(s.p50_ms):>9} "
            f"{fmt_ms(s.p99_ms):>9} {s.non_2xx:>8} {s.socket_errors:>8} {cpu_text:>9}  "
            f"{per_round:<28} {s.note}"
        )
    by_reason: dict[str, list[str]] = {}
    for contender, reason in harness.skipped.items():
        by_reason.setdefault(reason.strip() or "?", []).append(LABELS[contender])
    for reason, labels in by_reason.items():
        lines = reason.splitlines()
        shown = lines[:1] + lines[1:][-SKIP_REASON_LINES:]
        print(f"SKIPPED {', '.join(labels)}: " + "\n    ".join(shown))
    shown_rows = [row for row in ratio_rows if any(row[p] is not None for p in PATHS)]
    if shown_rows:
        print()
        print(f"{'ratio (req/s, medians)':<32} " + " ".join(f"{p:>8}" for p in PATHS))
    for row in shown_rows:
        cells = [row[p] for p in PATHS]
        text = " ".join(f"{c:>8.2f}" if isinstance(c, float) else f"{'n/a':>8}" for c in cells)
        print(f"{row['ratio']!s:<32} {text}")
    breakdowns = cpu_breakdowns(harness)
    if breakdowns:
        print()
        print("CPU per request by process, median over rounds (its share in the kernel)")
        for (contender, path_name), parts in breakdowns.items():
            text = ", ".join(f"{role} {us:,.0f}us ({sys:.0%})" for role, (us, sys) in parts.items())
            print(f"  {LABELS[contender]:<16} {path_name:<6} {text}")
    by_key = {(s.contender, s.path): s for s in summaries}
    keyed, anon = by_key.get(("keygate-w2", "small")), by_key.get(("keygate-anon", "small"))
    if keyed and anon and keyed.cpu_us and anon.cpu_us:
        print(
            f"{'keygate CPU per request, keyed / anon (w2, small)':<32} "
            f"{keyed.cpu_us / anon.cpu_us:>8.2f}  (the noise-robust form of the ratio above)"
        )
    return {
        "machine": info,
        "settings": settings,
        "results": [asdict(s) for s in summaries],
        "ratios": ratio_rows,
        "skipped": harness.skipped,
        "raw": {
            f"{contender}/{path}": [asdict(r) for r in runs]
            for (contender, path), runs in harness.runs.items()
        },
    }


# --- Main -------------------------------------------------------------------------------------


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Treat SIGTERM like Ctrl-C so every finally block cleans up."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark once; Ctrl-C or SIGTERM stop it after cleaning up."""
    try:
        return run(argv)
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped and temp files removed", file=sys.stderr)
        return 130


def run(argv: list[str] | None = None) -> int:
    """Run the whole benchmark once and print (and optionally save) the results."""
    args = parse_args(argv)
    tools = ensure_tools(args.install)
    if tools is None:
        return EXIT_MISSING_TOOLS
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    info = machine_info(tools, args.python)
    settings: dict[str, object] = {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "wrk": f"-t{args.threads} -c{args.connections} --timeout={args.wrk_timeout:g}s --latency",
        "nginx_peer_workers": args.nginx_workers,
        "keys": args.keys,
        "contenders": [LABELS[c] for c in args.contenders],
        "statistic": "median over rounds",
    }
    print("keygate proxy benchmark (all on 127.0.0.1)")
    for key, value in info.items():
        print(f"  {key:<8} {value}")
    print(
        f"  wrk {settings['wrk']}, {args.duration:g} s per run, {args.warmup:g} s warm-up, "
        f"{args.rounds} round(s), median per contender"
    )
    print(
        f"  upstream nginx: worker_processes 1; nginx peer: worker_processes {args.nginx_workers}; "
        f"keys: {args.keys}"
    )
    root = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    started = time.monotonic()
    try:
        harness = Harness(args=args, tools=tools, root=root)
        harness.upstream_port = free_port()
        upstream = nginx.start_upstream(tools.nginx, root, harness.upstream_port)
        harness.upstream_pgid = upstream.pgid
        try:
            if "nginx" in args.contenders or "nginx-log" in args.contenders:
                harness.prepare_nginx_peer()
            if any(c in args.contenders for c in KEYGATE_CONTENDERS):
                harness.prepare_keygate()
            print(f"  measuring, about {harness.estimate_s():.0f} s", flush=True)
            harness.measure()
        finally:
            upstream.stop()
        report = print_report(info, settings, harness)
        print(f"\ntotal {time.monotonic() - started:.0f} s")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"saved {args.json}")
    finally:
        if args.keep_temp:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
