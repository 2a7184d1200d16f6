"""Admin API request and answer bodies as typed models: validation, errors, answers, schemas.

The strict JSON front end (parsing.parse_json_object: duplicate members, NaN, lone
surrogates, unknown members) runs first; `convert` then checks a parsed body against its
model and names the failing field's location. What JSON Schema cannot say (roles the policy
defines, expiry in the future, grants) stays in gateway/keys/rules.py, run after the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, Struct, UnsetType

from gateway.admin.errors import NO_STORE, bad_request
from gateway.admin.parsing import MAX_EXPLAIN_TARGET, MAX_ID
from gateway.admin.sessions import CSRF_HEADER
from gateway.keys.keyformat import CHECKSUM_LENGTH, KEY_PREFIX, RANDOM_LENGTH
from gateway.keys.rules import (
    DESCRIPTION_MAX_LENGTH,
    DESCRIPTION_PATTERN,
    M_DESCRIPTION,
    M_DESCRIPTION_LENGTH,
    M_NAME,
    M_OVERLAP,
    M_ROLES,
    NAME_MAX_LENGTH,
    NAME_PATTERN,
    PATTERN_END,
    ROLES_MAX,
    ROLL_OVERLAP_DEFAULT,
    ROLL_OVERLAP_MAX,
)
from gateway.policy.rules import (
    KNOWN_METHODS,
    M_RATE_LIMIT_NUMBER,
    M_RATE_LIMIT_PER,
    RATE_LIMIT_MAX,
)
from gateway.ratelimit.limiters import Period

T = TypeVar("T", bound=Struct)

# A keygate secret's shape: prefix, base62 body and checksum (what the pattern cannot say,
# that the checksum matches, keyformat checks).
SECRET_LENGTH = len(KEY_PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH  # characters of a whole key
SECRET_PATTERN = f"^{KEY_PREFIX}[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}{PATTERN_END}"
M_SECRET = "secret must be a whole keygate API key (kg_..., with its checksum)"
MAX_CREDENTIAL_LENGTH = 1024  # characters of a name or password typed into the sign-in form
SIGN_IN_WORDS = {
    "name": "name must be a non-empty string",
    "password": "password must be a non-empty string",
    "method": "method must be local or backend (the ways in that take a name and password)",
}
# The explain request's method: a known method in any case (the handler upper-cases it).
_METHODS = "|".join(
    "".join(f"[{c}{c.lower()}]" for c in method) for method in sorted(KNOWN_METHODS)
)
METHOD_PATTERN = f"^(?:{_METHODS}){PATTERN_END}"
# Friendlier messages than "Expected `str` matching regex '...'" (or of a length), by field.
_MESSAGES = {"name": M_NAME, "description": M_DESCRIPTION, "secret": M_SECRET}
# A field whose length rule has words of its own (the pattern's words would mislead).
_LENGTH_MESSAGES = {"description": M_DESCRIPTION_LENGTH}
# Plain words for a value out of its rule (the page shows them next to the field), after
# the location; the type errors of other members keep msgspec's located reason.
_PLAIN = {
    "rate_limit.requests": M_RATE_LIMIT_NUMBER,
    "rate_limit.burst": M_RATE_LIMIT_NUMBER,
    "rate_limit.per": M_RATE_LIMIT_PER.removeprefix("per "),
    "overlap_seconds": M_OVERLAP,
}
_LOCATION = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<at>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"missing required field `(?P<name>[^`]*)`")

Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        pattern=NAME_PATTERN,
        description="printable ASCII, unique, not all digits, no outer spaces",
    ),
]
Description = Annotated[str, Meta(max_length=DESCRIPTION_MAX_LENGTH, pattern=DESCRIPTION_PATTERN)]
Roles = Annotated[
    list[str],
    Meta(
        min_length=1,
        max_length=ROLES_MAX,
        description="roles defined in the policy and in the caller's grant set",
    ),
]
# RFC 3339 admits a leap second (23:59:60); the times here are read as unix time, which has
# none, so one is refused (400) rather than moved: the document says so.
NO_LEAP_SECOND = "a leap second (:60) is refused: write :59"
Time = Annotated[datetime, Meta(tz=True)]
FutureTime = Annotated[
    datetime, Meta(tz=True, description=f"in the future, with a time zone; {NO_LEAP_SECOND}")
]
NonNegative = Annotated[int, Meta(ge=0)]
KeyStatus = Literal["active", "revoked", "expired"]
Id = Annotated[int, Meta(ge=1, le=MAX_ID)]
Requests = Annotated[int, Meta(ge=1, le=RATE_LIMIT_MAX)]


class _Body(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """A request body: unknown members are refused (the front end names them first)."""


class RateLimit(_Body):
    """A key's own limit; it takes precedence over its roles' default."""

    requests: Requests
    per: Period = "second"
    burst: (
        Annotated[
            int,
            Meta(
                ge=1, le=RATE_LIMIT_MAX, description="requests admitted at once (default: requests)"
            ),
        ]
        | UnsetType
    ) = UNSET


class KeyCreate(_Body):
    """POST /api/v1/keys."""

    name: Name
    roles: Roles
    description: Description | None = None
    expires_at: FutureTime | None = None
    rate_limit: RateLimit | None = None


class KeyPatch(_Body):
    """PATCH /api/v1/keys/{id}: only what is given changes; null clears expiry or limit."""

    name: Name | UnsetType = UNSET
    description: Description | UnsetType | None = UNSET
    roles: Roles | UnsetType = UNSET
    expires_at: (
        Annotated[
            datetime,
            Meta(tz=True, description=f"null removes the expiry; {NO_LEAP_SECOND}"),
        ]
        | UnsetType
        | None
    ) = UNSET
    rate_limit: RateLimit | UnsetType | None = UNSET


class KeyRoll(_Body):
    """POST /api/v1/keys/{id}/roll (the body is optional)."""

    overlap_seconds: (
        Annotated[
            int,
            Meta(
                ge=0,
                le=ROLL_OVERLAP_MAX,
                description="how long the current secret keeps working beside the new one",
                extra_json_schema={"default": ROLL_OVERLAP_DEFAULT},
            ),
        ]
        | UnsetType
    ) = UNSET


class Identify(_Body):
    """POST /api/v1/keys/identify."""

    secret: Annotated[
        str,
        Meta(
            min_length=SECRET_LENGTH,
            max_length=SECRET_LENGTH,
            pattern=SECRET_PATTERN,
            description="a whole key as found by a secret scanner; never stored or logged",
        ),
    ]


Credential = Annotated[str, Meta(min_length=1, max_length=MAX_CREDENTIAL_LENGTH)]


class SignIn(_Body):
    """POST /api/v1/session: an admin's name and password, as typed into the form; `method`
    says whose accounts they are (default: the first of local and backend configured)."""

    name: Credential
    password: Credential
    method: Literal["local", "backend"] | None = None


class ExplainRequest(_Body):
    """POST /api/v1/policy/explain: exactly one of roles or key_id."""

    method: Annotated[str, Meta(pattern=METHOD_PATTERN)]
    path: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_EXPLAIN_TARGET,
            description="the request target as the request line carries it (query too)",
        ),
    ]
    roles: Annotated[list[str], Meta(min_length=1, max_length=ROLES_MAX)] | UnsetType = UNSET
    key_id: Id | UnsetType = UNSET


# Keys one chosen-keys batch (POST /api/v1/keys/batch) may name: a page of rows, bounded.
BATCH_IDS_MAX = 500
BATCH_ID_PATTERN = "^[0-9a-f]{32}$"
M_BATCH_ID = "batch must be a batch id (32 lower-case hex digits) from a revoke-all answer"


class ReinstateAll(_Body):
    """POST /api/v1/keys/reinstate-all (the body is optional: every revoked key)."""

    scope: (
        Annotated[
            Literal["all", "last_revoke_all"],
            Meta(
                description="all: every revoked key; last_revoke_all: only the keys the latest"
                " revoke-all revoked (and still revoked)",
                extra_json_schema={"default": "all"},
            ),
        ]
        | UnsetType
    ) = UNSET
    batch: (
        Annotated[
            str,
            Meta(
                pattern=BATCH_ID_PATTERN,
                description="only the keys the revoke-all with this batch_id revoked",
            ),
        ]
        | UnsetType
    ) = UNSET


class KeyBatch(_Body):
    """POST /api/v1/keys/batch: revoke, reinstate or delete the chosen keys, all or none."""

    action: Literal["revoke", "reinstate", "delete"]
    ids: Annotated[
        list[Id],
        Meta(min_length=1, max_length=BATCH_IDS_MAX, description="the chosen keys' ids"),
    ]


class NoBody(_Body):
    """A write that takes no data: {} or no body, sent as JSON either way (the CSRF rule)."""


class Key(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """A key as the admin API shows it (never its secret or digest)."""

    id: Id
    name: Annotated[str, Meta(min_length=1, max_length=NAME_MAX_LENGTH)]
    description: Description
    roles: list[str]
    status: KeyStatus
    prefix: Annotated[str, Meta(description="first characters of the secret")]
    created_at: Time
    created_by: str
    updated_at: Time
    revoked_at: Time | None
    expires_at: Time | None
    last_used_at: Time | None
    use_count: NonNegative
    rolled_at: (
        Annotated[datetime, Meta(tz=True, description="when the secret was last rolled")] | None
    )
    previous_expires_at: (
        Annotated[
            datetime,
            Meta(
                tz=True,
                description="when the secret replaced by the last roll stops working "
                "(then it answers 401 key_rolled)",
            ),
        ]
        | None
    )
    rate_limit: RateLimit | None
    unknown_roles: (
        Annotated[
            list[str],
            Meta(
                description="the key's roles the policy in force no longer defines "
                "(they grant nothing)"
            ),
        ]
        | UnsetType
    ) = UNSET
    can_manage: (
        Annotated[
            bool,
            Meta(
                description="whether the caller may edit, roll, revoke, reinstate or delete "
                "this key: every role of it lies within their grants"
            ),
        ]
        | UnsetType
    ) = UNSET
    outside_grants: (
        Annotated[
            list[str],
            Meta(
                description="the key's roles outside the caller's grants (why can_manage is "
                "false); empty when it is true"
            ),
        ]
        | UnsetType
    ) = UNSET


class KeyCreated(Struct, forbid_unknown_fields=True, kw_only=True):
    """A created or rolled key and its secret, shown this once."""

    key: Key
    secret: Annotated[
        str,
        Meta(
            min_length=SECRET_LENGTH,
            max_length=SECRET_LENGTH,
            pattern=SECRET_PATTERN,
            description="shown this once; it can never be read again",
        ),
    ]


class _Answer(Struct, forbid_unknown_fields=True, kw_only=True):
    """A response body: its handler encodes it and the document states it, from this one class."""


class Count(_Answer):
    """How many keys a batch action changed (or would change) and left alone."""

    count: NonNegative
    skipped: Annotated[
        int, Meta(ge=0, description="matching keys left alone: roles outside the caller's grants")
    ]


class BatchDone(_Answer):
    """What a batch action did, and the id its audit entries carry."""

    count: NonNegative
    skipped: Annotated[
        int,
        Meta(
            ge=0,
            description="matching keys left alone: outside the caller's grants, or (a chosen"
            " batch) already in the wanted state",
        ),
    ]
    batch_id: Annotated[
        str, Meta(pattern=BATCH_ID_PATTERN, description="in each of the batch's audit entries")
    ]
    scope: Annotated[
        Literal["all", "batch", "chosen"],
        Meta(description="all keys in the state, a revoke-all batch's keys, or chosen ids"),
    ]


class BatchCounts(_Answer):
    """What each batch action would do for the caller now."""

    revoke_all: Count
    reinstate_all: Count
    delete_revoked: Count
    reinstate_last_revoke_all: Annotated[
        Count,
        Meta(description="reinstate-all with scope last_revoke_all: its keys still revoked"),
    ]


class Changes(_Answer):
    """The change-feed sequence and the policy in force (cheap to poll)."""

    seq: NonNegative
    policy: Annotated[str, Meta(description="SHA-256 of the policy in force")]


class UsagePoint(_Answer):
    """A key's usage in one hour or one UTC day (zeros where nothing was counted)."""

    start: Annotated[datetime, Meta(tz=True, description="the hour's or day's start (UTC)")]
    forwarded: NonNegative
    denied: Annotated[int, Meta(ge=0, description="refused by the policy (403)")]
    limited: Annotated[int, Meta(ge=0, description="refused by the rate limit (429)")]
    upstream_errors: Annotated[
        int, Meta(ge=0, description="forwarded and answered 5xx (or keygate's 502/504)")
    ]
    addresses: Annotated[
        int,
        Meta(
            ge=0,
            description="distinct client addresses: exact within one process, summed over "
            "processes (an upper bound); a day shows its busiest hour (a lower bound)",
        ),
    ]
    addresses_capped: Annotated[
        bool, Meta(description="a process saw more addresses than it tracks per key and hour")
    ]


