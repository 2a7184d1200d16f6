"""One million keys: table bytes per key, `serve` cold start, `keys create` latency.

Run: python -m benchmarks.million [--keys 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import keygate
from benchmarks.procs import ManagedProcess, free_ports, http_get, wait_for_port
from benchmarks.seed import seed_store

CREATE_SAMPLES = 20  # in-process key creations timed on the full store


def rss_bytes() -> int:
    """Return this process's resident set size in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure_table(db_path: Path) -> None:
    """Child-process mode: load the table from the store and print RSS growth per key."""
    from gateway.keys.table import KeyTable
    from gateway.store.sqlite import SqliteKeyStore

    async def run() -> None:
        store = SqliteKeyStore(db_path)
        await store.open()
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        table = KeyTable()
        loader = table.loader()
        loader.finish(await store.load_auth(loader.add))
        seconds = time.perf_counter() - started
        gc.collect()
        after = rss_bytes()
        await store.close()
        per_key = (after - before) / max(1, len(table))
        print(f"{len(table)} {before} {after} {per_key:.1f} {seconds:.2f}")

    asyncio.run(run())


async def time_creates(config: Path) -> list[float]:
    """Create keys in-process on the full store and return each call's milliseconds."""
    from gateway.keys import rules as key_rules
    from gateway.policy.rules import load_policy
    from gateway.settings import load_settings
    from gateway.store.factory import store_for

    settings = load_settings(config)
    policy = load_policy(settings.policy)
    store = store_for(settings)
    await store.open()
    timings = []
    try:
        for index in range(CREATE_SAMPLES):
            request = {"name": f"timed-{index}", "roles": [keygate.BENCH_ROLE]}
            started = time.perf_counter()
            await key_rules.create_key(store, request, policy, "bench", time.time())
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        await store.close()
    return timings


def main() -> None:
    """Seed the store, then measure table memory, cold start and key creation."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kg-million-") as temp:
        directory = Path(temp)
        keygate.write_policy(directory)
        listen_port, admin_port, upstream_port = free_ports(3)
        config = keygate.write_config(
            directory, "gateway.yaml", listen_port=listen_port, admin_port=admin_port,
            upstream_port=upstream_port,
        )  # fmt: skip
        seconds = seed_store(directory / "keygate.db", args.keys - 1, (keygate.BENCH_ROLE,))
        print(f"seeded {args.keys - 1:,} keys in {seconds:.1f} s")
        started = time.perf_counter()
        secret = keygate.create_key(config, "probe")
        cli_ms = (time.perf_counter() - started) * 1000
        print(
            f"`keygate keys create` (whole CLI process, Python start-up included): {cli_ms:.0f} ms"
        )
        timings = asyncio.run(time_creates(config))
        print(
            f"create_key on the {args.keys:,}-key store, in-process: median "
            f"{statistics.median(timings):.1f} ms, max {max(timings):.1f} ms "
            f"over {len(timings)} calls"
        )
        table = subprocess.run(
            [sys.executable, "-m", "benchmarks.million_table", str(directory / "keygate.db")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        count, before, after, per_key, load_s = table.stdout.split()
        print(
            f"key table: {int(count):,} keys, RSS {int(before) / 2**20:.0f} MiB -> "
            f"{int(after) / 2**20:.0f} MiB = {float(per_key):.0f} bytes per key "
            f"(loaded in {float(load_s):.2f} s)"
        )
        log = directory / "serve.log"
        started = time.perf_counter()
        process = ManagedProcess(
            "keygate", [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            log_path=log,
        )  # fmt: skip
        try:
            wait_for_port(listen_port, 60, process)
            # No upstream runs here: 502 means the key was found and the request forwarded.
            deadline = time.monotonic() + 120
            while http_get(listen_port, "/1Integrate/rest/x", {"X-API-Key": secret}).status != 502:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"keyed request never authenticated; see {log}")
                time.sleep(0.01)
            cold = time.perf_counter() - started
        finally:
            process.stop()
        print(f"`keygate serve` cold start with {args.keys:,} keys (spawn -> keyed request "
              f"authenticated): {cold:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
