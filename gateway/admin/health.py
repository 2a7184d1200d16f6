"""Admin listener probes: /healthz (alive), /readyz (store and policy), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.admin.errors import E_NOT_READY, json_error
from gateway.runtime.appkeys import RUNTIME
from gateway.runtime.metrics import render
from gateway.store.base import StoreLifecycle, StoreUnavailableError

log = logging.getLogger("keygate.admin")

# Seconds the store gets to answer a readiness ping: well inside the shipped probe's
# timeoutSeconds (deploy/k8s/deployment.yaml), so a silent store reads as 503, not a timeout.
READY_TIMEOUT = 0.5
M_NOT_READY = "not ready: see checks"
M_STORE_TIMEOUT = f"no answer within {READY_TIMEOUT} s"
M_STORE_FAILED = "store check failed (see the log)"
M_DRAINING = "not ready: shutting down (draining in-flight requests)"


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive (no auth, no I/O)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: the store reads and takes a write, and a policy is loaded (no auth).

    When the store is not ready, `store_error` says why (deleted, disk full, read-only...).
    """
    runtime = request.app[RUNTIME]
    if runtime.draining:
        # The proxy listener is closed already: a load balancer must stop sending now.
        checks = {"store": False, "policy": False, "draining": True}
        return json_error(503, E_NOT_READY, M_DRAINING, extra={"checks": checks})
    store_error = await _ping_store(runtime.store)
    policy_ok = runtime.policy is not None and bool(runtime.policy.roles)
    checks = {"store": store_error is None, "policy": policy_ok}
    if store_error is None and policy_ok:
        return web.json_response({"status": "ready", "checks": checks})
    extra: dict[str, object] = {"checks": checks}
    if store_error is not None:
        extra["store_error"] = store_error
    return json_error(503, E_NOT_READY, M_NOT_READY, extra=extra)


async def _ping_store(store: StoreLifecycle) -> str | None:
    """Ping the store within READY_TIMEOUT; return why it is not ready, or None.

    The answer never waits past the bound: a ping stuck on a silent network is cancelled
    and left to unwind on its own (asyncio.wait_for would wait for that unwinding).
    """
    ping = asyncio.ensure_future(store.ping())
    done, _ = await asyncio.wait({ping}, timeout=READY_TIMEOUT)
    if not done:
        ping.cancel()
        ping.add_done_callback(_consume)
        return M_STORE_TIMEOUT
    try:
        ping.result()
    except StoreUnavailableError as error:
        return error.cause
    except Exception:
        log.warning("readiness: store ping failed", exc_info=True)
        return M_STORE_FAILED
    return None


def _consume(task: asyncio.Future[None]) -> None:
    """Retrieve an abandoned ping's outcome, so asyncio logs no 'never retrieved' error."""
    if not task.cancelled():
        task.exception()


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: this process's counters in Prometheus text format (no auth)."""
    runtime = request.app[RUNTIME]
    holder = runtime.policy_source
    body = render(runtime.metrics, runtime.table, holder.reloads if holder is not None else None)
    return web.Response(body=body, content_type="text/plain", charset="utf-8")
