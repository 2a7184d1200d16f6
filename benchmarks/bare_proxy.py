"""The simplest honest aiohttp pass-through proxy: the floor keygate's overhead is measured from.

Run: python -m benchmarks.bare_proxy --port 8080 --upstream http://127.0.0.1:9000
One catch-all route, one ClientSession with a keep-alive TCPConnector, responses streamed
back; hop-by-hop headers dropped both ways; uvloop when importable (as keygate uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Callable

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a keygate dependency on POSIX
    uvloop = None  # type: ignore[assignment]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
CHUNK_SIZE = 64 * 1024  # bytes per streamed body read
KEEPALIVE_TIMEOUT_S = 60.0  # seconds an idle upstream connection is kept
UPSTREAM_TIMEOUT_S = 60.0  # seconds for a whole upstream exchange
CONNECTION_LIMIT = 100  # concurrent upstream connections (aiohttp's default)

SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _forwardable(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """Copy headers minus hop-by-hop ones, those named in Connection, and `drop`."""
    named = {
        token.strip().lower()
        for value in headers.getall(hdrs.CONNECTION, ())
        for token in value.split(",")
    }
    skip = HOP_BY_HOP | named | drop
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in skip)


async def forward(request: web.Request) -> web.StreamResponse:
    """Forward one request upstream and stream the answer back unchanged."""
    session = request.app[SESSION]
    url = URL(request.app[UPSTREAM] + request.raw_path, encoded=True)
    headers = _forwardable(request.headers, frozenset({"host"}))
    data = request.content if request.body_exists else None
    try:
        async with session.request(
            request.method, url, headers=headers, data=data, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(_forwardable(upstream.headers, frozenset()))
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK_SIZE):
                await response.write(chunk)
            await response.write_eof()
            return response
    except (ClientError, TimeoutError):
        return web.json_response({"error": "upstream_unavailable"}, status=502)


async def client_session(app: web.Application) -> AsyncIterator[None]:
    """Own the one upstream ClientSession for the app's lifetime."""
    connector = TCPConnector(limit=CONNECTION_LIMIT, keepalive_timeout=KEEPALIVE_TIMEOUT_S)
    async with ClientSession(
        connector=connector,
        timeout=ClientTimeout(total=UPSTREAM_TIMEOUT_S),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
    ) as session:
        app[SESSION] = session
        yield


def make_app(upstream: str) -> web.Application:
    """Return the proxy app: one catch-all route forwarding to `upstream`."""
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(host: str, port: int, upstream: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(make_app(upstream), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=4096).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop_name = "uvloop" if uvloop is not None else "asyncio"
        print(f"bare_proxy on {host}:{port} -> {upstream} (loop={loop_name})", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the proxy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9000")
    args = parser.parse_args(argv)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = (
        uvloop.new_event_loop if uvloop is not None else None
    )
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.host, args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
