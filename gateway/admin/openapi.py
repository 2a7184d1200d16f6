"""The admin API's OpenAPI 3.1 document: exactly the admin listener's endpoints and schemas."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from aiohttp import web

from gateway.admin import errors, models
from gateway.admin.audit_export import (
    AUDIT_ACTIONS,
    AUDIT_CSV_MAX_ROWS,
    AUDIT_TEXT_MAX,
    actions_pattern,
)
from gateway.admin.audit_handlers import CSV_TYPE, FORMATS, TRUNCATED_HEADER
from gateway.admin.insight_handlers import DEFAULT_DAYS
from gateway.admin.key_handlers import (
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_MAX,
    IDEMPOTENCY_WINDOW,
    KEY_ACTIONS,
    STATUSES,
)
from gateway.admin.middlewares import SAFE_METHODS
from gateway.admin.parsing import (
    CURSOR_MAX_LENGTH,
    CURSOR_PATTERN,
    DEFAULT_LIMIT,
    MAX_BODY_BYTES,
    MAX_LIMIT,
    MAX_QUERY_LENGTH,
    MAX_TIME_LENGTH,
    MIN_LIMIT,
    SAFE_TEXT_PATTERN,
)
from gateway.admin.sessions import COOKIE as SESSION_COOKIE
from gateway.admin.sessions import CSRF_HEADER, SECURE_COOKIE
from gateway.keys.rules import IDEMPOTENCY_KEY_PATTERN
from gateway.keys.usage import ADDRESSES_KEPT
from gateway.keys.usage_series import MAX_USAGE_POINTS, STEPS
from gateway.proxy.decision import EXPLAIN_REASONS
from gateway.settings.models import USAGE_KEEP_DAYS_LIMIT
from gateway.store.base import KEY_SORTS

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"
TITLE = "keygate admin API"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


# A page cursor as parsing.decode_cursor reads it (what it cannot say, that this listing
# made it for this order, is a 422).
_CURSOR_TEXT: Schema = {
    "type": "string",
    "maxLength": CURSOR_MAX_LENGTH,
    "pattern": CURSOR_PATTERN,
}


def _page(item: str) -> dict[str, Any]:
    """Return the schema of one cursor page of `item` objects."""
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {**_CURSOR_TEXT, "type": ["string", "null"], "minLength": 1},
        },
    }


def _nullable(schema: Schema) -> Schema:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return {"oneOf": [schema, {"type": "null"}]}


# A search or filter text as parsing.is_safe_text accepts it: bounded, no control characters.
_SEARCH_TEXT: Schema = {
    "type": "string",
    "maxLength": MAX_QUERY_LENGTH,
    "pattern": SAFE_TEXT_PATTERN,
}
_TIME: Schema = {"type": "string", "format": "date-time"}
_ERROR_CODES = sorted(
    value
    for name, value in vars(errors).items()
    if name.startswith("E_") and isinstance(value, str)
)

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "enum": _ERROR_CODES},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "the request field at fault"},
            "problems": {
                "type": "array",
                "description": (
                    "a key create or edit: every member's problem at once, this answer's own first"
                ),
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
            "retry_after": {"type": "integer", "description": "seconds, with 429"},
            "checks": {"$ref": "#/components/schemas/ReadyChecks"},
            "key": {
                "oneOf": [{"$ref": "#/components/schemas/Key"}, {"type": "null"}],
                "description": (
                    "with idempotent_replay: the key the first request created (null once "
                    "deleted), never its secret"
                ),
            },
            "outcome_unknown": {
                "type": "boolean",
                "description": (
                    "with store_unavailable: the connection was lost while the write was "
                    "committing, so it may have been made"
                ),
            },
        },
    },
    # The request bodies and the key, generated from their models (gateway/admin/models.py).
    **models.schemas(),
    "KeyStatus": models.schema_of(models.KeyStatus),
    "KeyPage": _page("Key"),
    "Rule": {
        "type": "object",
        "required": ["role", "index", "rule"],
        "additionalProperties": False,
        "properties": {
            "role": {"type": "string"},
            "index": {"type": "integer", "minimum": 0},
            "rule": {"type": "string", "description": "'METHODS PATH' as written"},
        },
    },
    "Role": {
        "type": "object",
        "required": [
            "name",
            "description",
            "includes",
            "rules",
            "effective_roles",
            "effective_rules",
            "grantable",
        ],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "includes": {"type": "array", "items": {"type": "string"}},
            "rules": {"type": "array", "items": {"type": "string"}},
            "effective_roles": {"type": "array", "items": {"type": "string"}},
            "effective_rules": {"type": "array", "items": _ref("Rule")},
            "grantable": {"type": "boolean", "description": "the caller may grant this role"},
        },
    },
    "Roles": {
        "type": "object",
        "required": ["roles", "protected"],
        "additionalProperties": False,
        "properties": {
            "roles": {"type": "array", "items": _ref("Role")},
            "protected": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Explanation": {
        "type": "object",
        "required": [
            "allowed",
            "reason",
            "refusal",
            "rule",
            "method",
            "target",
            "path",
            "roles",
            "effective_roles",
            "key",
        ],
        "additionalProperties": False,
        "properties": {
            "allowed": {"type": "boolean"},
            "reason": {
                "type": "string",
                "enum": list(EXPLAIN_REASONS),
            },
            "refusal": {
                "type": ["object", "null"],
                "description": "what the proxy answers this request (null: it forwards it)",
                "required": ["status", "error", "message"],
                "additionalProperties": False,
                "properties": {
                    "status": {"type": "integer"},
                    "error": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
            "rule": _nullable(_ref("Rule")),
            "method": {"type": "string"},
            "target": {"type": "string"},
            "path": {
                "type": ["string", "null"],
                "description": "the decoded path the policy saw (null: the target was refused)",
            },
            "roles": {"type": "array", "items": {"type": "string"}},
            "effective_roles": {"type": "array", "items": {"type": "string"}},
            "key": {
                "type": ["object", "null"],
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string"},
                    "status": _ref("KeyStatus"),
                },
            },
        },
    },
    "AuditEvent": {
        "type": "object",
        "required": ["id", "at", "actor", "action", "key_id", "key_name", "details"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "integer"},
            "at": _TIME,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "key_id": {"type": ["integer", "null"]},
            "key_name": {"type": ["string", "null"]},
            "details": {"type": "object"},
        },
    },
    "AuditPage": _page("AuditEvent"),
    "PolicyInfo": {
        "type": "object",
        "required": ["source", "sha256", "loaded_at", "roles", "protected", "reloads"],
        "additionalProperties": False,
        "properties": {
            "source": {"type": "string"},
            "sha256": {"type": "string"},
            "loaded_at": {"type": ["string", "null"], "format": "date-time"},
            "roles": {"type": "integer", "minimum": 0},
            "protected": {"type": "integer", "minimum": 0},
            "reloads": {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
            "last_problems": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "ReadyChecks": {
        "type": "object",
        "required": ["store", "policy"],
        "properties": {"store": {"type": "boolean"}, "policy": {"type": "boolean"}},
    },
    "Ready": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "checks": _ref("ReadyChecks"),
        },
    },
}


def _json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _ok(description: str, schema: str, status: str = "200") -> dict[str, Schema]:
    return {status: {"description": description, "content": _json_content(_ref(schema))}}


def _errors(*statuses: int) -> dict[str, Schema]:
    descriptions = {
        400: "invalid request (malformed JSON, unknown field, bad value or parameter)",
        401: (
            "missing or wrong admin credentials, a bearer or proxy token that does not "
            "verify (token_invalid), or the web session ended (session_ended)"
        ),
        403: (
            "an API key was presented (api_key_forbidden), a cross-site or non-JSON write "
            "(csrf), a key or role outside the caller's grant set (grant_forbidden), a way "
            "in the config does not list (sign_in_method_disabled), an identity none of "
            "whose groups may sign in (sign_in_refused), or an identity header from an "
            "address not listed (untrusted_proxy)"
        ),
        404: "no such key (or page file)",
        409: (
            "name already in use, reinstating an expired key (key_expired), or a create "
            "repeated under its Idempotency-Key (idempotent_replay, with the key)"
        ),
        413: f"body larger than {MAX_BODY_BYTES} bytes",
        415: "body is not JSON",
        422: (
            "valid as this document describes it, refused by a rule it cannot state: an "
            "unknown role, an Idempotency-Key reused with another body, a secret whose "
            "checksum fails, a cursor this listing did not make for this order"
        ),
        429: "too many failed logins from this address or for this account (see Retry-After)",
        502: "the backend's sign-in answered a token that does not verify",
        503: "not ready, or the identity provider or backend's sign-in is not answering",
    }
    return {
        str(status): {
            "description": descriptions[status],
            "content": _json_content(_ref("Error")),
        }
        for status in statuses
    }


_AUTH_ERRORS = (401, 403, 429, 503)  # 503: the identity provider is down
_BODY_ERRORS = (400, 413, 415)
_ID_PARAMETER: Schema = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": (
        "the key's id, or its name (names are never all digits); the action paths beside "
        f"this one ({', '.join(KEY_ACTIONS)}) match first, as OpenAPI matches paths, so a "
        "key named like one is reached here by its id"
    ),
    "schema": {
        "oneOf": [
            models.schema_of(models.Id),
            models.schema_of(models.Name),
        ]
    },
}
_LIMIT: Schema = {
    "name": "limit",
    "in": "query",
    "schema": {
        "type": "integer",
        "minimum": MIN_LIMIT,
        "maximum": MAX_LIMIT,
        "default": DEFAULT_LIMIT,
    },
}
_CURSOR: Schema = {
    "name": "cursor",
    "in": "query",
    "description": (
        "next_cursor of the previous page (opaque; empty: the first page); a cursor this "
        "listing did not make for this order answers 422"
    ),
    "schema": _CURSOR_TEXT,
}


# What a write that takes no data (revoke, delete, ...) is sent with; a body with members is
# a 400, not ignored.
_NO_BODY = "NoBody"
_NO_BODY_DESCRIPTION = (
    "{} or no body at all; either way the request carries Content-Type: application/json, "
    "as every state-changing request must (else 403 csrf)"
)
_OPTIONAL_BODY_DESCRIPTION = (
    "may be {} or absent (the defaults apply); sent with Content-Type: application/json "
    "either way (else 403 csrf)"
)


def _body(schema: str, description: str | None = None) -> Schema:
    body: Schema = {"required": True, "content": _json_content(_ref(schema))}
    if description is not None:
        body["description"] = description
    return body


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    tags: tuple[str, ...] = ("keys",),
    parameters: list[Schema] | None = None,
    body: str | None = None,
    public: bool = False,
) -> Schema:
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": list(tags),
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = parameters
    if body == _NO_BODY:
        operation["requestBody"] = _body(body, _NO_BODY_DESCRIPTION)
    elif body is not None:
        operation["requestBody"] = _body(body)
    if public:
        operation["security"] = []
    return operation


def _paths() -> dict[str, Schema]:
    batch = {
        "revoke-all": ("revokeAllKeys", "Revoke every active key (one transaction)"),
        "delete-revoked": ("deleteRevokedKeys", "Delete every revoked key (one transaction)"),
    }
    paths: dict[str, Schema] = {
        "/healthz": {
            "get": _operation(
                "healthz", "Process is alive", _ok("alive", "Health"), tags=("health",), public=True
            )
        },
        "/readyz": {
            "get": _operation(
                "readyz",
                "Store reachable and policy loaded",
                {**_ok("ready", "Ready"), **_errors(503)},
                tags=("health",),
                public=True,
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "This process's counters in Prometheus text format",
                {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                tags=("health",),
                public=True,
            )
        },
        "/api/v1/openapi.json": {
            "get": _operation(
                "openapi",
                "This document",
                {
                    "200": {
                        "description": "OpenAPI 3.1 document",
                        "content": _json_content({"type": "object"}),
                    },
                    **_errors(*_AUTH_ERRORS),
                },
                tags=("meta",),
            )
        },
        "/api/v1/keys": {
            "post": _operation(
                "createKey",
                "Create a key; the response is the only time the secret is shown",
                {
                    **_ok("created", "KeyCreated", "201"),
                    **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 409, 422),
                },
                body="KeyCreate",
                parameters=[
                    {
                        "name": IDEMPOTENCY_HEADER,
                        "in": "header",
                        "required": False,
                        "description": (
                            "makes a retry safe: the same request again from the same admin "
                            f"within {IDEMPOTENCY_WINDOW // 3600} h creates nothing and answers "
                            "409 idempotent_replay with the key (its secret cannot be shown "
                            "again); another body under the same key answers 422 "
                            "idempotency_key_reused"
                        ),
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": IDEMPOTENCY_KEY_MAX,
                            "pattern": IDEMPOTENCY_KEY_PATTERN,
                        },
                    }
                ],
            ),
            "get": _operation(
                "listKeys",
                "List keys by id",
                {**_ok("a page of keys", "KeyPage"), **_errors(400, *_AUTH_ERRORS, 422)},
                parameters=[
                    {
                        "name": "status",
                        "in": "query",
                        "description": "expiring: active keys expiring within expiry.warn_days",
                        "schema": {
                            "type": "string",
                            # Empty: no filter, as an empty q is no search.
                            "enum": ["", *STATUSES],
                        },
                    },
                    {
                        "name": "q",
                        "in": "query",
                        "description": (
                            "substring of name, description or display prefix; a whole key"
                            " finds exactly its key (by digest)"
                        ),
                        "schema": _SEARCH_TEXT,
                    },
                    {
                        "name": "role",
                        "in": "query",
                        "description": "keys holding this role (as held; includes not resolved)",
                        "schema": _SEARCH_TEXT,
                    },
                    {
                        "name": "created_by",
                        "in": "query",
                        "description": "keys created by exactly this actor (e.g. local:alice)",
                        "schema": _SEARCH_TEXT,
                    },
                    {
                        "name": "unused_days",
                        "in": "query",
                        "description": "active keys not used for this many days (never-used "
                        "keys created before then), as the summary counts them",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": USAGE_KEEP_DAYS_LIMIT,
                        },
                    },
                    {
                        "name": "sort",
                        "in": "query",
                        "description": "order (keyset-paged); '-' is descending, never-used "
                        "keys sort as the oldest use",
                        "schema": {"type": "string", "enum": ["", *KEY_SORTS], "default": "id"},
                    },
                    _LIMIT,
                    _CURSOR,
                ],
            ),
        },
        "/api/v1/keys/{id}": {
            "get": _operation(
                "getKey",
                "Show one key",
                {**_ok("the key", "Key"), **_errors(*_AUTH_ERRORS, 404)},
                parameters=[_ID_PARAMETER],
            ),
            "patch": _operation(
                "updateKey",
                "Edit a key's name, description, roles or expiry",
                {
                    **_ok("the edited key", "Key"),
                    **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 404, 409, 422),
                },
                parameters=[_ID_PARAMETER],
                body="KeyPatch",
            ),
            "delete": _operation(
                "deleteKey",
                "Delete a key for good",
                {"204": {"description": "deleted"}, **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 404)},
                parameters=[_ID_PARAMETER],
                body=_NO_BODY,
            ),
        },
        "/api/v1/keys/{id}/revoke": {
            "post": _operation(
                "revokeKey",
                "Revoke a key (it can be reinstated)",
                {**_ok("the revoked key", "Key"), **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 404)},
                parameters=[_ID_PARAMETER],
                body=_NO_BODY,
            )
        },
        "/api/v1/keys/{id}/roll": {
            "post": {
                **_operation(
                    "rollKey",
                    "Give a key a new secret, shown once; the old secret keeps working for "
                    "the overlap, then answers 401 key_rolled (a second roll replaces the first)",
                    {
                        **_ok("the key and its new secret", "KeyCreated"),
                        **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 404),
                    },
                    parameters=[_ID_PARAMETER],
                ),
                "requestBody": _body("KeyRoll", _OPTIONAL_BODY_DESCRIPTION),
            }
        },
        "/api/v1/keys/{id}/reinstate": {
            "post": _operation(
                "reinstateKey",
                "Reinstate a revoked key (an expired one needs a new expires_at first)",
                {
                    **_ok("the reinstated key", "Key"),
                    **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 404, 409),
                },
                parameters=[_ID_PARAMETER],
                body=_NO_BODY,
            )
        },
    }
    for suffix, (operation_id, summary) in batch.items():
        paths[f"/api/v1/keys/{suffix}"] = {
            "post": _operation(
                operation_id,
                summary,
                {
                    **_ok("how many keys changed, and the batch's id", "BatchDone"),
                    **_errors(*_BODY_ERRORS, *_AUTH_ERRORS),
                },
                body=_NO_BODY,
            )
        }
    paths["/api/v1/keys/{id}/usage"] = {
        "get": _operation(
            "keyUsage",
            "A key's usage per hour or UTC day: forwarded, refused by policy (403) or rate "
            "limit (429), upstream 5xx, distinct client addresses (counted in memory, "
            "written in batches; every instance adds up)",
            {**_ok("one point per step", "KeyUsage"), **_errors(400, *_AUTH_ERRORS, 404, 422)},
            parameters=[
                _ID_PARAMETER,
                {
                    "name": "from",
                    "in": "query",
                    "description": (
                        "RFC 3339 date-time with a time zone (default: 24 hours before to), "
                        f"within usage.keep_days; {models.NO_LEAP_SECOND}"
                    ),
                    "schema": {**_TIME, "maxLength": MAX_TIME_LENGTH},
                },
                {
                    "name": "to",
                    "in": "query",
                    "description": (
                        "RFC 3339 date-time with a time zone (default: now), after from, at "
                        f"most a day ahead; {models.NO_LEAP_SECOND}"
                    ),
                    "schema": {**_TIME, "maxLength": MAX_TIME_LENGTH},
                },
                {
                    "name": "step",
                    "in": "query",
                    "description": f"at most {MAX_USAGE_POINTS} points per answer",
                    "schema": {"type": "string", "enum": ["", *STEPS], "default": "hour"},
                },
            ],
        )
    }
    days = {
        "name": "days",
        "in": "query",
        "description": (
            f"the window in whole UTC days ending today (default {DEFAULT_DAYS}); more than "
            "usage.keep_days is a 422"
        ),
        "schema": {"type": "integer", "minimum": 1, "maximum": 99999},
    }
    paths["/api/v1/keys/{id}/rules"] = {
        "get": _operation(
            "keyRules",
            "The policy rules (role, methods and path as written) a key was allowed by in "
            "the last days, with counts, most used first (counted in memory, written in "
            "batches; every instance adds up)",
            {**_ok("the rules", "KeyRules"), **_errors(400, *_AUTH_ERRORS, 404, 422)},
            parameters=[_ID_PARAMETER, days],
        )
    }
    paths["/api/v1/keys/{id}/addresses"] = {
        "get": _operation(
            "keyAddresses",
            f"A key's last client addresses (at most {ADDRESSES_KEPT}), newest first",
            {**_ok("the addresses", "KeyAddresses"), **_errors(400, *_AUTH_ERRORS, 404)},
            parameters=[_ID_PARAMETER],
        )
    }
    paths["/api/v1/keys/{id}/advice"] = {
        "get": _operation(
            "keyAdvice",
            "Least-privilege advice: the rules and roles a key used and never used in the "
            "last days, and the smallest role set of the policy that still allows what it "
            "did (advice only: nothing changes)",
            {**_ok("the advice", "KeyAdvice"), **_errors(400, *_AUTH_ERRORS, 404, 422)},
            parameters=[_ID_PARAMETER, days],
        )
    }
    paths["/api/v1/keys/summary"] = {
        "get": _operation(
            "keysSummary",
            "The keys counted by state: total, active, revoked, expired, expiring within "
            "expiry.warn_days, and active keys unused for unused_days days",
            {**_ok("the counts", "KeySummary"), **_errors(400, *_AUTH_ERRORS)},
            parameters=[
                {
                    "name": "unused_days",
                    "in": "query",
                    "description": f"default {DEFAULT_DAYS}",
                    "schema": {"type": "integer", "minimum": 1, "maximum": USAGE_KEEP_DAYS_LIMIT},
                }
            ],
        )
    }
    paths["/api/v1/keys/reinstate-all"] = {
        "post": {
            **_operation(
                "reinstateAllKeys",
                "Reinstate revoked keys (one transaction): every one (scope all, the default),"
                " or only those the latest revoke-all (scope last_revoke_all) or a given one"
                " (batch) revoked",
                {
                    **_ok("how many keys changed, and the batch's id", "BatchDone"),
                    **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 404),
                },
            ),
            "requestBody": _body("ReinstateAll", _OPTIONAL_BODY_DESCRIPTION),
        }
    }
    paths["/api/v1/keys/batch"] = {
        "post": _operation(
            "batchKeys",
            "Revoke, reinstate or delete chosen keys (one transaction, all or none; one audit"
            " entry per changed key with the batch's id)",
            {
                **_ok("how many keys changed, and the batch's id", "BatchDone"),
                **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 404, 409),
            },
            body="KeyBatch",
        )
    }
    paths["/api/v1/keys/identify"] = {
        "post": _operation(
            "identifyKey",
            "Which key a leaked secret belongs to (looked up by its SHA-256 digest)",
            {**_ok("the key", "Key"), **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 404, 422)},
            body="Identify",
        )
    }
    paths["/api/v1/keys/batch-counts"] = {
        "get": _operation(
            "batchCounts",
            "How many keys each batch action would touch (and skip) for the caller now",
            {**_ok("counts by action", "BatchCounts"), **_errors(*_AUTH_ERRORS)},
        )
    }
    paths["/api/v1/changes"] = {
        "get": _operation(
            "changes",
            "The change-feed sequence: it moves whenever any key changes (cheap to poll)",
            {**_ok("the sequence", "Changes"), **_errors(*_AUTH_ERRORS)},
        )
    }
    paths["/api/v1/session"] = {
        "post": _operation(
            "signIn",
            "Sign in to the web page: start a session (cookie) with an admin's name and "
            "password; throttled and audited like HTTP Basic",
            {**_ok("signed in", "Session"), **_errors(*_BODY_ERRORS, 401, 403, 429, 502, 503)},
            tags=("session",),
            body="SignIn",
            public=True,
        ),
        "get": _operation(
            "whoAmI",
            "The signed-in admin, their grants and the session's CSRF token",
            {**_ok("who is signed in", "Session"), **_errors(*_AUTH_ERRORS)},
            tags=("session",),
        ),
        "delete": _operation(
            "signOut",
            "Sign out: end the session on the server and clear its cookie",
            {"204": {"description": "signed out"}, **_errors(*_BODY_ERRORS, *_AUTH_ERRORS)},
            tags=("session",),
            body=_NO_BODY,
        ),
    }
    paths.update(_oidc_paths())
    html = {"text/html": {"schema": {"type": "string"}}}
    paths["/"] = {
        "get": _operation(
            "page",
            "The API Keys web page (sign-in form when signed out)",
            {"200": {"description": "the page", "content": html}},
            tags=("page",),
            public=True,
        )
    }
    paths["/static/{name}"] = {
        "get": _operation(
            "pageAsset",
            "A script, stylesheet or icon of the page",
            {"200": {"description": "the file"}, **_errors(404)},
            tags=("page",),
            parameters=[
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            public=True,
        )
    }
    paths["/api/v1/roles"] = {
        "get": _operation(
            "listRoles",
            "Roles of the policy with descriptions and effective rules",
            {**_ok("roles", "Roles"), **_errors(*_AUTH_ERRORS)},
            tags=("policy",),
        )
    }
    paths["/api/v1/policy"] = {
        "get": _operation(
            "getPolicy",
            "The policy in force: its source file, SHA-256, load time and reload counts",
            {**_ok("the loaded policy", "PolicyInfo"), **_errors(*_AUTH_ERRORS)},
            tags=("policy",),
        )
    }
    paths["/api/v1/policy/explain"] = {
        "post": _operation(
            "explainPolicy",
            "Decide METHOD PATH for roles or a key as the proxy does, with the deciding rule",
            {
                **_ok("the decision", "Explanation"),
                **_errors(*_BODY_ERRORS, *_AUTH_ERRORS, 404, 422),
            },
            tags=("policy",),
            body="ExplainRequest",
        )
    }
    page = _ok("a page of events", "AuditPage")
    page["200"]["description"] = (
        "a page of events; as CSV (format=csv or Accept: text/csv): a header row (id, at, "
        "actor, action, key_id, key_name, details JSON), at most "
        f"{AUDIT_CSV_MAX_ROWS} rows newest first (limit if given), as an attachment; cells a "
        "spreadsheet would run as a formula start with an apostrophe; "
        f"{TRUNCATED_HEADER}: true when more entries matched"
    )
    page["200"]["content"][CSV_TYPE] = {"schema": {"type": "string"}}
    paths["/api/v1/audit"] = {
        "get": _operation(
            "listAudit",
            "Audit events, newest first, filtered; or a CSV export",
            {**page, **_errors(400, *_AUTH_ERRORS, 422)},
            tags=("audit",),
            parameters=[
                {"name": "key_id", "in": "query", "schema": models.schema_of(models.Id)},
                {"name": "key_name", "in": "query", "schema": _SEARCH_TEXT},
                {"name": "actor", "in": "query", "schema": _SEARCH_TEXT},
                {
                    "name": "action",
                    "in": "query",
                    "description": "comma-separated actions (any of them): "
                    + ", ".join(AUDIT_ACTIONS),
                    "schema": {
                        "type": "string",
                        "maxLength": MAX_QUERY_LENGTH,
                        "pattern": actions_pattern(),
                    },
                },
                {
                    "name": "q",
                    "in": "query",
                    "description": "substring of the key name, actor or details JSON (ASCII "
                    "letters folded; % and _ match themselves; non-ASCII, quotes and "
                    "backslashes match as written, not as JSON escapes)",
                    "schema": {**_SEARCH_TEXT, "maxLength": AUDIT_TEXT_MAX},
                },
                {
                    "name": "since",
                    "in": "query",
                    "description": (
                        f"RFC 3339 date-time with a time zone, inclusive; {models.NO_LEAP_SECOND}"
                    ),
                    "schema": {**_TIME, "maxLength": MAX_TIME_LENGTH},
                },
                {
                    "name": "until",
                    "in": "query",
                    "description": (
                        "RFC 3339 date-time with a time zone, inclusive, not before since; "
                        f"{models.NO_LEAP_SECOND}"
                    ),
                    "schema": {**_TIME, "maxLength": MAX_TIME_LENGTH},
                },
                {
                    "name": "format",
                    "in": "query",
                    "description": "csv: a CSV export (as Accept: text/csv)",
                    "schema": {"type": "string", "enum": ["", *FORMATS], "default": "json"},
                },
                _LIMIT,
                _CURSOR,
            ],
        )
    }
    return paths


# Reads take HTTP Basic, a bearer token or the session cookie; a cookie-authenticated write
# also takes the session's CSRF header (both at once: one security requirement).
READ_SECURITY: list[Schema] = [{"adminBasic": []}, {"adminBearer": []}, {"adminSession": []}]
WRITE_SECURITY: list[Schema] = [
    {"adminBasic": []},
    {"adminBearer": []},
    {"adminSession": [], "adminCsrf": []},
]


def _with_write_security(paths: dict[str, Schema]) -> dict[str, Schema]:
    """Give every authenticated state-changing operation the write security requirement."""
    for item in paths.values():
        for method, operation in item.items():
            if method.upper() not in SAFE_METHODS and "security" not in operation:
                operation["security"] = WRITE_SECURITY
    return paths


def _see_other(description: str) -> Schema:
    """A browser route's 303 (Location: where the browser goes next)."""
    return {
        "303": {
            "description": description,
            "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
        }
    }


