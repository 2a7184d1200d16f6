"""Upstreams for tests: the demo backend on a loopback port, optionally recording each request."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.demo.backend import create_demo_backend_app, runner_url, start_demo_backend


@dataclass
class Backend:
    """A started demo backend: its runner, port and base URL."""

    runner: web.AppRunner
    port: int
    url: str


@dataclass(frozen=True)
class Received:
    """One request as the backend got it: method, raw target and raw headers in order."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]

    def values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class RecordingBackend(Backend):
    """The demo backend noting every request it receives, before it answers."""

    received: list[Received] = field(default_factory=list)


async def start_backend() -> Backend:
    """Start the demo backend on 127.0.0.1 with a free port."""
    runner = await start_demo_backend("127.0.0.1", 0)
    return Backend(runner, int(runner.addresses[0][1]), runner_url(runner))


async def start_recording_backend() -> RecordingBackend:
    """Start the demo backend on 127.0.0.1 (free port), recording each request it receives."""
    received: list[Received] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = tuple(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers
        )
        received.append(Received(request.method, request.raw_path, headers))
        return await handler(request)

    app = create_demo_backend_app()
    app.middlewares.insert(0, record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    return RecordingBackend(runner, int(runner.addresses[0][1]), runner_url(runner), received)
