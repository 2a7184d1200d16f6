"""Revocation reach: time from a committed revoke until every worker refuses the key.

Run: python -m benchmarks.revocation [--workers 2] [--revocations 200]

Revokes go through the store from this process (as the CLI does); each worker is probed on
its own keep-alive connection, found by matching socket inodes in /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import keygate
from benchmarks.procs import ManagedProcess, free_ports, wait_for_port
from gateway.keys import rules as key_rules
from gateway.policy.rules import load_policy
from gateway.settings import load_settings
from gateway.store.base import KeyStore
from gateway.store.factory import store_for

PROBE_INTERVAL = 0.002  # seconds between probe rounds
PROBE_DEADLINE = 5.0  # seconds before a revocation counts as never seen


def child_pids(pid: int) -> list[int]:
    """Return the direct children of a process (the supervisor's workers)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        children.extend(int(child) for child in text.split())
    return children


def server_socket_owner(listen_port: int, client_port: int, pids: list[int]) -> int | None:
    """Return which pid holds the server side of the loopback connection from client_port."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if local_port == listen_port and remote_port == client_port:
            inode = fields[9]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    return None


class Connection:
    """A raw HTTP/1.1 keep-alive connection pinned to one worker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def status(self, key: str) -> int:
        """Send one keyed GET and return the status code, reading the whole response."""
        self.writer.write(
            f"GET /1Integrate/rest/x HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.reader.readexactly(length)
        return status


async def pin_connections(port: int, workers: list[int]) -> dict[int, Connection]:
    """Open connections until every worker holds one; close the spares."""
    pinned: dict[int, Connection] = {}
    for _ in range(200):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client_port = writer.get_extra_info("sockname")[1]
        await asyncio.sleep(0.01)
        owner = server_socket_owner(port, client_port, workers)
        if owner is not None and owner not in pinned:
            pinned[owner] = Connection(reader, writer)
        else:
            writer.close()
        if len(pinned) == len(workers):
            return pinned
    raise RuntimeError(f"could not reach every worker: {sorted(pinned)} of {workers}")


async def measure(store: KeyStore, secrets: list[tuple[int, str]], pinned: dict[int, Connection]
                  ) -> list[float]:  # fmt: skip
    """Revoke each key and time until every pinned worker answers 401."""
    latencies: list[float] = []
    for key_id, secret in secrets:
        for connection in pinned.values():
            if await connection.status(secret) == 401:
                raise RuntimeError("key refused before its revocation")
        await store.set_revoked(key_id, True, "bench")
        committed = time.perf_counter()
        waiting = set(pinned)
        while waiting:
            if time.perf_counter() - committed > PROBE_DEADLINE:
                raise RuntimeError(f"workers {sorted(waiting)} never saw revocation of {key_id}")
            for pid in list(waiting):
                if await pinned[pid].status(secret) == 401:
                    waiting.discard(pid)
            if waiting:
                await asyncio.sleep(PROBE_INTERVAL)
        latencies.append((time.perf_counter() - committed) * 1000)
    return latencies


async def run(args: argparse.Namespace, directory: Path) -> None:
    """Set up keys, start `serve --workers N`, pin connections, measure, report."""
    keygate.write_policy(directory)
    listen_port, admin_port, upstream_port = free_ports(3)
    config = keygate.write_config(
        directory, "gateway.yaml", listen_port=listen_port, admin_port=admin_port,
        upstream_port=upstream_port,
    )  # fmt: skip
    settings = load_settings(config)
    policy = load_policy(settings.policy)
    store = store_for(settings)
    await store.open()
    try:
        secrets = []
        for index in range(args.revocations):
            created = await key_rules.create_key(
                store, {"name": f"rev-{index}", "roles": [keygate.BENCH_ROLE]}, policy, "bench",
                time.time(),
            )  # fmt: skip
            secrets.append((created.row.id, created.secret))
        process = ManagedProcess(
            "keygate",
            [sys.executable, "-m", "gateway", "serve", "--config", str(config),
             "--workers", str(args.workers)],
            log_path=directory / "serve.log",
        )  # fmt: skip
        try:
            wait_for_port(listen_port, 60, process)
            await asyncio.sleep(1.0)
            workers = child_pids(process.popen.pid) if args.workers > 1 else [process.popen.pid]
            pinned = await pin_connections(listen_port, workers)
            latencies = await measure(store, secrets, pinned)
        finally:
            process.stop()
    finally:
        await store.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"revocation reach over {len(latencies)} revocations, {args.workers} workers, feed poll "
        f"{settings.feed.poll_interval * 1000:.0f} ms: "
        f"median {statistics.median(latencies):.0f} ms, "
        f"p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms"
    )


def main() -> None:
    """Parse arguments and run in a temporary directory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--revocations", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kg-revoke-") as temp:
        asyncio.run(run(args, Path(temp)))


if __name__ == "__main__":
    main()
