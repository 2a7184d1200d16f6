"""App factories and the running gateway: wiring only (store, table, feed, listeners)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

from aiohttp import web

from gateway.admin.access_log import AdminAccessLogger
from gateway.admin.app import create_admin_app
from gateway.admin.middlewares import SECURITY_HEADERS
from gateway.events.delivery import Delivery
from gateway.events.outbox import Outbox
from gateway.events.webhooks import Webhook
from gateway.keys.feed import FeedFollower, prune_periodically
from gateway.keys.snapshot import (
    CAUSE_NOT_YET,
    SNAPSHOT_INTERVAL,
    PendingStore,
    SnapshotError,
    load_snapshot,
    snapshot_periodically,
    store_unreachable,
)
from gateway.keys.table import KeyTable
from gateway.keys.usage import prune_usage_periodically
from gateway.policy.reload import WATCH_INTERVAL, PolicyHolder, load_policy_file
from gateway.proxy.access_log import JsonProxyAccessLogger, ProxyAccessLogger, access_logger
from gateway.proxy.decision_listener import DecisionServer
from gateway.proxy.handler import Proxy
from gateway.proxy.web_internals import ConnectionLimits, JsonErrorAppRunner, JsonErrorServer
from gateway.ratelimit.limiters import LocalLimiter, redis_limiter
from gateway.runtime.context import Runtime
from gateway.settings import ClientLimits, Settings
from gateway.store.base import FeedNotifier, KeyStore, StoreUnavailableError
from gateway.store.factory import store_for
from gateway.upstream import UpstreamClient, create_upstream_client

log = logging.getLogger("keygate")
# Most bytes of request line kept before the proxy answers 400 (aiohttp's default).
MAX_LINE_SIZE = 8190
# Seconds aiohttp's own shutdown gives requests still running after the grace period.
CUT_TIMEOUT = 0.5


def create_proxy_server(
    proxy: Proxy, access_log_enabled: bool, client: ClientLimits, *, json_logs: bool = False
) -> web.Server:
    """Return the low-level aiohttp server for the proxy listener (no router on the hot path)."""

    return JsonErrorServer(
        proxy,
        access_log_class=JsonProxyAccessLogger if json_logs else ProxyAccessLogger,
        access_log=access_logger if access_log_enabled else None,
        max_line_size=MAX_LINE_SIZE,
        auto_decompress=False,
        # A client that leaves cancels its request: the upstream exchange is abandoned at
        # once, its connection closed and its pool slot freed (not held until it answers).
        handler_cancellation=True,
        limits=ConnectionLimits(client.head_timeout, client.max_connections),
        keepalive_timeout=client.keepalive_timeout,
    )


@dataclass
class RunningGateway:
    """A started gateway: its runtime and the addresses its listeners bound."""

    runtime: Runtime
    proxy_port: int
    admin_port: int | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    decision_port: int | None = None  # forward_auth.listen's, when configured


async def open_runtime(settings: Settings, *, writes_snapshot: bool = False) -> Runtime:
    """Open the store, load the policy and the whole key table.

    With the store unreachable, the table comes from the snapshot file when there is a
    usable one (the store then opens in the background, see gateway.snapshot); without
    one, StoreUnavailableError. `writes_snapshot`: this process keeps the snapshot.
    """
    loaded = load_policy_file(settings.policy)
    store = store_for(settings)
    table = KeyTable()
    try:
        await store.open()
    except StoreUnavailableError as error:
        if settings.snapshot_file is None or not store_unreachable(error):
            raise
        try:
            count = load_snapshot(settings.snapshot_file, store.location, table)
        except SnapshotError as problem:
            log.error("no usable key-table snapshot %s: %s", settings.snapshot_file, problem)
            raise error from None
        table.generation = store.generation
        log.warning(
            "%s; serving %d keys from the snapshot %s (feed sequence %d) until it answers",
            error, count, settings.snapshot_file, table.seq,
        )  # fmt: skip
        return Runtime(
            settings=settings,
            store=cast(KeyStore, PendingStore(store, CAUSE_NOT_YET)),
            policy=loaded.policy,
            table=table,
            policy_source=PolicyHolder(settings.policy, loaded),
        )
    runtime = Runtime(
        settings=settings,
        store=store,
        policy=loaded.policy,
        table=table,
        policy_source=PolicyHolder(settings.policy, loaded),
    )
    try:
        runtime.snapshot_seq = await runtime.load_table(
            settings.snapshot_file if writes_snapshot else None
        )
    except BaseException:
        await store.close()
        raise
    return runtime


class ListenerError(OSError):
    """A listener could not bind its address (the message names the listener and address)."""


async def _start_site(site: web.TCPSite, what: str, host: str, port: int) -> None:
    """Start a listener; a bind failure says which listener and address, in one line."""
    try:
        await site.start()
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise ListenerError(
            f"cannot start the {what} listener on {host}:{port}: {reason.lower()}"
        ) from None


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings,
    *,
    reuse_port: bool = False,
    serve_admin: bool = True,
    processes: int = 1,
    worker: int = 0,
    policy_watch_interval: float = WATCH_INTERVAL,
) -> AsyncIterator[RunningGateway]:
    """Start store, feed follower, usage flusher, proxy and admin listeners; stop them on exit.

    `processes` is how many processes share the proxy port and `worker` which one this is:
    without Redis (or while it is down, failing closed) each enforces its share of every
    rate limit. `policy_watch_interval` is the seconds between checks of a watched policy
    file (a test shortens it).
    """
    runtime = await open_runtime(settings, writes_snapshot=serve_admin)
    # One try/finally for everything started from here: whatever fails part-way (the
    # upstream client's TLS material, a port in use) stops what was already running.
    tasks: list[asyncio.Task[None]] = []
    upstream: UpstreamClient | None = None
    proxy: Proxy | None = None
    proxy_runner: web.ServerRunner | None = None
    proxy_site: web.TCPSite | None = None
    admin_runner: JsonErrorAppRunner | None = None
    delivery: Delivery | None = None
    decisions: DecisionServer | None = None
    decision_listener: asyncio.Server | None = None
    serving = False
    try:
        if settings.rate_limits.redis_url is not None:
            limiter = redis_limiter(
                settings.rate_limits.redis_url,
                time.monotonic,
                fail_open=settings.rate_limits.fail_open,
                processes=processes,
                worker=worker,
            )
            runtime.limiter = limiter
            runtime.metrics.rate_limit_store = limiter
        else:
            runtime.limiter = LocalLimiter(time.monotonic, processes, worker)
        # The loaded table is long-lived: move it out of the collector's generations so full
        # collections don't walk a million cached keys (a pause per collection otherwise).
        gc.freeze()
        store = runtime.store
        notifier = store if isinstance(store, FeedNotifier) else None
        follower = FeedFollower(store, runtime.table, settings.feed.poll_interval, notifier)
        runtime.follower = follower
        tasks.append(asyncio.create_task(follower.run(), name="keygate-feed"))
        if isinstance(runtime.store, PendingStore):
            reopen = runtime.store.reopen(lambda: runtime.follower)
            tasks.append(asyncio.create_task(reopen, name="keygate-store-reopen"))
        if serve_admin and settings.snapshot_file is not None:
            refresh = snapshot_periodically(
                store,
                runtime.table,
                settings.snapshot_file,
                SNAPSHOT_INTERVAL,
                runtime.snapshot_seq,
            )
            tasks.append(asyncio.create_task(refresh, name="keygate-snapshot"))
        if settings.policy_watch and runtime.policy_source is not None:
            watch = runtime.policy_source.watch(runtime.reload_policy, policy_watch_interval)
            tasks.append(asyncio.create_task(watch))
        tasks.append(
            asyncio.create_task(
                prune_periodically(
                    store,
                    settings.feed.keep_entries,
                    settings.feed.keep_seconds,
                    settings.feed.prune_interval,
                ),
                name="keygate-feed-prune",
            )
        )
        tasks.append(
            asyncio.create_task(
                runtime.usage.run(runtime.store, settings.usage.flush_interval),
                name="keygate-usage",
            )
        )
        tasks.append(
            asyncio.create_task(
                prune_usage_periodically(
                    store, settings.usage.keep_days, settings.usage.prune_interval
                ),
                name="keygate-usage-prune",
            )
        )
        upstream = create_upstream_client(settings.upstream)
        proxy = Proxy(runtime, upstream)
        proxy_runner = web.ServerRunner(
            create_proxy_server(
                proxy,
                settings.log.access_log and settings.log.level in ("debug", "info"),
                settings.client,
                json_logs=settings.log.format == "json",
            ),
            # The grace period is spent in Proxy.drain, with connections fully open (aiohttp's
            # own shutdown stops reading request bodies at once); what remains is cut at once.
            shutdown_timeout=CUT_TIMEOUT,
        )
        await proxy_runner.setup()
        site = web.TCPSite(
            proxy_runner,
            settings.listen.host,
            settings.listen.port,
            reuse_port=reuse_port or None,
        )
        await _start_site(site, "proxy", settings.listen.host, settings.listen.port)
        proxy_site = site
        decision_port: int | None = None
        listen = settings.forward_auth.listen
        if listen is not None:
            decisions = DecisionServer(
                proxy.forward_auth,
                head_timeout=settings.client.head_timeout,
                keepalive_timeout=settings.client.keepalive_timeout,
                max_connections=settings.client.max_connections,
                access_log=settings.log.access_log and settings.log.level in ("debug", "info"),
                json_logs=settings.log.format == "json",
                on_refused=runtime.metrics.refused,
            )
            try:
                decision_listener = await asyncio.get_running_loop().create_server(
                    decisions, listen.host, listen.port, reuse_port=reuse_port or None
                )
            except OSError as error:
                reason = os.strerror(error.errno) if error.errno else str(error)
                raise ListenerError(
                    f"cannot start the decision listener on {listen.host}:{listen.port}: "
                    f"{reason.lower()}"
                ) from None
            decision_port = decision_listener.sockets[0].getsockname()[1]
        admin_port: int | None = None
        if serve_admin:
            admin_runner = JsonErrorAppRunner(
                create_admin_app(runtime),
                error_headers=SECURITY_HEADERS,
                access_log=access_logger,
                access_log_class=AdminAccessLogger,
                shutdown_timeout=5.0,
            )
            await admin_runner.setup()
            admin_site = web.TCPSite(
                admin_runner,
                settings.admin.host,
                settings.admin.port,
                reuse_port=reuse_port or None,
            )
            await _start_site(admin_site, "admin", settings.admin.host, settings.admin.port)
            admin_port = admin_runner.addresses[0][1]
            # Only the admin listener's process sends webhook events and counts expiring keys.
            hooks = tuple(Webhook(h.url, h.secret) for h in settings.notify.webhooks)
            delivery = Delivery(store, hooks, runtime.metrics, settings.notify.poll_interval)
            await delivery.start()
            outbox = Outbox(store, settings.expiry, runtime.metrics, notices=bool(hooks))
            tasks.append(asyncio.create_task(outbox.run(), name="keygate-outbox"))
        serving = True
        yield RunningGateway(
            runtime, proxy_runner.addresses[0][1], admin_port, tasks, decision_port
        )
    finally:
        # Listeners stop first (new connections refused, in-flight requests drain), then the
        # background tasks; the usage flusher writes its last batch when cancelled.
        runtime.draining = True
        if decision_listener is not None and decisions is not None:
            decision_listener.close()
            decisions.close_all()
            await decision_listener.wait_closed()
        if proxy_site is not None and proxy is not None:
            await proxy_site.stop()
            started = time.monotonic()
            cut = await proxy.drain(settings.shutdown.grace_period)
            if serving:  # a start that failed part-way drained nothing worth a line
                log.info(
                    "proxy drained in %.1fs (%d request(s) cut)", time.monotonic() - started, cut
                )
        if proxy_runner is not None:
            await proxy_runner.cleanup()
        if admin_runner is not None:
            await admin_runner.cleanup()
        if upstream is not None:
            await upstream.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if delivery is not None:
            await delivery.drain()
        await runtime.limiter.close()
        await runtime.store.close()
