"""Key rules shared by the CLI and the admin API: validation, grant limits, creation, key JSON."""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from gateway.clock import iso
from gateway.keys import keyformat as keys
from gateway.policy.rules import Policy, nearest_hint, parse_rate_limit
from gateway.ratelimit.limiters import PERIOD_SECONDS, RateLimit
from gateway.store.base import AuditEvent, IdempotencyClaim, KeyRow, KeyStore, NewKey

NAME_MAX_LENGTH = 64
# What validate_name accepts, as one JSON Schema (ECMA-262) pattern the models declare:
# printable ASCII, no outer spaces, not all digits (it would look like an id in a path).
# The end of a JSON Schema pattern: "$" is the end of the text in ECMA-262, but Python's re
# (msgspec's and jsonschema's, which check these patterns here) also matches it before a
# final newline; "(?!\n)" after it makes it the end in both.
PATTERN_END = "$(?!\\n)"
NAME_PATTERN = r"^(?![0-9]+$)[!-~](?:[ -~]*[!-~])?" + PATTERN_END
# What validate_description accepts, as a JSON Schema pattern: no C0/C1 controls or DEL but
# tab and newline, no line or paragraph separators.
DESCRIPTION_PATTERN = "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"
M_DESCRIPTION = "description must not contain control characters"
M_ROLES = "roles must be a non-empty list of role names"
M_OVERLAP = f"must be a whole number of seconds, 0-{30 * 86_400} (30 days)"
M_NAME = (
    f"name must be 1-{NAME_MAX_LENGTH} printable ASCII characters, not all digits, "
    "without spaces at either end"
)
DESCRIPTION_MAX_LENGTH = 1000
M_DESCRIPTION_LENGTH = f"description must be at most {DESCRIPTION_MAX_LENGTH} characters"
ROLES_MAX = 64

# Seconds a rolled key's old secret keeps working unless told otherwise (a day: a deploy
# window), and at most (30 days: longer is a second key, not an overlap).
ROLL_OVERLAP_DEFAULT = 86_400
ROLL_OVERLAP_MAX = 30 * 86_400
# Seconds in the units of a relative expiry text (expires_in_text).
MINUTE, HOUR, DAY = 60, 3_600, 86_400

# The audit action of a look-up of a key by its secret (`keys identify`, the admin API).
AUDIT_IDENTIFY = "identify"

# An idempotency key (the API's Idempotency-Key, the CLI's --idempotency-key): 1 to
# IDEMPOTENCY_KEY_MAX visible ASCII characters, remembered IDEMPOTENCY_WINDOW seconds (24 h)
# after its create; then it is new again.
IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_FIRST, IDEMPOTENCY_LAST = "!", "~"
IDEMPOTENCY_KEY_PATTERN = (
    f"^[{IDEMPOTENCY_FIRST}-{IDEMPOTENCY_LAST}]+{PATTERN_END}"  # JSON Schema's
)
IDEMPOTENCY_WINDOW = 86_400

E_INVALID = "invalid_request"
E_UNKNOWN_ROLE = "unknown_role"
E_GRANT_FORBIDDEN = "grant_forbidden"
M_IDEMPOTENCY_KEY = f"must be 1-{IDEMPOTENCY_KEY_MAX} visible ASCII characters"
# What a create repeated under its idempotency key ({field}: the API's header, the CLI's
# option) is told: nothing created, and the secret is not shown again.
M_REPLAY = (
    "this {field} already created the key below; nothing was created now. Its secret "
    "was shown once, to that request, and cannot be shown again: roll the key for a new one"
)
M_REPLAY_DELETED = "this {field} already created a key, since deleted; nothing was created now"


class GrantError(Exception):
    """An administrator tried to give a key roles outside their grant set (403, its answer)."""

    status: ClassVar[int] = 403  # the HTTP status hint, as h11's error_status_hint
    code: ClassVar[str] = E_GRANT_FORBIDDEN
    field: ClassVar[str] = "roles"

    def __init__(self, roles: Iterable[str]) -> None:
        self.roles = tuple(sorted(roles))
        self.message = f"you may not grant role(s): {', '.join(self.roles)}"
        super().__init__(self.message)


class InputError(Exception):
    """Hostile or wrong input, answered 4xx naming the field (422 for an unknown role)."""

    def __init__(self, message: str, field: str | None = None, code: str = E_INVALID) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code

    @property
    def status(self) -> int:
        """The HTTP status hint: 422 for a well-formed but unknown role, else 400."""
        return 422 if self.code == E_UNKNOWN_ROLE else 400


def validate_name(value: Any) -> str:
    """Return a key name that is 1-64 printable ASCII characters, safe in a header value."""
    if not isinstance(value, str):
        raise InputError("name must be a string", "name")
    if not 1 <= len(value) <= NAME_MAX_LENGTH:
        raise InputError(f"name must be 1-{NAME_MAX_LENGTH} characters", "name")
    if any(not (" " <= c <= "~") for c in value):
        raise InputError(
            "name may contain only printable ASCII characters (no control characters)", "name"
        )
    if value != value.strip():
        raise InputError("name must not start or end with spaces", "name")
    if value.isdigit():
        raise InputError("name must not be all digits (it would look like an id)", "name")
    return value