_OIDC_OFF = {
    "404": {
        "description": "sign-in with an OpenID provider is not configured",
        "content": _json_content(_ref("Error")),
    }
}
_CALLBACK_TEXT: Schema = {"type": "string"}


def _oidc_paths() -> dict[str, Schema]:
    """The page's ways in and the OpenID Connect browser routes (gateway.admin.oidc_handlers)."""
    methods_schema: Schema = {
        "type": "object",
        "required": ["methods", "local", "backend", "oidc"],
        "properties": {
            "methods": {"type": "array", "items": {"type": "string"}},
            "local": {"type": "boolean"},
            "backend": {"type": "boolean"},
            "oidc": {
                "type": ["object", "null"],
                "required": ["name", "start", "logout"],
                "properties": {
                    "name": {"type": "string"},
                    "start": {"type": "string"},
                    "logout": {"type": "string"},
                },
            },
        },
    }
    callback_parameters = [
        {"name": name, "in": "query", "schema": _CALLBACK_TEXT}
        for name in ("code", "state", "iss", "error", "error_description", "session_state")
    ]
    return {
        "/api/v1/session/methods": {
            "get": _operation(
                "signInMethods",
                "The ways in the page offers: local form, backend accounts, an OpenID provider",
                {"200": {"description": "the ways in", "content": _json_content(methods_schema)}},
                tags=("session",),
                public=True,
            )
        },
        "/api/v1/session/oidc/start": {
            "get": _operation(
                "oidcStart",
                "Browser: start a sign-in at the OpenID provider (code flow, PKCE S256, state "
                "and nonce in a signed flow cookie)",
                {
                    **_see_other(
                        "to the provider's authorization endpoint, or to the page with "
                        "#sign-in-error=provider_unavailable"
                    ),
                    **_OIDC_OFF,
                },
                tags=("session",),
                public=True,
            )
        },
        "/api/v1/session/oidc/callback": {
            "get": _operation(
                "oidcCallback",
                "Browser: the provider's redirect back; completes the sign-in and starts a "
                "session (cookie)",
                {
                    **_see_other(
                        "to the page, signed in, or with #sign-in-error=<code> (sign_in_expired, "
                        "provider_refused, provider_unavailable, token_invalid, not_allowed, "
                        "cancelled)"
                    ),
                    **_OIDC_OFF,
                },
                tags=("session",),
                parameters=callback_parameters,
                public=True,
            )
        },
        "/api/v1/session/oidc/logout": {
            "get": _operation(
                "oidcLogout",
                "Browser: after signing out, the provider's own logout page where it has one",
                {
                    **_see_other("to the provider's end_session_endpoint, or to the page"),
                    **_OIDC_OFF,
                },
                tags=("session",),
                public=True,
            )
        },
    }


