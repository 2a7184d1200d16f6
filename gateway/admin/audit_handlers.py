"""Admin API audit log handler: newest-first pages of audit events, filtered, or a CSV export."""

from __future__ import annotations

from aiohttp import web

from gateway import clock
from gateway.admin.audit_export import (
    AUDIT_CSV_MAX_ROWS,
    AUDIT_TEXT_MAX,
    CSV_FILENAME,
    UnknownActionError,
    audit_csv,
    parse_actions,
)
from gateway.admin.errors import E_OUT_OF_RANGE, NO_STORE, ApiError, bad_request
from gateway.admin.parsing import (
    decode_cursor,
    encode_cursor,
    parse_int_param,
    parse_limit,
    parse_since,
    parse_text,
    query_params,
)
from gateway.keys import rules as key_rules
from gateway.runtime.appkeys import RUNTIME

AUDIT_PARAMS = frozenset(
    {
        "key_id",
        "key_name",
        "actor",
        "since",
        "until",
        "action",
        "q",
        "format",
        "limit",
        "cursor",
    }
)
AUDIT_CURSOR = "a"
FORMATS = ("json", "csv")
CSV_TYPE = "text/csv"
# Set on a CSV export that stopped at AUDIT_CSV_MAX_ROWS with more entries matching.
TRUNCATED_HEADER = "X-Keygate-Truncated"
M_FORMAT = "format must be json or csv"
M_UNTIL = "until must not be before since"
TIME_RESOLUTION = 1e-6  # seconds: audit times are shown to the microsecond
M_TEXT = f"q must be at most {AUDIT_TEXT_MAX} characters without control characters"


def _iso(seconds: float) -> str:
    return clock.iso(seconds) or ""


def _wants_csv(request: web.Request, params: dict[str, str]) -> bool:
    """CSV when format=csv, or no format and the Accept header names text/csv."""
    chosen = params.get("format") or None
    if chosen is not None:
        if chosen not in FORMATS:
            raise bad_request(M_FORMAT, field="format")
        return chosen == "csv"
    accept = request.headers.get("Accept", "")
    return any(part.split(";")[0].strip().lower() == CSV_TYPE for part in accept.split(","))


async def list_audit(request: web.Request) -> web.Response:
    """GET /api/v1/audit: audit events newest first, by key (id, or name resolved to its id),
    actor, actions, time (since..until, inclusive) and text (a substring of key name, actor
    or details); as CSV (format=csv or Accept: text/csv) up to AUDIT_CSV_MAX_ROWS rows."""
    store = request.app[RUNTIME].store
    params = query_params(request, AUDIT_PARAMS)
    key_id = parse_int_param(params, "key_id")
    key_name = parse_text(params, "key_name")
    actor = parse_text(params, "actor")
    since = parse_since(params, "since")
    until = parse_since(params, "until")
    if since is not None and until is not None and until < since:
        raise ApiError(422, E_OUT_OF_RANGE, M_UNTIL, field="until")
    # An entry's `at` is shown rounded to the microsecond (and a float holds little more):
    # a bound names its whole microsecond, so an entry's own `at` always finds it.
    if since is not None:
        since -= TIME_RESOLUTION
    if until is not None:
        until += TIME_RESOLUTION
    action_text = parse_text(params, "action")
    try:
        actions = parse_actions(action_text) if action_text is not None else None
    except UnknownActionError as error:
        raise bad_request(str(error), field="action") from None
    text = parse_text(params, "q")
    if text is not None and len(text) > AUDIT_TEXT_MAX:
        raise bad_request(M_TEXT, field="q")
    csv = _wants_csv(request, params)
    limit = AUDIT_CSV_MAX_ROWS if csv and "limit" not in params else parse_limit(params)
    before = decode_cursor(params, AUDIT_CURSOR)
    if key_id is None and key_name is not None:
        # A key's history is by id: its batches and the entries under its earlier names.
        # A name no key has now finds the entries written under it (a deleted key's).
        current = await store.get_key_by_name(key_name)
        if current is not None:
            key_id, key_name = current.id, None
    events = await store.list_audit(
        key_id=key_id,
        key_name=key_name,
        actor=actor,
        since=since,
        limit=limit + 1,
        before_id=before,
        actions=actions or None,
        until=until,
        text=text,
    )
    page = events[:limit]
    if csv:
        headers = {
            "Cache-Control": NO_STORE,
            "Content-Disposition": f'attachment; filename="{CSV_FILENAME}"',
        }
        if len(events) > limit:
            headers[TRUNCATED_HEADER] = "true"
        return web.Response(
            text=audit_csv(page, _iso), content_type=CSV_TYPE, charset="utf-8", headers=headers
        )
    next_cursor = encode_cursor(AUDIT_CURSOR, page[-1].id) if len(events) > limit else None
    return web.json_response(
        {"items": [key_rules.audit_json(event) for event in page], "next_cursor": next_cursor},
        headers={"Cache-Control": NO_STORE},
    )