class KeyUsage(_Answer):
    """A key's usage over time: one point per step from `from` up to `to`."""

    key_id: Annotated[int, Meta(ge=1)]
    key_name: str
    step: Literal["hour", "day"]
    from_: Annotated[datetime, Meta(tz=True)] = msgspec.field(name="from")
    to: Annotated[datetime, Meta(tz=True)]
    points: list[UsagePoint]


class RuleCount(_Answer):
    """A policy rule a key was allowed by, named as written, with its uses in the window."""

    role: str
    methods: Annotated[list[str], Meta(description="as written in the policy; ['*']: every")]
    path: Annotated[str, Meta(description="the path pattern as written in the policy")]
    count: Annotated[int, Meta(ge=1)]
    last_used_at: Annotated[datetime, Meta(tz=True)]


class KeyRules(_Answer):
    """The rules a key was allowed by in the last `days` days, most used first."""

    key_id: Id
    key_name: str
    days: Annotated[int, Meta(ge=1)]
    since: Annotated[datetime, Meta(tz=True, description="the window's first UTC day")]
    items: list[RuleCount]


class AddressSeen(_Answer):
    """A client address that presented the key, and when it was last seen."""

    address: str
    last_seen_at: Annotated[datetime, Meta(tz=True)]


class KeyAddresses(_Answer):
    """A key's last client addresses (at most ADDRESSES_KEPT), newest first."""

    key_id: Id
    key_name: str
    items: list[AddressSeen]


