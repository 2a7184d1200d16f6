"""Fleet benchmark: three keygate instances on one PostgreSQL, revocation reach across them.

Run: python -m benchmarks.fleet [--revocations 500] [--throughput-seconds 8]

Starts nginx as the upstream, creates a fresh database on $KEYGATE_BENCH_POSTGRES (default:
the local test server) and three `keygate serve` instances on it. Revokes keys one by one
through instance 1's admin API while wrk carries keyed load on instances 2 and 3; for each
revocation, measures the time from the admin API's acknowledgement until every instance
answers 401 key_revoked (one pinned keep-alive connection per instance). Then measures keyed
throughput of one instance on PostgreSQL and of the same instance on SQLite. The database is
dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from benchmarks import keygate, nginx
from benchmarks.procs import LOOPBACK, ManagedProcess, free_ports, wait_for_port
from benchmarks.wrk import find_wrk, run_wrk
from gateway import key_rules
from gateway.passwords import hash_password
from gateway.policy import load_policy
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
START_TIMEOUT = 60.0  # seconds an instance gets to listen


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
        print(f"load on {port}: {sent} requests in {elapsed:.1f} s", file=sys.stderr)


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
    policy = load_policy(settings.policy_path)
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


def start_instance(config: Path, name: str, directory: Path) -> ManagedProcess:
    """Start `keygate serve` (one worker) on a config."""
    return ManagedProcess(
        name,
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        log_path=directory / f"{name}.log",
        cwd=keygate.REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def measure_reach(
    admin_port: int, proxy_ports: list[int], keys: list[tuple[int, str]]
) -> tuple[list[float], list[list[float]]]:
    """Revoke each key via instance 1's admin API; time until every instance refuses it.

    Returns the latency to the last instance (ms) per revocation, and per instance.
    """
    auth = base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {auth}", "Content-Type": "application/json"}
    pinned = [await Pinned.open(port) for port in proxy_ports]
    overall: list[float] = []
    per_instance: list[list[float]] = [[] for _ in proxy_ports]
    base = f"http://{LOOPBACK}:{admin_port}/api/v1/keys"
    async with aiohttp.ClientSession() as session:
        for key_id, secret in keys:
            for connection in pinned:
                if await connection.status(secret) != 200:
                    raise RuntimeError("key refused before its revocation")
            async with session.post(f"{base}/{key_id}/revoke", json={}, headers=headers) as answer:
                await answer.read()
                acknowledged = time.perf_counter()
                if answer.status != 200:
                    raise RuntimeError(f"revoke answered {answer.status}")
            waiting = set(range(len(pinned)))
            while waiting:
                elapsed = time.perf_counter() - acknowledged
                if elapsed > PROBE_DEADLINE:
                    raise RuntimeError(f"instances {sorted(waiting)} never refused key {key_id}")
                for index in sorted(waiting):
                    if await pinned[index].status(secret) == 401:
                        waiting.discard(index)
                        per_instance[index].append((time.perf_counter() - acknowledged) * 1000)
                if waiting:
                    await asyncio.sleep(PROBE_INTERVAL)
            overall.append((time.perf_counter() - acknowledged) * 1000)
    for connection in pinned:
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

        configs, proxy_ports, admin_ports = [], [], []
        for index in range(INSTANCES):
            listen_port, admin_port = free_ports(2)
            configs.append(
                write_instance_config(
                    directory / f"i{index + 1}", url, (listen_port, admin_port, upstream_port)
                )
            )
            proxy_ports.append(listen_port)
            admin_ports.append(admin_port)
        revocable = await create_keys(configs[0], args.revocations, "rev")
        (_, load_secret), (_, pg_secret) = await create_keys(configs[0], 2, "load")
        for index, config in enumerate(configs):
            processes.append(start_instance(config, f"keygate-{index + 1}", directory))
        for port, process in zip(proxy_ports, processes[1:], strict=True):
            wait_for_port(port, START_TIMEOUT, process)
        await asyncio.sleep(1.0)

        load = [
            await asyncio.create_subprocess_exec(
                wrk,
                "-t1",
                f"-c{LOAD_CONNECTIONS}",
                "-d600s",
                "-H",
                f"{keygate.KEY_HEADER}: {load_secret}",
                f"http://{LOOPBACK}:{port}{nginx.SMALL_PATH}",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            for port in proxy_ports[1:]
        ]
        started = time.perf_counter()
        try:
            await asyncio.sleep(1.0)  # load running before the first revocation
            overall, per_instance = await measure_reach(admin_ports[0], proxy_ports, revocable)
        finally:
            for process in load:
                process.terminate()
                await process.wait()
        took = time.perf_counter() - started

        pg_rps = throughput(wrk, proxy_ports[0], pg_secret, args.throughput_seconds)
        for process in processes[1:]:
            process.stop()
        processes = processes[:1]
        sqlite_dir = directory / "sqlite"
        listen_port, admin_port = free_ports(2)
        sqlite_config = write_instance_config(
            sqlite_dir, "sqlite:///keygate.db", (listen_port, admin_port, upstream_port)
        )
        (_, sqlite_secret), *_ = await create_keys(sqlite_config, 1, "load")
        sqlite_instance = start_instance(sqlite_config, "keygate-sqlite", directory)
        processes.append(sqlite_instance)
        wait_for_port(listen_port, START_TIMEOUT, sqlite_instance)
        await asyncio.sleep(1.0)
        sqlite_rps = throughput(wrk, listen_port, sqlite_secret, args.throughput_seconds)
    finally:
        for process in reversed(processes):
            process.stop()
        await drop_database(server, url)

    overall.sort()
    print(f"fleet: {INSTANCES} keygate instances (1 worker each) on PostgreSQL {version}")
    print(f"store: {url}")
    print(
        f"revocations: {len(overall)} through instance 1's admin API in {took:.1f} s, "
        f"keyed load of {LOAD_RATE} req/s each ({LOAD_CONNECTIONS} keep-alive connections)"
        " on instances 2 and 3"
    )
    print("reach = acknowledgement of the revoke -> that instance answers 401 key_revoked")
    for index, values in enumerate(per_instance):
        values.sort()
        print(
            f"  instance {index + 1}: p50 {statistics.median(values):6.1f} ms"
            f"  p99 {percentile(values, 0.99):6.1f} ms  max {values[-1]:6.1f} ms"
        )
    p99 = percentile(overall, 0.99)
    print(
        f"  every instance: p50 {statistics.median(overall):6.1f} ms  p99 {p99:6.1f} ms"
        f"  max {overall[-1]:6.1f} ms  (bound {BOUND_MS:.0f} ms: "
        f"{'met' if p99 <= BOUND_MS else 'MISSED'})"
    )
    print(
        f"keyed throughput, one instance, wrk 2 threads 50 connections "
        f"{args.throughput_seconds:g} s: PostgreSQL {pg_rps:,.0f} req/s, "
        f"SQLite {sqlite_rps:,.0f} req/s (ratio {pg_rps / sqlite_rps:.2f})"
    )
    if p99 > BOUND_MS:
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
