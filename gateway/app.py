"""App factories and the running gateway: wiring only (store, table, feed, listeners)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler

from gateway.cache import FeedFollower
from gateway.policy import load_policy
from gateway.proxy import (
    E_BAD_REQUEST,
    E_INTERNAL,
    KEY_NAME,
    Proxy,
    error_response,
)
from gateway.runtime import Runtime
from gateway.settings import Settings
from gateway.store.factory import store_from_url
from gateway.upstream import create_upstream_client

log = logging.getLogger("keygate")
access_log = logging.getLogger("keygate.access")
# Most bytes of request line kept before the proxy answers 400 (aiohttp's default).
MAX_LINE_SIZE = 8190


class ProxyAccessLogger(AbstractAccessLogger):
    """One line per proxied request: peer, request line, status, size, time, key name."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access line (never a credential: only the key's name)."""
        self.logger.info(
            '%s "%s %s" %s %s %.1fms key=%s',
            request.remote,
            request.method,
            request.raw_path,
            response.status,
            response.body_length,
            time * 1000,
            request.get(KEY_NAME, "-"),
        )


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, with parser-level errors answered as keygate's JSON.

    Malformed requests (asterisk-form or over-long request lines, smuggling attempts) never
    reach the proxy handler; aiohttp would answer them in plain text and log a traceback
    each, which hostile clients could use to flood the log.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not parse or handle with a JSON error."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:
            log.error("error handling request from %s", request.remote, exc_info=exc)
            response = error_response(status, E_INTERNAL, "internal error")
        else:
            log.info("refused malformed request from %s: %s", request.remote, exc)
            response = error_response(status, E_BAD_REQUEST, "malformed HTTP request")
        response.force_close()
        return response


class ProxyServer(web.Server):
    """The low-level server of the proxy listener, using the JSON error handler."""

    def __call__(self) -> RequestHandler:
        """Return the handler for one new connection."""
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


def create_proxy_server(proxy: Proxy, access_log_enabled: bool) -> web.Server:
    """Return the low-level aiohttp server for the proxy listener (no router on the hot path)."""

    return ProxyServer(
        proxy,
        access_log_class=ProxyAccessLogger,
        access_log=access_log if access_log_enabled else None,
        max_line_size=MAX_LINE_SIZE,
        auto_decompress=False,
        # A client that leaves cancels its request: the upstream exchange is abandoned at
        # once, its connection closed and its pool slot freed (not held until it answers).
        handler_cancellation=True,
    )


@dataclass
class RunningGateway:
    """A started gateway: its runtime and the addresses its listeners bound."""

    runtime: Runtime
    proxy_port: int
    admin_port: int | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def open_runtime(settings: Settings) -> Runtime:
    """Open the store, load the policy and the whole key table."""
    policy = load_policy(settings.policy_path)
    store = store_from_url(settings.store_url, settings.base_dir)
    await store.open()
    runtime = Runtime(settings=settings, store=store, policy=policy)
    try:
        await runtime.load_table()
    except BaseException:
        await store.close()
        raise
    return runtime


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, *, reuse_port: bool = False, serve_admin: bool = True
) -> AsyncIterator[RunningGateway]:
    """Start store, feed follower, usage flusher, proxy and admin listeners; stop them on exit."""
    runtime = await open_runtime(settings)
    # The loaded table is long-lived: move it out of the collector's generations so full
    # collections don't walk a million cached keys (a pause per collection otherwise).
    gc.freeze()
    follower = FeedFollower(runtime.store, runtime.table, settings.poll_interval)
    runtime.follower = follower
    tasks = [
        asyncio.create_task(follower.run(), name="keygate-feed"),
        asyncio.create_task(
            runtime.usage.run(runtime.store, settings.flush_interval), name="keygate-usage"
        ),
    ]
    upstream = create_upstream_client(settings.upstream)
    proxy_runner = web.ServerRunner(
        create_proxy_server(
            Proxy(runtime, upstream),
            settings.access_log and settings.log_level in ("debug", "info"),
        ),
        shutdown_timeout=settings.grace_period,
    )
    admin_runner: web.AppRunner | None = None
    try:
        await proxy_runner.setup()
        proxy_site = web.TCPSite(
            proxy_runner,
            settings.listen.host,
            settings.listen.port,
            reuse_port=reuse_port or None,
        )
        await proxy_site.start()
        admin_port: int | None = None
        if serve_admin:
            from gateway.admin.app import create_admin_app

            admin_runner = web.AppRunner(
                create_admin_app(runtime), access_log=access_log, shutdown_timeout=5.0
            )
            await admin_runner.setup()
            admin_site = web.TCPSite(
                admin_runner,
                settings.admin.host,
                settings.admin.port,
                reuse_port=reuse_port or None,
            )
            await admin_site.start()
            admin_port = admin_runner.addresses[0][1]
        yield RunningGateway(runtime, proxy_runner.addresses[0][1], admin_port, tasks)
    finally:
        # Listeners stop first (new connections refused, in-flight requests drain), then the
        # background tasks; the usage flusher writes its last batch when cancelled.
        await proxy_runner.cleanup()
        if admin_runner is not None:
            await admin_runner.cleanup()
        await upstream.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await runtime.store.close()
