"""Helpers both store backends share: JSON columns, grant checks, audit actions (no I/O)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import math
import string
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from gateway.clock import iso
from gateway.ratelimit.limiters import RateLimit
from gateway.store.base import (
    AbandonedEvent,
    AdminAccount,
    AdminSession,
    AuditEvent,
    AuthRow,
    BatchResult,
    Grants,
    KeyChanges,
    KeyExpiredError,
    KeyFilter,
    KeyRow,
    NewKey,
    OutsideGrantsError,
    ReceiverState,
)

# Distinct roles JSON strings remembered for interning before the memo starts over.
ROLES_MEMO_MAX = 10_000
# Rows per round trip when loading every key.
LOAD_CHUNK = 20_000

# Audit actions written by the stores (the admin API records others via append_audit).
ACTION_CREATE = "create"
ACTION_EDIT = "edit"
ACTION_REVOKE = "revoke"
ACTION_REINSTATE = "reinstate"
ACTION_DELETE = "delete"
ACTION_REVOKE_ALL = "revoke_all"
ACTION_REINSTATE_ALL = "reinstate_all"
ACTION_DELETE_REVOKED = "delete_revoked"
ACTION_ROLL = "roll"
ACTION_ADMIN_ADD = "admin_add"
ACTION_ADMIN_PASSWD = "admin_passwd"
ACTION_ADMIN_GRANTS = "admin_grants"
ACTION_ADMIN_REMOVE = "admin_remove"
ACTION_EXPIRING = "expiring"  # an expiry notice was claimed (written with the claim)
EXPIRY_ACTOR = "keygate"  # the actor of expiry notices
DAY = 86_400  # seconds

# The message of an idempotency key reused with another request.
M_IDEMPOTENCY_MISMATCH = "this Idempotency-Key was already used with a different request body"

# KeyRow's fields in declaration order; every key SELECT returns exactly these columns.
KEY_FIELDS = (
    "id",
    "name",
    "description",
    "roles",
    "status",
    "digest",
    "prefix",
    "created_at",
    "created_by",
    "updated_at",
    "revoked_at",
    "expires_at",
    "last_used_at",
    "use_count",
    "previous_digest",
    "previous_expires_at",
    "rolled_at",
    "rate_limit",
)
KEY_COLUMNS = ", ".join(KEY_FIELDS)
KEY_COLUMNS_K = ", ".join(f"k.{name}" for name in KEY_FIELDS)
ROLES_INDEX = KEY_FIELDS.index("roles")
RATE_LIMIT_INDEX = KEY_FIELDS.index("rate_limit")
# The columns of the lean auth rows (AuthRow) the key table loads.
AUTH_COLUMNS = (
    "digest, id, name, roles, status, expires_at, previous_digest, previous_expires_at, rate_limit"
)
ADMIN_COLUMNS = "name, password_hash, grants, grant_all, created_at, updated_at"
AUDIT_COLUMNS = "id, at, actor, action, key_id, key_name, details"
RECEIVER_COLUMNS = (
    "receiver, cursor_id, attempts, first_attempt, next_attempt, last_error, owner, lease_until"
)
ABANDONED_COLUMNS = "receiver, audit_id, type, attempts, first_attempt, abandoned_at, last_error"
SESSION_COLUMNS = (
    "token_hash, admin, stamp, created_at, last_seen, source, subject, display_name, sealed,"
    " expires_at"
)


class Params:
    """Collects a statement's parameters as it is assembled; add() returns the placeholder.

    `numbered` gives PostgreSQL's $1, $2, ...; otherwise SQLite's positional ?.
    """

    def __init__(self, *initial: Any, numbered: bool) -> None:
        self.values: list[Any] = list(initial)
        self._numbered = numbered

    def add(self, value: Any) -> str:
        """Append a value and return its placeholder."""
        self.values.append(value)
        return f"${len(self.values)}" if self._numbered else "?"


def status_condition(
    status: KeyFilter | None, moment: float, expiring_within: float, params: Params
) -> str | None:
    """Return the key-list condition of a status filter (None for no filter).

    "active" excludes expired keys, "expired" is active with expires_at <= now, "expiring"
    is active and expires within `expiring_within` seconds of now.
    """
    if status is None:
        return None
    if status == "active":
        mark = params.add(moment)
        return f"status = 'active' AND (expires_at IS NULL OR expires_at > {mark})"
    if status == "revoked":
        return "status = 'revoked'"
    if status == "expired":
        return f"status = 'active' AND expires_at <= {params.add(moment)}"
    if status == "expiring":
        start, end = params.add(moment), params.add(moment + expiring_within)
        return f"status = 'active' AND expires_at > {start} AND expires_at <= {end}"
    raise ValueError(f"unknown status filter {status!r}")


def unused_condition(moment: float, unused_before: float, params: Params) -> str:
    """Return the condition of an unused key: active (not expired at `moment`) and last used
    before `unused_before`, or never used and created before it."""
    now_mark, before_mark = params.add(moment), params.add(unused_before)
    return (
        f"status = 'active' AND (expires_at IS NULL OR expires_at > {now_mark})"
        f" AND COALESCE(last_used_at, created_at) < {before_mark}"
    )


def audit_text_condition(text: str, params: Params, fold: str = "{}") -> str:
    """Return the condition "`text` is a substring of the key name, the actor or the details
    as the administrator reads them", ASCII letters folded (`fold`: the dialect's), no
    wildcards.

    Details are stored as JSON with non-ASCII characters, quotes and backslashes escaped
    (details_json), so they are searched for the text escaped the same way: "Zürich" finds
    `Z\\u00fcrich`, while a typed `\\u00fc` finds only a literal backslash-u. A text with a
    quote is also searched with its quotes unescaped, so `"50%"` still finds the JSON value.
    """
    searched = [
        ("key_name", text),
        ("actor", text),
        ("details", json_string_text(text)),
    ]
    if '"' in text:
        searched.append(("details", '"'.join(map(json_string_text, text.split('"')))))
    matches = [
        f"{fold.format(column)} LIKE "
        f"{params.add(like_pattern(value).translate(ASCII_LOWER_TABLE))} ESCAPE '\\'"
        for column, value in searched
    ]
    return f"({' OR '.join(matches)})"


def audit_conditions(
    params: Params,
    *,
    key_id: int | None,
    key_name: str | None,
    actor: str | None,
    since: float | None,
    before_id: int | None,
    actions: Sequence[str] | None = None,
    until: float | None = None,
    text: str | None = None,
    fold: str = "{}",
) -> str:
    """Return the WHERE clause (or "") of an audit listing's filters; since and until are
    inclusive.

    By key id: the key's own entries (whatever its name was) and every batch that touched
    it (audit_keys). `actions`: any of them; `text`: see audit_text_condition.
    """
    where = []
    if actions is not None:
        where.append(f"action IN ({', '.join(params.add(a) for a in actions) or 'NULL'})")
    if until is not None:
        where.append(f"at <= {params.add(until)}")
    if text:
        where.append(audit_text_condition(text, params, fold))
    if key_id is not None:
        own, batched = params.add(key_id), params.add(key_id)
        where.append(
            f"(key_id = {own} OR id IN (SELECT audit_id FROM audit_keys WHERE key_id = {batched}))"
        )
    where += [
        f"{clause} {params.add(value)}"
        for clause, value in (
            ("key_name =", key_name),
            ("actor =", actor),
            ("at >=", since),
            ("id <", before_id),
        )
        if value is not None
    ]
    return f"WHERE {' AND '.join(where)}" if where else ""


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (restored only if it was on)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def key_values(row: KeyRow) -> tuple[Any, ...]:
    """Return a KeyRow as the values of KEY_COLUMNS, as stored (roles as JSON text)."""
    values = [getattr(row, name) for name in KEY_FIELDS]
    values[ROLES_INDEX] = roles_json(row.roles)
    values[RATE_LIMIT_INDEX] = rate_limit_json(row.rate_limit)
    return tuple(values)


def key_row(values: Sequence[Any]) -> KeyRow:
    """Build a KeyRow from the values of KEY_COLUMNS (roles and rate limit decoded)."""
    fields = list(values)
    fields[ROLES_INDEX] = roles_of(fields[ROLES_INDEX])
    fields[RATE_LIMIT_INDEX] = rate_limit_of(fields[RATE_LIMIT_INDEX])
    return KeyRow(*fields)


def admin_account(row: Sequence[Any]) -> AdminAccount:
    """Build an AdminAccount from a row of ADMIN_COLUMNS."""
    return AdminAccount(
        name=row[0],
        password_hash=row[1],
        grants=tuple(json.loads(row[2])),
        grant_all=bool(row[3]),
        created_at=row[4],
        updated_at=row[5],
    )


def admin_values(account: AdminAccount) -> tuple[Any, ...]:
    """Return an admin account as the values of ADMIN_COLUMNS, as stored (grants as JSON)."""
    return (
        account.name,
        account.password_hash,
        roles_json(account.grants),
        account.grant_all,
        account.created_at,
        account.updated_at,
    )


def audit_event(row: Sequence[Any]) -> AuditEvent:
    """Build an AuditEvent from a row of AUDIT_COLUMNS."""
    return AuditEvent(
        id=row[0],
        at=row[1],
        actor=row[2],
        action=row[3],
        key_id=row[4],
        key_name=row[5],
        details=json.loads(row[6]),
    )


def expiry_details(threshold: int, expires_at: float, at: float) -> dict[str, Any]:
    """Return the audit details of an expiry notice: the threshold crossed, days left."""
    return {
        "expires_at": iso(expires_at),
        "days_left": math.ceil((expires_at - at) / DAY),
        "threshold_days": threshold,
    }


def receiver_state(row: Sequence[Any]) -> ReceiverState:
    """Build a ReceiverState from a row of RECEIVER_COLUMNS."""
    return ReceiverState(str(row[0]), int(row[1]), int(row[2]), *row[3:])


def receiver_values(state: ReceiverState) -> tuple[Any, ...]:
    """Return the values of RECEIVER_COLUMNS after `receiver`, then the receiver."""
    return (
        state.cursor,
        state.attempts,
        state.first_attempt,
        state.next_attempt,
        state.last_error,
        state.receiver,
    )


def abandoned_event(row: Sequence[Any]) -> AbandonedEvent:
    """Build an AbandonedEvent from a row of ABANDONED_COLUMNS."""
    return AbandonedEvent(str(row[0]), int(row[1]), str(row[2]), int(row[3]), *row[4:])


def abandoned_values(event: AbandonedEvent) -> tuple[Any, ...]:
    """Return an abandoned event as the values of ABANDONED_COLUMNS."""
    return dataclasses.astuple(event)


def audit_values(event: AuditEvent) -> tuple[Any, ...]:
    """Return an audit event as the values of AUDIT_COLUMNS, as stored (details as JSON)."""
    return (
        event.id,
        event.at,
        event.actor,
        event.action,
        event.key_id,
        event.key_name,
        details_json(event.details),
    )


def session_of(row: Sequence[Any]) -> AdminSession:
    """Build an AdminSession from a row of SESSION_COLUMNS."""
    return AdminSession(
        bytes(row[0]),
        str(row[1]),
        str(row[2]),
        float(row[3]),
        float(row[4]),
        source=None if row[5] is None else str(row[5]),
        subject=None if row[6] is None else str(row[6]),
        display_name=None if row[7] is None else str(row[7]),
        sealed=None if row[8] is None else bytes(row[8]),
        expires_at=None if row[9] is None else float(row[9]),
    )


def create_details(new: NewKey) -> dict[str, Any]:
    """Return the audit details of a key's creation (roles, expiry, its own rate limit)."""
    details: dict[str, Any] = {"roles": list(new.roles), "expires_at": iso(new.expires_at)}
    if new.rate_limit is not None:
        details["rate_limit"] = jsonable("rate_limit", new.rate_limit)
    return details


