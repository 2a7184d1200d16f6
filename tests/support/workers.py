"""What keeps parallel test workers (pytest-xdist, `-n 2`) apart: their number, their own
range of loopback ports and their own Redis database."""

from __future__ import annotations

import itertools
import os
import secrets
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

REDIS_ENV_VAR = "KEYGATE_TEST_REDIS"
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/15"
# Workers one Redis server keeps apart: databases 15, 14, ... 8 (Redis has 16 by default;
# the benchmarks use 7).
MAX_REDIS_WORKERS = 8

# Ports below the kernel's ephemeral range are never handed out by bind(0) or to outgoing
# connections, so a port chosen there stays free unless another worker chooses it: each
# worker takes its own slice.
FIRST_WORKER_PORT = 10_000
PORTS_PER_WORKER = 2_500


def worker_number() -> int:
    """This process's pytest-xdist worker number (gw0 -> 0); 0 when not run by xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    digits = name.removeprefix("gw")
    return int(digits) if digits.isdigit() else 0


def redis_test_url() -> str:
    """The Redis URL this worker's tests use: $KEYGATE_TEST_REDIS (default database 15),
    moved down one database per worker so counters of equal key ids never meet."""
    url = os.environ.get(REDIS_ENV_VAR) or DEFAULT_TEST_REDIS
    worker = worker_number()
    if worker == 0:
        return url
    if worker >= MAX_REDIS_WORKERS:
        raise RuntimeError(f"at most {MAX_REDIS_WORKERS} workers share the test Redis")
    parts = urlsplit(url)
    database = int(parts.path.strip("/") or "0")
    moved = (database - worker) % 16
    return urlunsplit((parts.scheme, parts.netloc, f"/{moved}", parts.query, ""))


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _port_cycle() -> Iterator[int]:
    start = FIRST_WORKER_PORT + worker_number() * PORTS_PER_WORKER
    end = start + PORTS_PER_WORKER
    if end > _ephemeral_low():
        return iter(())
    offset = secrets.randbelow(PORTS_PER_WORKER)
    ports = list(range(start, end))
    return itertools.cycle(ports[offset:] + ports[:offset])


_ports = _port_cycle()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now and that no other worker picks."""
    for _ in range(PORTS_PER_WORKER):
        port = next(_ports, None)
        if port is None:
            break
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
