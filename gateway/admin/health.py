"""Admin listener probes: /healthz (alive), /readyz (store and policy), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.admin.errors import E_NOT_READY, json_error
from gateway.metrics import render
from gateway.state import RUNTIME
from gateway.store.base import StoreUnavailableError

log = logging.getLogger("keygate.admin")

READY_TIMEOUT = 2.0  # seconds the store gets to answer a readiness ping
M_NOT_READY = "not ready: see checks"
M_STORE_TIMEOUT = f"no answer within {READY_TIMEOUT} s"
M_STORE_FAILED = "store check failed (see the log)"


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive (no auth, no I/O)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: the store reads and takes a write, and a policy is loaded (no auth).

    When the store is not ready, `store_error` says why (deleted, disk full, read-only...).
    """
    runtime = request.app[RUNTIME]
    store_error: str | None = None
    try:
        await asyncio.wait_for(runtime.store.ping(), READY_TIMEOUT)
    except StoreUnavailableError as error:
        store_error = error.cause
    except TimeoutError:
        store_error = M_STORE_TIMEOUT
    except Exception:
        log.warning("readiness: store ping failed", exc_info=True)
        store_error = M_STORE_FAILED
    policy_ok = runtime.policy is not None and bool(runtime.policy.roles)
    checks = {"store": store_error is None, "policy": policy_ok}
    if store_error is None and policy_ok:
        return web.json_response({"status": "ready", "checks": checks})
    extra: dict[str, object] = {"checks": checks}
    if store_error is not None:
        extra["store_error"] = store_error
    return json_error(503, E_NOT_READY, M_NOT_READY, extra=extra)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: this process's counters in Prometheus text format (no auth)."""
    runtime = request.app[RUNTIME]
    holder = runtime.policy_source
    body = render(runtime.metrics, runtime.table, holder.reloads if holder is not None else None)
    return web.Response(body=body, content_type="text/plain", charset="utf-8")