def created_row(key_id: int, new: NewKey, roles_text: str, actor: str, now: float) -> KeyRow:
    """Return the row of a key just inserted from `new` (roles stored as `roles_text`)."""
    return KeyRow(
        id=key_id,
        name=new.name,
        description=new.description,
        roles=roles_of(roles_text),
        status="active",
        digest=new.digest,
        prefix=new.prefix,
        created_at=now,
        created_by=actor,
        updated_at=now,
        revoked_at=None,
        expires_at=new.expires_at,
        last_used_at=None,
        use_count=0,
        rate_limit=new.rate_limit,
    )


def check_reinstatable(row: KeyRow, now: float) -> None:
    """Raise KeyExpiredError when the key has expired (it needs a new expiry first)."""
    if row.expires_at is not None and row.expires_at <= now:
        raise KeyExpiredError(
            f"key {row.name!r} expired at {iso(row.expires_at)}; "
            "give it a new expires_at before reinstating it"
        )


def edit_details(current: KeyRow, edits: dict[str, Any]) -> dict[str, Any]:
    """Return the audit details of an edit: each changed field before and after."""
    return {
        "before": {field: jsonable(field, getattr(current, field)) for field in edits},
        "after": {field: jsonable(field, value) for field, value in edits.items()},
    }


def edited_row(
    current: KeyRow, edits: dict[str, Any], columns: dict[str, Any], now: float
) -> KeyRow:
    """Return the key after `edits` (stored as `columns`), its role tuple the shared one."""
    fields = dict(edits)
    if "roles" in columns:
        fields["roles"] = roles_of(columns["roles"])
    return dataclasses.replace(current, **fields, updated_at=now)


