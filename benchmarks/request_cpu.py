"""keygate's CPU per proxied request, in one process: steadier than req/s on a shared machine.

    python -m benchmarks.request_cpu [--requests 20000] [--rounds 5] [--access-log on|off]
                                     [--forward-auth [--decision-listener]]

One uvloop process holds a minimal upstream (a keep-alive protocol answering a ~100-byte
JSON document), the real gateway (`running_gateway` on a SQLite store with 10,000 keys, the
benchmark policy) and 32 client connections sending keyed GETs one after another. The
process's CPU time over the run, minus the same client's CPU against the upstream directly,
is what the gateway spends per request (uvloop and the kernel's socket work included). CPU
time counts only this process's work, so other load on the machine hardly moves it. The
median over rounds is printed; compare two trees by running each. `--forward-auth` sends
nginx `auth_request` decisions for the same GET instead (the upstream is then not asked; its
share of the baseline is a few microseconds); with `--decision-listener` they go to the
decision listener (`forward_auth.listen`) instead of the proxy listener.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from benchmarks import keygate
from benchmarks.nginx import SMALL_BODY, SMALL_PATH
from benchmarks.procs import free_port

CONNECTIONS = 32  # client connections, as wrk -c32 in benchmarks.proxy
_ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: upstream\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%b" % (len(SMALL_BODY), SMALL_BODY.encode())
)


class Upstream(asyncio.Protocol):
    """Answers every request head with the small document (pipelining not needed)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        # uvloop's transports are not asyncio.Transport subclasses: cast, not check.
        self.transport = cast(asyncio.Transport, transport)
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        """Answer once per complete head."""
        self.pending += data
        while (end := self.pending.find(b"\r\n\r\n")) >= 0:
            self.pending = self.pending[end + 4 :]
            self.transport.write(_ANSWER)


async def client(port: int, request: bytes, count: int) -> None:
    """Send `count` requests on one keep-alive connection, reading each whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:200]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
    finally:
        writer.close()


async def cpu_per_request(port: int, request: bytes, total: int) -> float:
    """Return process CPU microseconds per request for `total` requests over CONNECTIONS."""
    per_connection = total // CONNECTIONS
    started = time.process_time()
    await asyncio.gather(*(client(port, request, per_connection) for _ in range(CONNECTIONS)))
    return (time.process_time() - started) / (per_connection * CONNECTIONS) * 1e6


def request_bytes(host_port: int, key: str | None) -> bytes:
    """A keyed GET for the small document, as wrk sends it."""
    key_line = f"X-API-Key: {key}\r\n" if key else ""
    return f"GET {SMALL_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{host_port}\r\n{key_line}\r\n".encode()


def decision_bytes(host_port: int, key: str) -> bytes:
    """nginx's auth_request subrequest asking about the keyed GET (forward-auth)."""
    return (
        f"GET /_keygate/nginx HTTP/1.1\r\nHost: 127.0.0.1:{host_port}\r\n"
        f"X-Original-Method: GET\r\nX-Original-URI: {SMALL_PATH}\r\nX-API-Key: {key}\r\n\r\n"
    ).encode()


def prepare(args: argparse.Namespace, directory: Path, upstream_port: int) -> tuple[Path, str]:
    """Write config and policy, create the bench key and seed the rest; the config and key."""
    decision_port = free_port() if args.decision_listener else None
    return keygate.prepare_gateway(
        directory,
        listen_port=0,
        admin_port=0,
        upstream_port=upstream_port,
        keys=args.keys,
        access_log=args.access_log == "on",
        decision_port=decision_port,
    )


async def measure(args: argparse.Namespace, config: Path, key: str, upstream_port: int) -> None:
    """Run the rounds and print the medians."""
    from gateway.proxy import access_writer
    from gateway.serve.wiring import running_gateway
    from gateway.settings import load_settings

    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(Upstream, "127.0.0.1", upstream_port)
    sink = io.StringIO()
    if args.access_log == "on":
        access_writer.install(sink)  # as `keygate serve` does; the lines kept in memory
    direct, keyed = [], []
    async with running_gateway(load_settings(config), serve_admin=False) as running:
        port = running.proxy_port
        if args.decision_listener:
            assert running.decision_port is not None
            port = running.decision_port
        asked = decision_bytes(port, key) if args.forward_auth else request_bytes(port, key)
        await cpu_per_request(port, asked, CONNECTIONS * 50)  # warm-up
        for _ in range(args.rounds):
            direct.append(
                await cpu_per_request(
                    upstream_port, request_bytes(upstream_port, None), args.requests
                )
            )
            keyed.append(await cpu_per_request(port, asked, args.requests))
            sink.seek(0)
            sink.truncate()
    upstream.close()
    gateway_us = [k - d for k, d in zip(keyed, direct, strict=True)]
    what = "forward-auth decisions (nginx)" if args.forward_auth else "requests"
    print(
        f"access log {args.access_log}, {args.requests} {what} x {args.rounds} rounds, "
        f"{CONNECTIONS} connections: client+upstream alone {statistics.median(direct):.1f} us, "
        f"with keygate {statistics.median(keyed):.1f} us; keygate's CPU per request "
        f"{statistics.median(gateway_us):.1f} us (rounds: "
        + ", ".join(f"{x:.1f}" for x in gateway_us)
        + ")"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the measurement once."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.request_cpu", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--access-log", choices=("on", "off"), default="on")
    parser.add_argument(
        "--forward-auth",
        action="store_true",
        help="send nginx auth_request decisions (/_keygate/nginx) instead of proxied GETs",
    )
    parser.add_argument(
        "--decision-listener",
        action="store_true",
        help="with --forward-auth: ask the decision listener (forward_auth.listen)",
    )
    args = parser.parse_args(argv)
    if args.decision_listener and not args.forward_auth:
        parser.error("--decision-listener needs --forward-auth")
    import uvloop

    with tempfile.TemporaryDirectory(prefix="keygate-cpu-") as temp:
        upstream_port = free_port()
        config, key = prepare(args, Path(temp), upstream_port)
        uvloop.run(measure(args, config, key, upstream_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
