"""Upstreams for tests: the demo backend on a loopback port."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.demo.backend import runner_url, start_demo_backend


@dataclass
class Backend:
    """A started demo backend: its runner, port and base URL."""

    runner: web.AppRunner
    port: int
    url: str


async def start_backend() -> Backend:
    """Start the demo backend on 127.0.0.1 with a free port."""
    runner = await start_demo_backend("127.0.0.1", 0)
    return Backend(runner, int(runner.addresses[0][1]), runner_url(runner))