def roll_details(overlap: float, until: float, prefix: str) -> dict[str, Any]:
    """Return the audit details of a roll (never the digests)."""
    return {"overlap_seconds": overlap, "previous_expires_at": iso(until), "prefix": prefix}


def rolled_row(current: KeyRow, digest: bytes, prefix: str, until: float, now: float) -> KeyRow:
    """Return the key after a roll to `digest`; the replaced secret works until `until`."""
    return dataclasses.replace(
        current,
        digest=digest,
        prefix=prefix,
        previous_digest=current.digest,
        previous_expires_at=until,
        rolled_at=now,
        updated_at=now,
    )


def digests_of(row: KeyRow) -> list[tuple[int, bytes]]:
    """Return the feed entries (id, digest) of every secret a key answers to."""
    entries = [(row.id, row.digest)]
    if row.previous_digest is not None:
        entries.append((row.id, row.previous_digest))
    return entries


def batch_counts_of(found: dict[str, tuple[int, int]]) -> dict[str, BatchResult]:
    """Return what each batch action would do from (total, within grants) counts by status."""
    active_total, active_inside = found.get("active", (0, 0))
    revoked_total, revoked_inside = found.get("revoked", (0, 0))
    revoked = BatchResult(revoked_inside, revoked_total - revoked_inside)
    return {
        "revoke_all": BatchResult(active_inside, active_total - active_inside),
        "reinstate_all": revoked,
        "delete_revoked": revoked,
    }