@cache
def _document() -> Schema:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": API_VERSION,
            "description": (
                "Manage keygate API keys. Authenticate with HTTP Basic as a local admin "
                "account, with `Authorization: Bearer <JWT>` from the configured OpenID "
                "provider or backend, through a sign-in proxy's verified token header, "
                "or with the web page's session cookie (POST /api/v1/session); cookie-"
                f"authenticated writes also need the session's {CSRF_HEADER} header. "
                "Any request carrying an API key is refused with 403 api_key_forbidden. "
                "State-changing requests (every method but GET/HEAD/OPTIONS) must carry "
                "Content-Type: application/json, body or not, and come from no other origin "
                "(403 csrf). Every error is JSON {error, message, field?}."
            ),
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "adminBasic": {"type": "http", "scheme": "basic"},
                "adminBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "an ID or access token of the configured OpenID provider "
                    "or backend (never an API key)",
                },
                "adminSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": f"{SECURE_COOKIE} when served over TLS",
                },
                "adminCsrf": {
                    "type": "apiKey",
                    "in": "header",
                    "name": CSRF_HEADER,
                    "description": (
                        "the session's csrf_token (from signing in or GET /api/v1/session): "
                        "with the session cookie, every state-changing request needs it"
                    ),
                },
            },
        },
        "security": READ_SECURITY,
        "paths": _with_write_security(_paths()),
    }


def openapi_document() -> Schema:
    """Return the OpenAPI 3.1 document of the admin API (a fresh copy)."""
    return copy.deepcopy(_document())


async def openapi(request: web.Request) -> web.Response:
    """GET /api/v1/openapi.json: the OpenAPI 3.1 document of this API."""
    return web.json_response(_document())