def validate_description(value: Any) -> str:
    """Return a description of at most 1,000 characters without control characters."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError("description must be a string", "description")
    if len(value) > DESCRIPTION_MAX_LENGTH:
        raise InputError(M_DESCRIPTION_LENGTH, "description")
    # Cc covers C0, DEL and C1; Zl/Zp are line/paragraph separators that split log lines.
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") and c not in "\t\n" for c in value):
        raise InputError(M_DESCRIPTION, "description")
    return value


def validate_roles(value: Any, policy: Policy) -> tuple[str, ...]:
    """Return de-duplicated, sorted roles; every role must be defined in the policy."""
    if not isinstance(value, list | tuple) or not value:
        raise InputError(M_ROLES, "roles")
    if len(value) > ROLES_MAX:
        raise InputError(f"at most {ROLES_MAX} roles", "roles")
    if not all(isinstance(role, str) for role in value):
        raise InputError("roles must be strings", "roles")
    unknown = sorted({role for role in value if role not in policy.roles})
    if unknown:
        hints = "".join(nearest_hint(role, policy.roles) for role in unknown[:1])
        raise InputError(
            f"unknown role(s): {', '.join(unknown)}{hints}", "roles", code=E_UNKNOWN_ROLE
        )
    return tuple(sorted(set(value)))


def parse_timestamp(value: Any, field: str, now: float) -> float:
    """Parse an ISO-8601 timestamp with a zone that lies in the future into unix seconds."""
    if not isinstance(value, str):
        raise InputError(f"{field} must be an ISO-8601 string with a time zone", field)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as error:
        raise InputError(f"{field} is not ISO-8601: {value!r}", field) from error
    if moment.tzinfo is None:
        raise InputError(f"{field} must include a time zone (e.g. 2027-01-01T00:00:00Z)", field)
    try:
        moment.astimezone(UTC)  # iso() must be able to show it again (year <= 9999 in UTC)
    except OverflowError as error:
        raise InputError(f"{field} is out of range: {value!r}", field) from error
    stamp = moment.timestamp()
    if stamp <= now:
        raise InputError(f"{field} must be in the future", field)
    return stamp


def status_of(row: KeyRow, now: float) -> str:
    """Return `active`, `revoked` or `expired` as the admin API shows it."""
    if row.status == "revoked":
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def days_left(row: KeyRow, now: float, within: float) -> int | None:
    """Return whole days (rounded up) until an active key expiring within `within` s expires."""
    if row.status != "active" or row.expires_at is None:
        return None
    left = row.expires_at - now
    if not 0 < left <= within:
        return None
    return math.ceil(left / 86_400)


def expires_in_text(seconds: float) -> str:
    """Return "in 34 s", "in 5 min", "in 3 h", "in 2 days": whole units rounded down.

    The page's app.js (format.js, expiresInText) follows the same rule; both are tested
    against one table.
    """
    whole = max(1, math.floor(seconds))
    if whole < MINUTE:
        return f"in {whole} s"
    if whole < HOUR:
        return f"in {whole // MINUTE} min"
    if whole < DAY:
        return f"in {whole // HOUR} h"
    days = whole // DAY
    return f"in {days} {'day' if days == 1 else 'days'}"


def key_json(row: KeyRow, now: float, policy: Policy | None = None) -> dict[str, Any]:
    """Return the key JSON of the admin API for a stored key (never the secret or its digest).

    With the policy in force, `unknown_roles` lists the key's roles it no longer defines:
    they grant nothing.
    """
    shown = {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "roles": list(row.roles),
        "status": status_of(row, now),
        "prefix": row.prefix,
        "created_at": iso(row.created_at),
        "created_by": row.created_by,
        "updated_at": iso(row.updated_at),
        "revoked_at": iso(row.revoked_at),
        "expires_at": iso(row.expires_at),
        "last_used_at": iso(row.last_used_at),
        "use_count": row.use_count,
        "rolled_at": iso(row.rolled_at),
        "previous_expires_at": iso(row.previous_expires_at),
        "rate_limit": rate_limit_json(row.rate_limit),
    }
    if policy is not None:
        shown["unknown_roles"] = [role for role in row.roles if role not in policy.roles]
    return shown


def rate_limit_json(limit: RateLimit | None) -> dict[str, Any] | None:
    """Return a key's own rate limit as the admin API shows it, or None."""
    if limit is None:
        return None
    return {"requests": limit.requests, "per": limit.per, "burst": limit.burst}


def validate_rate_limit(value: Any) -> RateLimit:
    """Return a key's rate limit from `{requests, per: second|minute|hour, burst}`."""
    problems: list[str] = []
    limit = parse_rate_limit(value, "rate_limit", problems)
    if limit is None or problems:
        raise InputError("; ".join(problems) or "rate_limit is not valid", "rate_limit")
    return limit