def batch_details(result: BatchResult, key_ids: list[int]) -> dict[str, Any]:
    """Return the audit details of a batch action: its id, counts and the ids it changed."""
    return {
        "batch_id": uuid.uuid4().hex,
        "count": result.changed,
        "skipped": result.skipped,
        "key_ids": key_ids,
    }


def grants_details(
    current: AdminAccount, grants: tuple[str, ...], grant_all: bool
) -> dict[str, Any]:
    """Return the audit details of an admin's grant change, before and after."""
    return {
        "admin": current.name,
        "before": {"grants": list(current.grants), "grant_all": current.grant_all},
        "after": {"grants": list(grants), "grant_all": grant_all},
    }


def wanted_edits(current: KeyRow, changes: KeyChanges) -> dict[str, Any]:
    """Return the fields a partial edit changes (equal values are not changes)."""
    if changes.clear_expiry and changes.expires_at is not None:
        raise ValueError("give expires_at or clear_expiry, not both")
    if changes.clear_rate_limit and changes.rate_limit is not None:
        raise ValueError("give rate_limit or clear_rate_limit, not both")
    wanted: dict[str, Any] = {}
    if changes.name is not None:
        wanted["name"] = changes.name
    if changes.description is not None:
        wanted["description"] = changes.description
    if changes.roles is not None:
        wanted["roles"] = tuple(changes.roles)
    if changes.clear_expiry:
        wanted["expires_at"] = None
    elif changes.expires_at is not None:
        wanted["expires_at"] = changes.expires_at
    if changes.clear_rate_limit:
        wanted["rate_limit"] = None
    elif changes.rate_limit is not None:
        wanted["rate_limit"] = changes.rate_limit
    return {field: value for field, value in wanted.items() if getattr(current, field) != value}