class UsedRule(_Answer):
    """A rule the key used in the window, and how often."""

    role: str
    methods: list[str]
    path: str
    count: Annotated[int, Meta(ge=1)]


class UnusedRule(_Answer):
    """A rule the key's roles grant that it never used in the window."""

    role: str
    methods: list[str]
    path: str


class KeyAdvice(_Answer):
    """Least-privilege advice for a key over the last `days` days (advice only)."""

    key_id: Id
    key_name: str
    days: Annotated[int, Meta(ge=1)]
    since: Annotated[datetime, Meta(tz=True, description="the window's first UTC day")]
    requests: Annotated[int, Meta(ge=0, description="requests allowed in the window")]
    used_rules: list[UsedRule]
    unused_rules: list[UnusedRule]
    used_roles: list[str]
    unused_roles: list[str]
    suggested_roles: Annotated[
        list[str] | None,
        Meta(
            description="the smallest set of policy roles that still allows everything the "
            "key did (null: it made no request)"
        ),
    ]
    unused: Annotated[bool, Meta(description="no request at all in the window")]
    message: str


class KeySummary(_Answer):
    """The keys counted by state: the page's summary line."""

    total: NonNegative
    active: Annotated[int, Meta(ge=0, description="neither revoked nor expired")]
    revoked: NonNegative
    expired: NonNegative
    expiring: Annotated[int, Meta(ge=0, description="active, expiring within expiry.warn_days")]
    unused: Annotated[
        int,
        Meta(
            ge=0,
            description="active keys not used in unused_days days (never-used keys created "
            "before then included)",
        ),
    ]
    unused_days: Annotated[int, Meta(ge=1)]


