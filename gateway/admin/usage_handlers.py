"""Admin API: a key's usage over time (GET /api/v1/keys/{id}/usage)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway import clock
from gateway.admin.errors import E_OUT_OF_RANGE, ApiError, bad_request
from gateway.admin.key_handlers import key_row_of
from gateway.admin.models import KeyUsage, UsagePoint, respond
from gateway.admin.parsing import parse_since, query_params
from gateway.keys.usage_series import (
    M_STEP,
    STEPS,
    UsageWindowError,
    usage_series,
    usage_window,
)
from gateway.runtime.appkeys import RUNTIME

USAGE_PARAMS = frozenset({"from", "to", "step"})


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def key_usage(request: web.Request) -> web.Response:
    """GET /api/v1/keys/{id}/usage?from=&to=&step=hour|day: a key's counts per hour or day.

    Default: the 24 hours before now, by hour. A malformed time or step is a 400; a window
    out of its bounds (before usage.keep_days, to not after from, to more than a day ahead,
    more than MAX_USAGE_POINTS points) a 422; an unknown key a 404.
    """
    runtime = request.app[RUNTIME]
    params = query_params(request, USAGE_PARAMS)
    start = parse_since(params, "from")
    end = parse_since(params, "to")
    step = params.get("step") or "hour"
    if step not in STEPS:
        raise bad_request(M_STEP, field="step")
    try:
        window = usage_window(start, end, step, clock.now(), runtime.settings.usage.keep_days)
    except UsageWindowError as error:  # well-formed, out of bounds: the document cannot say
        raise ApiError(422, E_OUT_OF_RANGE, str(error), field=error.field) from None
    row = await key_row_of(request)
    rows = await runtime.store.usage_hours(row.id, window.first_hour, window.last_hour)
    return respond(
        KeyUsage(
            key_id=row.id,
            key_name=row.name,
            step=window.step,
            from_=_time(window.start),
            to=_time(window.end),
            points=[
                UsagePoint(
                    start=_time(point.start),
                    forwarded=point.forwarded,
                    denied=point.denied,
                    limited=point.limited,
                    upstream_errors=point.upstream_errors,
                    addresses=point.addresses,
                    addresses_capped=point.addresses_capped,
                )
                for point in usage_series(rows, window)
            ],
        )
    )