def column_values(edits: dict[str, Any]) -> dict[str, Any]:
    """Return edited fields as stored (roles and rate limit as JSON text)."""
    columns = dict(edits)
    if "roles" in columns:
        columns["roles"] = roles_json(columns["roles"])
    if "rate_limit" in columns:
        columns["rate_limit"] = rate_limit_json(columns["rate_limit"])
    return columns


def rate_limit_json(limit: RateLimit | None) -> str | None:
    """Encode a key's rate limit as its JSON column (None stays NULL)."""
    if limit is None:
        return None
    return json.dumps(
        {"requests": limit.requests, "per": limit.per, "burst": limit.burst},
        separators=(",", ":"),
    )


@functools.lru_cache(maxsize=ROLES_MEMO_MAX)
def rate_limit_of(text: str | None) -> RateLimit | None:
    """Decode a rate-limit column; one shared RateLimit per distinct text."""
    if text is None:
        return None
    data = json.loads(text)
    return RateLimit(int(data["requests"]), data["per"], int(data["burst"]))


def auth_rows(rows: Iterable[Sequence[Any]]) -> list[AuthRow]:
    """Turn rows of AUTH_COLUMNS into AuthRows (role tuples shared)."""
    return [
        (
            digest,
            key_id,
            name,
            roles_of(roles),
            status,
            expires_at,
            previous,
            until,
            None if limit is None else rate_limit_of(limit),
        )
        for digest, key_id, name, roles, status, expires_at, previous, until, limit in rows
    ]


def roles_json(roles: Iterable[str]) -> str:
    """Encode a role tuple as the compact JSON array stored in the roles column."""
    return json.dumps(list(roles), separators=(",", ":"))


def details_json(details: dict[str, Any] | None) -> str:
    """Encode audit details as compact JSON."""
    return json.dumps(details or {}, separators=(",", ":"), sort_keys=True)


# Folds ASCII letters only, as SQLite's LIKE and NOCASE do.
ASCII_LOWER_TABLE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def json_string_text(text: str) -> str:
    """Return `text` as details_json writes it inside a JSON string (quotes not included)."""
    return json.dumps(text)[1:-1]


def like_pattern(query: str) -> str:
    """Return a LIKE pattern (escape character backslash) matching `query` as a substring."""
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def outside(row: KeyRow, grants: Grants) -> tuple[str, ...]:
    """Return the key's roles outside `grants` (none when grants is None: every role)."""
    if grants is None:
        return ()
    return tuple(sorted(set(row.roles) - grants))


def check_grants(row: KeyRow, grants: Grants) -> None:
    """Raise OutsideGrantsError unless every role of the key lies within `grants`."""
    beyond = outside(row, grants)
    if beyond:
        raise OutsideGrantsError(row.name, beyond)


@functools.lru_cache(maxsize=ROLES_MEMO_MAX)
def roles_of(text: str) -> tuple[str, ...]:
    """Return the role tuple of a roles JSON column; one shared tuple per distinct text."""
    return tuple(str(role) for role in json.loads(text))


def jsonable(field: str, value: Any) -> Any:
    """Return a key field as audit JSON wants it (tuples become lists, times ISO-8601)."""
    if field.endswith("_at"):
        return iso(value)
    if isinstance(value, RateLimit):
        return {"requests": value.requests, "per": value.per, "burst": value.burst}
    return list(value) if isinstance(value, tuple) else value
