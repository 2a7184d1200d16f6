"""Fleet benchmark: three keygate instances on one PostgreSQL, revocation reach across them.

Run: python -m benchmarks.fleet [--revocations 500] [--throughput-seconds 8] [--workers 1 2]

Starts nginx as the upstream, creates a fresh database on $KEYGATE_BENCH_POSTGRES (default:
the local test server) and three `keygate serve` instances on it, once per worker count
given (default: one worker each, then two). Revokes keys one by one through instance 1's
admin API while a paced client (a child process per loaded instance, open loop at
LOAD_RATE requests per second, its achieved rate reported) carries keyed load on instances
2 and 3; for each revocation, measures the time from the admin API's acknowledgement until
every instance answers 401 key_revoked on every one of its pinned keep-alive connections
(PINNED_PER_WORKER per worker, so that with SO_REUSEPORT every worker is almost surely
probed). Then measures keyed throughput of one instance on PostgreSQL and of the same
instance on SQLite (wrk, unthrottled: that is a throughput figure). The database is dropped
afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from benchmarks import keygate, nginx
from benchmarks.procs import LOOPBACK, ManagedProcess, free_ports, wait_for_port
from benchmarks.wrk import find_wrk, run_wrk
from gateway.admin.passwords import hash_password
from gateway.keys import rules as key_rules
from gateway.policy.rules import load_policy
from gateway.settings import load_settings
from gateway.store.factory import store_for

SERVER_ENV_VAR = "KEYGATE_BENCH_POSTGRES"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
INSTANCES = 3
ADMIN, ADMIN_PASSWORD = "bench-admin", "bench-admin-password"
PROBE_INTERVAL = 0.001  # seconds between probe rounds while waiting for a refusal
PROBE_DEADLINE = 5.0  # seconds before a revocation counts as never seen
BOUND_MS = 100.0  # the stated bound: p99 from acknowledgement to refusal everywhere
LOAD_RATE = 500  # keyed requests per second on each loaded instance (open loop)
LOAD_CONNECTIONS = 8  # keep-alive connections the load spreads over, per instance
# Pinned probe connections per worker of an instance: the kernel spreads connections over
# the workers' SO_REUSEPORT sockets by hash, so with 4 per worker the chance that some
# worker gets none is 2 * 0.5**8 (under 1 %) with two workers.
PINNED_PER_WORKER = 4
LOAD_STOP_TIMEOUT = 10.0  # seconds a load child gets to report after SIGINT
START_TIMEOUT = 60.0  # seconds an instance gets to listen
LOAD_REPORT = re.compile(r"load on \d+: (\d+) requests in ([\d.]+) s")


class Pinned:
    """One raw HTTP/1.1 keep-alive connection to one instance's proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Pinned:
        """Connect to 127.0.0.1:port."""
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    async def status(self, key: str) -> int:
        """Send one keyed GET, read the whole response, return its status."""
        self.writer.write(
            f"GET {nginx.SMALL_PATH} HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1])


async def carry_load(port: int, key: str, rate: float, connections: int) -> None:
    """Send keyed GETs to one instance at `rate` per second until killed (open loop)."""
    pool = [await Pinned.open(port) for _ in range(connections)]
    interval = connections / rate
    sent = 0
    started = time.perf_counter()

    async def one(connection: Pinned, offset: float) -> None:
        nonlocal sent
        await asyncio.sleep(offset)
        next_at = time.perf_counter()
        while True:
            await connection.status(key)
            sent += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    tasks = [
        asyncio.create_task(one(connection, index * interval / connections))
        for index, connection in enumerate(pool)
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        elapsed = time.perf_counter() - started
        print(f"load on {port}: {sent} requests in {elapsed:.3f} s", file=sys.stderr)


def write_instance_config(directory: Path, store: str, ports: tuple[int, int, int]) -> Path:
    """Write a config for one instance (its own ports, the shared store) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    keygate.write_policy(directory)
    listen_port, admin_port, upstream_port = ports
    path = directory / "gateway.yaml"
    path.write_text(
        f"""\
listen: {{host: {LOOPBACK}, port: {listen_port}}}
admin: {{host: {LOOPBACK}, port: {admin_port}}}
upstream: {{url: "http://{LOOPBACK}:{upstream_port}", timeout: 60}}
store: {{url: "{store}"}}
policy: policy.yaml
anonymous: passthrough
log: {{level: warning, access_log: false}}
""",
        encoding="utf-8",
    )
    return path


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of sorted `values`."""
    return values[min(len(values) - 1, int(len(values) * fraction))]


async def create_keys(config: Path, count: int, prefix: str) -> list[tuple[int, str]]:
    """Create `count` keys (and the bench admin) in the config's store; return (id, secret)."""
    settings = load_settings(config)
    policy = load_policy(settings.policy)
    store = store_for(settings)
    await store.open()
    try:
        if await store.get_admin(ADMIN) is None:
            await store.add_admin(ADMIN, hash_password(ADMIN_PASSWORD), (), True, "bench")
        made = []
        for index in range(count):
            created = await key_rules.create_key(
                store,
                {"name": f"{prefix}-{index}", "roles": [keygate.BENCH_ROLE]},
                policy,
                "bench",
                time.time(),
            )
            made.append((created.row.id, created.secret))
        return made
    finally:
        await store.close()


def start_instance(config: Path, name: str, directory: Path, workers: int = 1) -> ManagedProcess:
    """Start `keygate serve --workers N` on a config."""
    return ManagedProcess(
        name,
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--workers",
            str(workers),
        ],
        log_path=directory / f"{name}.log",
        cwd=keygate.REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def measure_reach(
    admin_port: int, proxy_ports: list[int], keys: list[tuple[int, str]], workers: int
) -> tuple[list[float], list[list[float]]]:
    """Revoke each key via instance 1's admin API; time until every instance refuses it.

    An instance counts as refusing when every one of its pinned connections (spread over its
    workers) answers 401. Returns the latency to the last instance (ms) per revocation, and
    per instance.
    """
    auth = base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
    pinned = [
        [await Pinned.open(port) for _ in range(PINNED_PER_WORKER * workers)]
        for port in proxy_ports
    ]
    overall: list[float] = []
    per_instance: list[list[float]] = [[] for _ in proxy_ports]
    base = f"http://{LOOPBACK}:{admin_port}/api/v1/keys"
    async with aiohttp.ClientSession() as session:
        for key_id, secret in keys:
            for connections in pinned:
                for connection in connections:
                    if await connection.status(secret) != 200:
                        raise RuntimeError("key refused before its revocation")
            async with session.post(f"{base}/{key_id}/revoke", json={}, headers=headers) as answer:
                await answer.read()
                acknowledged = time.perf_counter()
                if answer.status != 200:
                    raise RuntimeError(f"revoke answered {answer.status}")
            waiting = {
                (index, slot)
                for index, connections in enumerate(pinned)
                for slot in range(len(connections))
            }
            while waiting:
                elapsed = time.perf_counter() - acknowledged
                if elapsed > PROBE_DEADLINE:
                    raise RuntimeError(f"connections {sorted(waiting)} never refused key {key_id}")
                for index, slot in sorted(waiting):
                    if await pinned[index][slot].status(secret) == 401:
                        waiting.discard((index, slot))
                        if not any(waiting_index == index for waiting_index, _ in waiting):
                            per_instance[index].append((time.perf_counter() - acknowledged) * 1000)
                if waiting:
                    await asyncio.sleep(PROBE_INTERVAL)
            overall.append((time.perf_counter() - acknowledged) * 1000)
    for connections in pinned:
        for connection in connections:
            connection.writer.close()
    return overall, per_instance


async def create_database(server: str) -> str:
    """Create a fresh benchmark database on the server; return its URL."""
    name = f"keygate_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(server)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def drop_database(server: str, url: str) -> None:
    """Drop the benchmark database."""
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')
    finally:
        await conn.close()


def throughput(wrk: str, port: int, secret: str, seconds: float) -> float:
    """Keyed requests per second through one instance (wrk, 2 threads, 50 connections)."""
    result, _ = run_wrk(
        wrk,
        f"http://{LOOPBACK}:{port}{nginx.SMALL_PATH}",
        duration_s=seconds,
        connections=50,
        threads=2,
        timeout_s=10,
        headers={keygate.KEY_HEADER: secret},
    )
    if result.errors:
        raise RuntimeError(f"throughput run had errors: {result}")
    return result.rps


@dataclass
class Reach:
    """One fleet round: the worker count, revocation latencies and the load achieved."""

    workers: int
    overall: list[float]
    per_instance: list[list[float]]
    took: float
    load_rates: list[float]


async def start_load(port: int, secret: str, directory: Path, name: str) -> ManagedProcess:
    """Start one paced load child (`--load-port`) against an instance's proxy port."""
    return ManagedProcess(
        name,
        [
            sys.executable,
            "-m",
            "benchmarks.fleet",
            "--load-port",
            str(port),
            "--load-key",
            secret,
        ],
        log_path=directory / f"{name}.log",
        cwd=keygate.REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop_load(process: ManagedProcess, log_path: Path) -> float:
    """Stop a load child with SIGINT (it reports what it sent) and return its rate."""
    process.popen.send_signal(signal.SIGINT)
    try:
        process.popen.wait(timeout=LOAD_STOP_TIMEOUT)
    finally:
        process.stop()
    match = LOAD_REPORT.search(log_path.read_text(encoding="utf-8", errors="replace"))
    if match is None:
        raise RuntimeError(f"load child reported nothing ({log_path})")
    return int(match.group(1)) / float(match.group(2))


async def fleet_round(
    url: str, upstream_port: int, workers: int, revocations: int, directory: Path
) -> tuple[Reach, tuple[int, str, list[ManagedProcess]]]:
    """Start the instances with `workers` each, measure revocation reach under paced load.

    Returns the round's figures, and instance 1's proxy port, a keyed secret for the
    throughput run and the running instances (the caller stops them).
    """
    configs, proxy_ports, admin_ports = [], [], []
    for index in range(INSTANCES):
        listen_port, admin_port = free_ports(2)
        configs.append(
            write_instance_config(
                directory / f"w{workers}-i{index + 1}",
                url,
                (listen_port, admin_port, upstream_port),
            )
        )
        proxy_ports.append(listen_port)
        admin_ports.append(admin_port)
    revocable = await create_keys(configs[0], revocations, f"rev-w{workers}")
    (_, load_secret), (_, pg_secret) = await create_keys(configs[0], 2, f"load-w{workers}")
    instances = []
    try:
        for index, config in enumerate(configs):
            instances.append(
                start_instance(config, f"keygate-w{workers}-{index + 1}", directory, workers)
            )
        for port, process in zip(proxy_ports, instances, strict=True):
            wait_for_port(port, START_TIMEOUT, process)
        await asyncio.sleep(1.0 + workers)  # every worker listening and following the feed

        load = [
            await start_load(port, load_secret, directory, f"load-w{workers}-{port}")
            for port in proxy_ports[1:]
        ]
        started = time.perf_counter()
        try:
            await asyncio.sleep(1.0)  # load running before the first revocation
            overall, per_instance = await measure_reach(
                admin_ports[0], proxy_ports, revocable, workers
            )
        finally:
            took = time.perf_counter() - started
            rates = [stop_load(process, process.log_path) for process in load]
    except BaseException:
        for process in reversed(instances):
            process.stop()
        raise
    return Reach(workers, overall, per_instance, took, rates), (
        proxy_ports[0],
        pg_secret,
        instances,
    )


async def run(args: argparse.Namespace, directory: Path) -> None:
    """Set everything up, measure, report, tear down."""
    wrk = find_wrk()
    nginx_binary = nginx.find_nginx()
    if wrk is None or nginx_binary is None:
        raise SystemExit("needs wrk and nginx (apt-get install -y wrk nginx)")
    server = os.environ.get(SERVER_ENV_VAR) or DEFAULT_SERVER
    url = await create_database(server)
    version = await server_version(server)
    processes: list[ManagedProcess] = []
    rounds: list[Reach] = []
    try:
        (upstream_port,) = free_ports(1)
        prefix = nginx._prefix_dir(directory, "nginx")
        (prefix / "nginx.conf").write_text(nginx.upstream_conf(prefix, upstream_port))
        upstream = ManagedProcess(
            "nginx",
            [nginx_binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            log_path=directory / "nginx.log",
        )
        processes.append(upstream)
        wait_for_port(upstream_port, START_TIMEOUT, upstream)

        pg_rps = 0.0
        for workers in args.workers:
            reach, (port, secret, instances) = await fleet_round(
                url, upstream_port, workers, args.revocations, directory
            )
            rounds.append(reach)
            try:
                if workers == args.workers[0]:
                    pg_rps = throughput(wrk, port, secret, args.throughput_seconds)
            finally:
                for process in reversed(instances):
                    process.stop()

        sqlite_dir = directory / "sqlite"
        listen_port, admin_port = free_ports(2)
        sqlite_config = write_instance_config(
            sqlite_dir, "sqlite:///keygate.db", (listen_port, admin_port, upstream_port)
        )
        (_, sqlite_secret), *_ = await create_keys(sqlite_config, 1, "load")
        sqlite_instance = start_instance(
            sqlite_config, "keygate-sqlite", directory, args.workers[0]
        )
        processes.append(sqlite_instance)
        wait_for_port(listen_port, START_TIMEOUT, sqlite_instance)
        await asyncio.sleep(1.0)
        sqlite_rps = throughput(wrk, listen_port, sqlite_secret, args.throughput_seconds)
    finally:
        for process in reversed(processes):
            process.stop()
        await drop_database(server, url)

    print(f"fleet: {INSTANCES} keygate instances on PostgreSQL {version}")
    print("reach = acknowledgement of the revoke -> that instance answers 401 key_revoked")
    missed = False
    for reach in rounds:
        reach.overall.sort()
        achieved = ", ".join(f"{rate:.0f}" for rate in reach.load_rates)
        print(
            f"{reach.workers} worker(s) each: {len(reach.overall)} revocations through "
            f"instance 1's admin API in {reach.took:.1f} s, paced keyed load of {LOAD_RATE} "
            f"req/s asked on instances 2 and 3 (achieved {achieved} req/s), "
            f"{PINNED_PER_WORKER * reach.workers} probe connections per instance"
        )
        for index, values in enumerate(reach.per_instance):
            values.sort()
            print(
                f"  instance {index + 1}: p50 {statistics.median(values):6.1f} ms"
                f"  p99 {percentile(values, 0.99):6.1f} ms  max {values[-1]:6.1f} ms"
            )
        p99 = percentile(reach.overall, 0.99)
        missed = missed or p99 > BOUND_MS
        print(
            f"  every instance: p50 {statistics.median(reach.overall):6.1f} ms  p99 {p99:6.1f} ms"
            f"  max {reach.overall[-1]:6.1f} ms  (bound {BOUND_MS:.0f} ms: "
            f"{'met' if p99 <= BOUND_MS else 'MISSED'})"
        )
    print(
        f"keyed throughput, one instance with {args.workers[0]} worker(s), wrk 2 threads "
        f"50 connections {args.throughput_seconds:g} s: PostgreSQL {pg_rps:,.0f} req/s, "
        f"SQLite {sqlite_rps:,.0f} req/s (ratio {pg_rps / sqlite_rps:.2f})"
    )
    if missed:
        raise SystemExit(1)


async def server_version(server: str) -> str:
    """The PostgreSQL server version, as the server reports it."""
    conn = await asyncpg.connect(server)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def main() -> None:
    """Parse arguments and run in a temporary directory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revocations", type=int, default=500)
    parser.add_argument("--throughput-seconds", type=float, default=8.0)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="worker counts, one round each"
    )
    parser.add_argument("--load-port", type=int, help=argparse.SUPPRESS)  # load child only
    parser.add_argument("--load-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_port:
        asyncio.run(carry_load(args.load_port, args.load_key, LOAD_RATE, LOAD_CONNECTIONS))
        return
    with tempfile.TemporaryDirectory(prefix="kg-fleet-") as temp:
        asyncio.run(run(args, Path(temp)))


if __name__ == "__main__":
    main()