class Session(_Answer):
    """Who is signed in, where their grants come from, what they may grant and (for a web
    session) its CSRF token."""

    admin: Annotated[str, Meta(description="the local account's name, or the identity's subject")]
    display_name: str
    actor: Annotated[
        str,
        Meta(
            description="how the audit log names this admin: local:<name>, oidc:<subject>, "
            "backend:<name> or header:<subject>"
        ),
    ]
    source: Annotated[
        Literal["local", "oidc", "backend", "header"],
        Meta(description="where the admin signed in and their grants come from"),
    ]
    groups: Annotated[
        list[str],
        Meta(
            description="the identity's groups (admin.sign_in.grants.claim); empty for a "
            "local account"
        ),
    ]
    grants: list[str]
    grant_all: bool
    expires_at: Annotated[
        float | None,
        Meta(description="Unix time the identity's token stops verifying (null: local)"),
    ]
    auth: Literal["session", "basic", "bearer", "header"]
    csrf_token: (
        Annotated[
            str,
            Meta(
                description=f"send as {CSRF_HEADER} on every state-changing request of this "
                "session (null with HTTP Basic)"
            ),
        ]
        | None
    )
    idle_timeout: Annotated[float, Meta(description="seconds")]
    absolute_timeout: Annotated[float, Meta(description="seconds")]
    expiry_warn_days: Annotated[
        int, Meta(description="keys expiring within this many days count as expiring")
    ]


