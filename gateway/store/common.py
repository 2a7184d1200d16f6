"""Helpers both store backends share: JSON columns, grant checks, audit actions (no I/O)."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from gateway.clock import iso
from gateway.store.base import AuthRow, Grants, KeyRow, OutsideGrantsError

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
)
KEY_COLUMNS = ", ".join(KEY_FIELDS)
KEY_COLUMNS_K = ", ".join(f"k.{name}" for name in KEY_FIELDS)
ROLES_INDEX = KEY_FIELDS.index("roles")
# The columns of the lean auth rows (AuthRow) the key table loads.
AUTH_COLUMNS = "digest, id, name, roles, status, expires_at, previous_digest, previous_expires_at"
ADMIN_COLUMNS = "name, password_hash, grants, grant_all, created_at, updated_at"
AUDIT_COLUMNS = "id, at, actor, action, key_id, key_name, details"


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
    return tuple(values)


def auth_rows(rows: Iterable[Sequence[Any]]) -> list[AuthRow]:
    """Turn rows of AUTH_COLUMNS into AuthRows (role tuples shared)."""
    return [
        (digest, key_id, name, roles_of(roles), status, expires_at, previous, previous_until)
        for digest, key_id, name, roles, status, expires_at, previous, previous_until in rows
    ]


def roles_json(roles: Iterable[str]) -> str:
    """Encode a role tuple as the compact JSON array stored in the roles column."""
    return json.dumps(list(roles), separators=(",", ":"))


def details_json(details: dict[str, Any] | None) -> str:
    """Encode audit details as compact JSON."""
    return json.dumps(details or {}, separators=(",", ":"), sort_keys=True)


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
    return list(value) if isinstance(value, tuple) else value
