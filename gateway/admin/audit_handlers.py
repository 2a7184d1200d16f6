"""Admin API audit log handler: newest-first pages of audit events, filtered."""

from __future__ import annotations

from aiohttp import web

from gateway.admin.errors import NO_STORE
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

AUDIT_PARAMS = frozenset({"key_id", "key_name", "actor", "since", "limit", "cursor"})
AUDIT_CURSOR = "a"


async def list_audit(request: web.Request) -> web.Response:
    """GET /api/v1/audit: audit events newest first, by key (id, or name resolved to its id),
    actor and time."""
    store = request.app[RUNTIME].store
    params = query_params(request, AUDIT_PARAMS)
    key_id = parse_int_param(params, "key_id")
    key_name = parse_text(params, "key_name")
    actor = parse_text(params, "actor")
    since = parse_since(params, "since")
    limit = parse_limit(params)
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
    )
    page = events[:limit]
    next_cursor = encode_cursor(AUDIT_CURSOR, page[-1].id) if len(events) > limit else None
    return web.json_response(
        {"items": [key_rules.audit_json(event) for event in page], "next_cursor": next_cursor},
        headers={"Cache-Control": NO_STORE},
    )