def respond(answer: Struct) -> web.Response:
    """Return a response model as its JSON answer (200, never cached)."""
    return web.Response(
        body=msgspec.json.encode(answer),
        content_type="application/json",
        headers={"Cache-Control": NO_STORE},
    )


MODELS: tuple[type[Struct], ...] = (
    KeyCreate,
    KeyPatch,
    KeyRoll,
    ReinstateAll,
    KeyBatch,
    Identify,
    SignIn,
    ExplainRequest,
    NoBody,
    Key,
    KeyCreated,
    Count,
    BatchDone,
    BatchCounts,
    Changes,
    UsagePoint,
    KeyUsage,
    RuleCount,
    KeyRules,
    AddressSeen,
    KeyAddresses,
    UsedRule,
    UnusedRule,
    KeyAdvice,
    KeySummary,
    Session,
)
# Whole-body rules JSON Schema states beside the properties (msgspec has no field for them).
_BODY_RULES: dict[str, dict[str, Any]] = {
    "KeyPatch": {"minProperties": 1},
    "ExplainRequest": {"oneOf": [{"required": ["roles"]}, {"required": ["key_id"]}]},
    # A batch names revoke-all's keys: with scope all it would contradict itself.
    "ReinstateAll": {
        "not": {"required": ["batch", "scope"], "properties": {"scope": {"const": "all"}}}
    },
}


def fields(model: type[Struct]) -> frozenset[str]:
    """Return the member names a body of `model` may hold (the front end's allowed set)."""
    return frozenset(model.__struct_fields__)


def convert(data: dict[str, Any], model: type[T], words: Mapping[str, str] | None = None) -> T:
    """Return `data` (parsed by the strict front end) as `model`; a 400 naming the field.

    `words` gives a field's message in the rule's own words, whatever is wrong with it.
    """
    try:
        return msgspec.convert(data, model, strict=True)
    except msgspec.ValidationError as error:
        location, reason = _located(str(error))
        friendly = (words or {}).get(location)
        if friendly is None and "length" in reason:
            friendly = _LENGTH_MESSAGES.get(location)
        if friendly is None and ("regex" in reason or "length" in reason):
            friendly = _MESSAGES.get(location)
        if location == "roles":  # an empty list: the rule's own words name the field
            friendly = M_ROLES
        plain = _PLAIN.get(location)
        message = friendly or f"{location or 'body'}: {plain or reason}"
        member = re.split(r"[.\[]", location, maxsplit=1)[0]  # "field": the body's member
        raise bad_request(message, field=member or None) from None


def _located(text: str) -> tuple[str, str]:
    """Split msgspec's "reason - at `$.a.b[0]`" into ("a.b[0]", "reason")."""
    match = _LOCATION.match(text)
    reason = match["reason"] if match else text
    at = (match["at"] if match else None) or ""
    missing = _MISSING.search(reason)
    if missing:
        at = f"{at}.{missing['name']}"
    return at.removeprefix("."), reason


def schemas(ref_template: str = "#/components/schemas/{name}") -> dict[str, dict[str, Any]]:
    """Return the OpenAPI components of every model (and the models they refer to)."""
    _, components = msgspec.json.schema_components(MODELS, ref_template=ref_template)
    for name, extra in _BODY_RULES.items():
        components[name].update(extra)
    for schema in components.values():
        schema.pop("title", None)
    return components


def schema_of(kind: Any) -> dict[str, Any]:
    """Return the JSON Schema of one annotated type (a parameter's schema, a named enum)."""
    schema: dict[str, Any] = msgspec.json.schema(kind)
    return schema


def to_builtins(model: Struct) -> dict[str, Any]:
    """Return a model as the plain JSON data the key rules read (given members only)."""
    data: dict[str, Any] = msgspec.to_builtins(model)
    return data
