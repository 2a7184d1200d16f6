"""Admin API key handlers: create, list, show, edit, roll, revoke, reinstate, delete, batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web

from gateway import clock
from gateway.admin.errors import (
    E_IDEMPOTENCY_REUSED,
    E_IDEMPOTENT_REPLAY,
    E_INVALID,
    NO_STORE,
    ApiError,
    bad_request,
    not_found,
)
from gateway.admin.identity import grant_set_of
from gateway.admin.key_problems import with_problems
from gateway.admin.key_views import shown_key
from gateway.admin.middlewares import current_admin
from gateway.admin.models import (
    M_BATCH_ID,
    BatchCounts,
    BatchDone,
    Changes,
    Count,
    Identify,
    KeyBatch,
    KeyCreate,
    KeyPatch,
    KeyRoll,
    ReinstateAll,
    convert,
    fields,
    respond,
    to_builtins,
)
from gateway.admin.parsing import (
    decode_cursor,
    decode_sort_cursor,
    encode_cursor,
    encode_sort_cursor,
    parse_days,
    parse_id,
    parse_limit,
    parse_text,
    query_params,
    read_json_object,
    read_no_body,
)
from gateway.keys import keyformat as keys
from gateway.keys import rules as key_rules
from gateway.policy.rules import Policy
from gateway.runtime.appkeys import RUNTIME
from gateway.runtime.context import Runtime
from gateway.settings.models import USAGE_KEEP_DAYS_LIMIT
from gateway.store.base import (
    KEY_SORTS,
    BatchResult,
    IdempotencyClaim,
    IdempotencyMismatchError,
    IdempotentReplayError,
    KeyChanges,
    KeyFilter,
    KeyRow,
    NotFoundError,
    SortPosition,
)

KEY_FIELDS = fields(KeyCreate)
IDENTIFY_FIELDS = fields(Identify)
ROLL_FIELDS = fields(KeyRoll)
REINSTATE_FIELDS = fields(ReinstateAll)
BATCH_FIELDS = fields(KeyBatch)
# reinstate-all's of_batch for the latest revoke-all (the store's word).
LAST_BATCH = "last"
M_NO_BATCH = "no revoke-all batch to reinstate (none yet, or no batch with that id)"
M_BATCH_AND_SCOPE = "give batch alone, or with scope last_revoke_all; not with scope all"
LIST_PARAMS = frozenset(
    {"status", "q", "limit", "cursor", "sort", "role", "created_by", "unused_days"}
)
# The action paths beside a key's own /api/v1/keys/{id}: a literal path wins there, as
# OpenAPI matches paths, so a key named like an action is reached at that path by its id.
KEY_ACTIONS = (
    "revoke-all",
    "reinstate-all",
    "delete-revoked",
    "identify",
    "batch-counts",
    "batch",
    "summary",
)
STATUSES: tuple[KeyFilter, ...] = ("active", "revoked", "expired", "expiring")
KEY_CURSOR = "k"
DAY = 86_400  # seconds
# The create request header that makes retries safe (Stripe's and the IETF draft's name).
IDEMPOTENCY_HEADER = "Idempotency-Key"
# The idempotency key's rules are key_rules' (shared with `keygate keys create`).
IDEMPOTENCY_KEY_MAX = key_rules.IDEMPOTENCY_KEY_MAX
IDEMPOTENCY_WINDOW = key_rules.IDEMPOTENCY_WINDOW

M_NOTHING_TO_CHANGE = "nothing to change: give name, description, roles, expires_at or rate_limit"
M_STATUS = "status must be one of: active, revoked, expired, expiring"
M_SORT = f"sort must be one of: {', '.join(KEY_SORTS)}"
M_CHECKSUM = "secret's checksum does not match: not a whole keygate API key (mistyped or cut?)"
M_NO_KEY_FOR_SECRET = "no key has that secret (deleted, or never a keygate key)"
M_IDEMPOTENCY_KEY = f"{IDEMPOTENCY_HEADER} {key_rules.M_IDEMPOTENCY_KEY}"
M_REPLAY = key_rules.M_REPLAY.format(field=IDEMPOTENCY_HEADER)
M_REPLAY_DELETED = key_rules.M_REPLAY_DELETED.format(field=IDEMPOTENCY_HEADER)


def _runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


async def key_row_of(request: web.Request) -> KeyRow:
    """Return the key a path's {id} names, by id or by name as the CLI accepts (names are
    never all digits); 404 when there is none."""
    ref = request.match_info["id"]
    store = _runtime(request).store
    if ref.isascii() and ref.isdigit():
        row = await store.get_key(parse_id(ref))
    else:
        row = await store.get_key_by_name(ref)
    if row is None:
        raise not_found()
    return row


async def _key_id(request: web.Request) -> int:
    """The id of the key a path names; an id is not looked up (the store's write answers 404)."""
    ref = request.match_info["id"]
    if ref.isascii() and ref.isdigit():
        return parse_id(ref)
    return (await key_row_of(request)).id


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": NO_STORE})


def idempotency_claim(
    request: web.Request, data: dict[str, Any], now: float
) -> IdempotencyClaim | None:
    """Return the create's idempotency claim from its Idempotency-Key header, or None.

    The fingerprint is the SHA-256 of the body as parsed (member order and spacing aside).
    """
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    try:
        return key_rules.idempotency_claim(value, data, now, IDEMPOTENCY_HEADER)
    except key_rules.InputError:
        raise bad_request(M_IDEMPOTENCY_KEY, field=IDEMPOTENCY_HEADER) from None


async def create_key(request: web.Request) -> web.Response:
    """POST /api/v1/keys: create a key; the only answer that ever holds its secret.

    With an Idempotency-Key header, a repeat of the same request within
    IDEMPOTENCY_WINDOW creates nothing: 409 `idempotent_replay` names the key (no secret).
    """
    runtime = _runtime(request)
    admin = current_admin(request)
    data = await read_json_object(request, KEY_FIELDS)
    now = clock.now()
    check = _member_check(runtime.policy, now)
    try:
        body = to_builtins(convert(data, KeyCreate))
    except Exception as error:
        raise with_problems(error, data, check, True) from None
    claim = idempotency_claim(request, data, now)
    try:
        new, secret = key_rules.new_key_request(body, runtime.policy, now)
    except Exception as error:
        raise with_problems(error, data, check, True) from None
    key_rules.check_grants(new.roles, grant_set_of(admin))
    try:
        row = await runtime.store.create_key(new, admin.actor, claim)
    except IdempotentReplayError as replay:
        shown = (
            None
            if replay.row is None
            else shown_key(replay.row, now, runtime.policy, grant_set_of(admin))
        )
        message = M_REPLAY if replay.row is not None else M_REPLAY_DELETED
        raise ApiError(409, E_IDEMPOTENT_REPLAY, message, extra={"key": shown}) from None
    except IdempotencyMismatchError as error:
        raise ApiError(422, E_IDEMPOTENCY_REUSED, str(error), field=IDEMPOTENCY_HEADER) from None
    await runtime.apply_own_writes()
    return _json(
        {"key": shown_key(row, now, runtime.policy, grant_set_of(admin)), "secret": secret},
        status=201,
    )


async def list_keys(request: web.Request) -> web.Response:
    """GET /api/v1/keys: one page of keys by id, filtered by status, text, a role held and
    the exact creator (every filter kept across the page cursors).

    A `q` that is a whole, well-formed key finds that key by its digest (a pasted secret is
    looked up, never matched as text).
    """
    runtime = _runtime(request)
    grants = grant_set_of(current_admin(request))
    params = query_params(request, LIST_PARAMS)
    status_text = params.get("status") or None
    status = next((s for s in STATUSES if s == status_text), None)
    if status_text is not None and status is None:
        raise bad_request(M_STATUS, field="status")
    query = parse_text(params, "q")
    digest = None if query is None else keys.digest_if_well_formed(query.strip())
    if digest is not None:
        query = None
    role = parse_text(params, "role")
    created_by = parse_text(params, "created_by")
    unused_days = (
        None
        if params.get("unused_days") is None
        else parse_days(params, "unused_days", 0, USAGE_KEEP_DAYS_LIMIT, kept=False)
    )
    limit = parse_limit(params)
    sort = next((s for s in KEY_SORTS if s == (params.get("sort") or "id")), None)
    if sort is None:
        raise bad_request(M_SORT, field="sort")
    now = clock.now()
    within = runtime.settings.expiry.warn_days * DAY
    unused_before = None if unused_days is None else now - unused_days * DAY
    if sort == "id":
        after_id = decode_cursor(params, KEY_CURSOR) or 0
        rows = await runtime.store.list_keys(
            status=status,
            query=query,
            limit=limit + 1,
            after_id=after_id,
            now=now,
            expiring_within=within,
            digest=digest,
            role=role,
            created_by=created_by,
            unused_before=unused_before,
        )
    else:
        after: SortPosition | None = decode_sort_cursor(params, sort, sort.endswith("name"))
        rows = await runtime.store.list_keys(
            status=status,
            query=query,
            limit=limit + 1,
            now=now,
            sort=sort,
            after=after,
            expiring_within=within,
            digest=digest,
            role=role,
            created_by=created_by,
            unused_before=unused_before,
        )
    page = rows[:limit]
    next_cursor = _next_cursor(sort, page[-1]) if len(rows) > limit else None
    return _json(
        {
            "items": [shown_key(row, now, runtime.policy, grants) for row in page],
            "next_cursor": next_cursor,
        }
    )


def _next_cursor(sort: str, last: KeyRow) -> str:
    """Return the cursor of the page after `last` in a listing sorted by `sort`."""
    if sort == "id":
        return encode_cursor(KEY_CURSOR, last.id)
    value: str | float
    if sort.endswith("name"):
        value = last.name
    elif sort.endswith("created_at"):
        value = last.created_at
    else:
        value = -1 if last.last_used_at is None else last.last_used_at
    return encode_sort_cursor(sort, value, last.id)


async def get_key(request: web.Request) -> web.Response:
    """GET /api/v1/keys/{id}: one key."""
    row = await key_row_of(request)
    grants = grant_set_of(current_admin(request))
    return _json(shown_key(row, clock.now(), _runtime(request).policy, grants))


def key_changes(data: dict[str, Any], policy: Policy, now: float) -> KeyChanges:
    """Validate a PATCH body into a partial edit (null expires_at or rate_limit clears it)."""
    if not data:
        raise bad_request(M_NOTHING_TO_CHANGE)
    expires = data.get("expires_at")
    limit = data.get("rate_limit")
    return KeyChanges(
        name=key_rules.validate_name(data["name"]) if "name" in data else None,
        description=(
            key_rules.validate_description(data["description"]) if "description" in data else None
        ),
        roles=key_rules.validate_roles(data["roles"], policy) if "roles" in data else None,
        expires_at=(
            None if expires is None else key_rules.parse_timestamp(expires, "expires_at", now)
        ),
        clear_expiry="expires_at" in data and expires is None,
        rate_limit=None if limit is None else key_rules.validate_rate_limit(limit),
        clear_rate_limit="rate_limit" in data and limit is None,
    )


def _member_check(policy: Policy, now: float) -> Callable[[dict[str, Any]], KeyChanges]:
    """Return the edit body's validation, which also checks one member of a create alone."""
    return lambda data: key_changes(to_builtins(convert(data, KeyPatch)), policy, now)


async def update_key(request: web.Request) -> web.Response:
    """PATCH /api/v1/keys/{id}: edit name, description, roles or expiry."""
    runtime = _runtime(request)
    admin = current_admin(request)
    key_id = (await key_row_of(request)).id  # 404 before the body is read
    data = await read_json_object(request, fields(KeyPatch))
    now = clock.now()
    check = _member_check(runtime.policy, now)
    try:
        changes = check(data)
    except Exception as error:
        raise with_problems(error, data, check, False) from None
    grants = grant_set_of(admin)
    if changes.roles is not None:
        key_rules.check_grants(changes.roles, grants)
    row = await runtime.store.update_key(key_id, changes, admin.actor, grants)
    await runtime.apply_own_writes()
    return _json(shown_key(row, now, runtime.policy, grants))


async def _set_revoked(request: web.Request, revoked: bool) -> web.Response:
    runtime = _runtime(request)
    admin = current_admin(request)
    key_id = await _key_id(request)  # 404 before the body is read
    await read_no_body(request)
    grants = grant_set_of(admin)
    row = await runtime.store.set_revoked(key_id, revoked, admin.actor, grants)
    await runtime.apply_own_writes()
    return _json(shown_key(row, clock.now(), runtime.policy, grants))


async def revoke_key(request: web.Request) -> web.Response:
    """POST /api/v1/keys/{id}/revoke: revoke a key (it can be reinstated)."""
    return await _set_revoked(request, True)


async def reinstate_key(request: web.Request) -> web.Response:
    """POST /api/v1/keys/{id}/reinstate: reinstate a revoked key."""
    return await _set_revoked(request, False)


async def roll_key(request: web.Request) -> web.Response:
    """POST /api/v1/keys/{id}/roll: a new secret, shown once; the old one works for the overlap."""
    runtime = _runtime(request)
    admin = current_admin(request)
    key_id = await _key_id(request)
    data = await read_json_object(request, ROLL_FIELDS) if request.body_exists else {}
    data = to_builtins(convert(data, KeyRoll))
    overlap = key_rules.validate_overlap(data.get("overlap_seconds"))
    rolled = await key_rules.roll_key(
        runtime.store, key_id, overlap, admin.actor, grant_set_of(admin)
    )
    await runtime.apply_own_writes()
    shown = shown_key(rolled.row, clock.now(), runtime.policy, grant_set_of(admin))
    return _json({"key": shown, "secret": rolled.secret})


async def delete_key(request: web.Request) -> web.Response:
    """DELETE /api/v1/keys/{id}: delete a key for good."""
    runtime = _runtime(request)
    admin = current_admin(request)
    key_id = await _key_id(request)  # 404 before the body is read
    await read_no_body(request)
    await runtime.store.delete_key(key_id, admin.actor, grant_set_of(admin))
    await runtime.apply_own_writes()
    return web.Response(status=204, headers={"Cache-Control": NO_STORE})


def _count(result: BatchResult) -> Count:
    return Count(count=result.changed, skipped=result.skipped)


def _batch_json(
    result: BatchResult, scope: Literal["all", "batch", "chosen"] = "all"
) -> web.Response:
    done = BatchDone(
        count=result.changed, skipped=result.skipped, batch_id=result.batch_id, scope=scope
    )
    return respond(done)


async def batch_counts(request: web.Request) -> web.Response:
    """GET /api/v1/keys/batch-counts: how many keys each batch action would touch for the caller."""
    runtime = _runtime(request)
    counts = await runtime.store.batch_counts(grant_set_of(current_admin(request)))
    return respond(
        BatchCounts(
            revoke_all=_count(counts["revoke_all"]),
            reinstate_all=_count(counts["reinstate_all"]),
            delete_revoked=_count(counts["delete_revoked"]),
            reinstate_last_revoke_all=_count(counts["reinstate_last_revoke_all"]),
        )
    )


async def changes(request: web.Request) -> web.Response:
    """GET /api/v1/changes: the change-feed sequence; it moves whenever any key changes."""
    runtime = _runtime(request)
    holder = runtime.policy_source
    policy = holder.loaded.sha256 if holder is not None else ""
    return respond(Changes(seq=await runtime.store.current_seq(), policy=policy))


async def revoke_all(request: web.Request) -> web.Response:
    """POST /api/v1/keys/revoke-all: revoke every active key within the caller's grants."""
    await read_no_body(request)
    runtime = _runtime(request)
    admin = current_admin(request)
    result = await runtime.store.revoke_all(admin.actor, grant_set_of(admin))
    await runtime.apply_own_writes()
    return _batch_json(result)


async def reinstate_all(request: web.Request) -> web.Response:
    """POST /api/v1/keys/reinstate-all: reinstate revoked keys within the caller's grants.

    No body or `{"scope": "all"}`: every revoked key. `{"scope": "last_revoke_all"}`: only
    those the latest revoke-all revoked; `{"batch": "<batch_id>"}`: those that one revoked.
    """
    data = await read_json_object(request, REINSTATE_FIELDS) if request.body_exists else {}
    body = convert(data, ReinstateAll, {"batch": M_BATCH_ID})
    runtime = _runtime(request)
    admin = current_admin(request)
    of_batch: str | None = None
    if isinstance(body.batch, str):
        if isinstance(body.scope, str) and body.scope != "last_revoke_all":
            raise bad_request(M_BATCH_AND_SCOPE, field="scope")
        of_batch = body.batch
    elif body.scope == "last_revoke_all":
        of_batch = LAST_BATCH
    try:
        result = await runtime.store.reinstate_all(admin.actor, grant_set_of(admin), of_batch)
    except NotFoundError:
        raise not_found(M_NO_BATCH) from None
    await runtime.apply_own_writes()
    return _batch_json(result, "all" if of_batch is None else "batch")


async def batch_keys(request: web.Request) -> web.Response:
    """POST /api/v1/keys/batch: revoke, reinstate or delete chosen keys, all or none.

    At most BATCH_IDS_MAX ids; every key must lie within the caller's grants (else 403 and
    nothing changes); one audit entry per changed key, each with the answer's batch_id.
    """
    data = await read_json_object(request, BATCH_FIELDS)
    body = convert(data, KeyBatch)
    runtime = _runtime(request)
    admin = current_admin(request)
    result = await runtime.store.batch_keys(body.action, body.ids, admin.actor, grant_set_of(admin))
    await runtime.apply_own_writes()
    return _batch_json(result, "chosen")


async def delete_revoked(request: web.Request) -> web.Response:
    """POST /api/v1/keys/delete-revoked: delete every revoked key within the caller's grants."""
    await read_no_body(request)
    runtime = _runtime(request)
    admin = current_admin(request)
    result = await runtime.store.delete_revoked(admin.actor, grant_set_of(admin))
    await runtime.apply_own_writes()
    return _batch_json(result)


async def identify_key(request: web.Request) -> web.Response:
    """POST /api/v1/keys/identify: which key a (leaked) secret belongs to, by its digest."""
    data = await read_json_object(request, IDENTIFY_FIELDS)
    secret = convert(data, Identify).secret  # its shape: the document's pattern, else 400
    if not keys.is_well_formed(secret):  # the checksum, which no pattern can state
        raise ApiError(422, E_INVALID, M_CHECKSUM, field="secret")
    store = _runtime(request).store
    row = await store.get_key_by_digest(keys.digest(secret))
    await key_rules.audit_identify(
        store, current_admin(request).actor, row, {"remote": request.remote or "?"}
    )
    if row is None:
        raise not_found(M_NO_KEY_FOR_SECRET)
    grants = grant_set_of(current_admin(request))
    return _json(shown_key(row, clock.now(), _runtime(request).policy, grants))
