"""Admin listener probes: /healthz (alive), /readyz (store and policy), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.admin.errors import E_NOT_READY, json_error
from gateway.metrics import render
from gateway.state import RUNTIME

log = logging.getLogger("keygate.admin")

READY_TIMEOUT = 2.0  # seconds the store gets to answer a readiness ping
M_NOT_READY = "not ready: see checks"


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive (no auth, no I/O)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: the store answers and a policy is loaded (no auth)."""
    runtime = request.app[RUNTIME]
    try:
        store_ok = await asyncio.wait_for(runtime.store.ping(), READY_TIMEOUT) is True
    except Exception:
        log.warning("readiness: store ping failed", exc_info=True)
        store_ok = False
    policy_ok = runtime.policy is not None and bool(runtime.policy.roles)
    checks = {"store": store_ok, "policy": policy_ok}
    if store_ok and policy_ok:
        return web.json_response({"status": "ready", "checks": checks})
    return json_error(503, E_NOT_READY, M_NOT_READY, extra={"checks": checks})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: this process's counters in Prometheus text format (no auth)."""
    runtime = request.app[RUNTIME]
    body = render(runtime.metrics, runtime.table)
    return web.Response(body=body, content_type="text/plain", charset="utf-8")
