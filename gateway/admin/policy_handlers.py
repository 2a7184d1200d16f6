"""Admin API policy handlers: the roles an admin can grant, and explaining a decision."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import clock
from gateway.admin.errors import NO_STORE, bad_request, not_found
from gateway.admin.identity import grant_set_of
from gateway.admin.middlewares import current_admin
from gateway.admin.models import ExplainRequest, convert, fields
from gateway.admin.parsing import MAX_EXPLAIN_TARGET, MAX_ID, read_json_object
from gateway.keys import rules as key_rules
from gateway.policy.rules import KNOWN_METHODS, Policy, Rule
from gateway.proxy import auth, decision
from gateway.proxy.decision import Caller, Explanation, roles_caller
from gateway.proxy.refusals import Refusal
from gateway.runtime.appkeys import RUNTIME

EXPLAIN_FIELDS = fields(ExplainRequest)

M_METHOD = f"method must be one of: {', '.join(sorted(KNOWN_METHODS))}"
M_PATH = f"path must be a request target ('/...') of 1 to {MAX_EXPLAIN_TARGET} characters"
M_ROLES_OR_KEY = "give exactly one of roles or key_id"
M_KEY_ID = "key_id must be a positive integer"


def rule_json(rule: Rule) -> dict[str, Any]:
    """Return an allow rule with the role and position it came from."""
    return {"role": rule.role, "index": rule.index, "rule": rule.text}


def roles_json(policy: Policy, grants: frozenset[str] | None) -> dict[str, Any]:
    """Return every role with its description, includes and effective rules."""
    roles = []
    for name in sorted(policy.roles):
        role = policy.roles[name]
        roles.append(
            {
                "name": name,
                "description": role.description,
                "includes": list(role.includes),
                "rules": [rule.text for rule in role.rules],
                "effective_roles": sorted(policy.effective_roles([name])),
                "effective_rules": [rule_json(rule) for rule in policy.rules_for([name])],
                "grantable": grants is None or name in grants,
            }
        )
    protected = ["/" + "/".join(pattern) for pattern in policy.protected]
    return {"roles": roles, "protected": protected}


async def list_roles(request: web.Request) -> web.Response:
    """GET /api/v1/roles: the policy's roles, and which of them the caller may grant."""
    policy = request.app[RUNTIME].policy
    body = roles_json(policy, grant_set_of(current_admin(request)))
    return web.json_response(body, headers={"Cache-Control": NO_STORE})


def _method(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in KNOWN_METHODS:
        raise bad_request(M_METHOD, field="method")
    return value.upper()


def _target(value: Any) -> str:
    """The request-target to explain, as the request line would carry it (decided as is)."""
    if not isinstance(value, str) or not value or len(value) > MAX_EXPLAIN_TARGET:
        raise bad_request(M_PATH, field="path")
    return value


def refusal_json(refusal: Refusal | None) -> dict[str, Any] | None:
    """Return the proxy's answer to a refused request: status, error code and message."""
    if refusal is None:
        return None
    return {"status": refusal.status, "error": refusal.code, "message": refusal.message}


def explanation_json(explanation: Explanation) -> dict[str, Any]:
    """Return a decision, the proxy's refusal if any, and the rule that allowed the request."""
    rule = explanation.rule
    return {
        "allowed": explanation.refusal is None,
        "reason": explanation.reason,
        "refusal": refusal_json(explanation.refusal),
        "rule": None if rule is None else rule_json(rule),
        "path": explanation.path,
    }


async def explain(request: web.Request) -> web.Response:
    """POST /api/v1/policy/explain: would the proxy let these roles (or this key) call METHOD
    PATH; decided by the proxy's own decision function, from the target as sent."""
    runtime = request.app[RUNTIME]
    data = await read_json_object(request, EXPLAIN_FIELDS)
    convert(data, ExplainRequest)  # types and bounds; the rules below give their own words
    method = _method(data.get("method"))
    target = _target(data.get("path"))
    if ("roles" in data) == ("key_id" in data):
        raise bad_request(M_ROLES_OR_KEY, field="roles")
    key: dict[str, Any] | None = None
    caller: Caller
    if "roles" in data:
        roles = key_rules.validate_roles(data["roles"], runtime.policy)
        caller = roles_caller(roles)
    else:
        key_id = data["key_id"]
        if isinstance(key_id, bool) or not isinstance(key_id, int) or not 1 <= key_id <= MAX_ID:
            raise bad_request(M_KEY_ID, field="key_id")
        row = await runtime.store.get_key(key_id)
        if row is None:
            raise not_found()
        roles = row.roles
        moment = clock.now()
        # The proxy's view of the key: its in-memory record, as a request would find it.
        caller = auth.authenticate_digest(runtime.table, row.digest, moment)
        key = {"id": row.id, "name": row.name, "status": key_rules.status_of(row, moment)}
    policy = runtime.policy
    body = explanation_json(decision.explain(policy, method, target, caller))
    body.update(
        method=method,
        target=target,
        roles=list(roles),
        effective_roles=sorted(policy.effective_roles(roles)),
        key=key,
    )
    return web.json_response(body, headers={"Cache-Control": NO_STORE})


async def policy_info(request: web.Request) -> web.Response:
    """GET /api/v1/policy: the policy in force, where it came from and how reloads went."""
    runtime = request.app[RUNTIME]
    policy = runtime.policy
    body: dict[str, Any] = {
        "source": str(runtime.settings.policy),
        "sha256": "",
        "loaded_at": None,
        "roles": len(policy.roles),
        "protected": len(policy.protected),
        "reloads": {},
    }
    holder = runtime.policy_source
    if holder is not None:
        body.update(
            source=holder.loaded.source,
            sha256=holder.loaded.sha256,
            loaded_at=clock.iso(holder.loaded.loaded_at),
            reloads=dict(holder.reloads),
        )
        if holder.last_problems:
            body["last_problems"] = list(holder.last_problems)
    return web.json_response(body, headers={"Cache-Control": NO_STORE})