def parse_rate_limit_text(text: str) -> RateLimit:
    """Parse the CLI's `REQUESTS/PER[,burst=N]` (e.g. `100/minute,burst=20`)."""
    head, _, rest = text.partition(",")
    requests, slash, per = head.strip().partition("/")
    data: dict[str, Any] = {"requests": _int_or_text(requests), "per": per.strip()}
    if not slash or per.strip() not in PERIOD_SECONDS:
        raise InputError(
            f"rate limit {text!r}: write REQUESTS/second|minute|hour[,burst=N]", "rate_limit"
        )
    if rest:
        name, equals, value = rest.partition("=")
        if name.strip() != "burst" or not equals:
            raise InputError(f"rate limit {text!r}: only burst=N may follow", "rate_limit")
        data["burst"] = _int_or_text(value)
    return validate_rate_limit(data)


def _int_or_text(text: str) -> int | str:
    """Return `text` as an int when it is one (validation reports it otherwise)."""
    stripped = text.strip()
    return int(stripped) if stripped.isdigit() else stripped


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A freshly created key and its secret, which exists only in this object."""

    row: KeyRow
    secret: str


def check_grants(roles: Iterable[str], grants: frozenset[str] | None) -> None:
    """Refuse roles outside an administrator's grant set (None means may grant all)."""
    if grants is None:
        return
    outside = set(roles) - grants
    if outside:
        raise GrantError(outside)


def idempotency_claim(
    value: str, data: Mapping[str, Any], now: float, field: str
) -> IdempotencyClaim:
    """Return a create's idempotency claim for key `value` (named `field` in errors).

    The fingerprint is the SHA-256 of the request as parsed (member order and spacing aside).
    """
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_MAX or not all(
        IDEMPOTENCY_FIRST <= char <= IDEMPOTENCY_LAST for char in value
    ):
        raise InputError(f"{field} {M_IDEMPOTENCY_KEY}", field)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    fingerprint = hashlib.sha256(canonical.encode()).hexdigest()
    return IdempotencyClaim(value, fingerprint, now - IDEMPOTENCY_WINDOW)


def new_key_request(data: Mapping[str, Any], policy: Policy, now: float) -> tuple[NewKey, str]:
    """Validate a create request and mint a key; return the store record and the secret."""
    name = validate_name(data.get("name"))
    description = validate_description(data.get("description"))
    roles = validate_roles(data.get("roles"), policy)
    expires = data.get("expires_at")
    expires_at = None if expires is None else parse_timestamp(expires, "expires_at", now)
    limit = data.get("rate_limit")
    rate_limit = None if limit is None else validate_rate_limit(limit)
    secret = keys.generate_key()
    new = NewKey(
        name=name,
        description=description,
        roles=roles,
        digest=keys.digest(secret),
        prefix=keys.display_prefix(secret),
        expires_at=expires_at,
        rate_limit=rate_limit,
    )
    return new, secret


async def create_key(
    store: KeyStore,
    data: Mapping[str, Any],
    policy: Policy,
    actor: str,
    now: float,
    claim: IdempotencyClaim | None = None,
) -> CreatedKey:
    """Validate, mint and store a key; the secret is returned once and never stored.

    With a `claim`, a repeat raises IdempotentReplayError or IdempotencyMismatchError (the
    store's), creating nothing.
    """
    new, secret = new_key_request(data, policy, now)
    row = await store.create_key(new, actor, claim)
    return CreatedKey(row, secret)


def validate_overlap(value: Any) -> int:
    """Return a roll's overlap: whole seconds from 0 to ROLL_OVERLAP_MAX (None: the default)."""
    if value is None:
        return ROLL_OVERLAP_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError("overlap_seconds must be a whole number of seconds", "overlap_seconds")
    if not 0 <= value <= ROLL_OVERLAP_MAX:
        raise InputError(
            f"overlap_seconds must be 0-{ROLL_OVERLAP_MAX} (30 days)", "overlap_seconds"
        )
    return value


async def roll_key(
    store: KeyStore, key_id: int, overlap: int, actor: str, grants: frozenset[str] | None = None
) -> CreatedKey:
    """Give a key a new secret (returned once, never stored); the old one works `overlap` s."""
    secret = keys.generate_key()
    row = await store.roll_key(
        key_id, keys.digest(secret), keys.display_prefix(secret), overlap, actor, grants
    )
    return CreatedKey(row, secret)


async def audit_identify(
    store: KeyStore, actor: str, row: KeyRow | None, details: Mapping[str, Any]
) -> None:
    """Audit a look-up of a key by its secret: who asked and which key (never the secret)."""
    await store.append_audit(
        actor=actor,
        action=AUDIT_IDENTIFY,
        key_id=None if row is None else row.id,
        key_name=None if row is None else row.name,
        details={"found": row is not None, **details},
    )


def audit_json(event: AuditEvent) -> dict[str, Any]:
    """Return an audit event as the admin API and `keygate audit --json` show it."""
    return {
        "id": event.id,
        "at": iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "key_id": event.key_id,
        "key_name": event.key_name,
        "details": dict(event.details),
    }
