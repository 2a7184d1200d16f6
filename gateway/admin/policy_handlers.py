"""Admin API policy handlers: the roles an admin can grant, and explaining a decision."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import clock, key_rules
from gateway.admin.accounts import grant_set
from gateway.admin.errors import NO_STORE, bad_request, not_found
from gateway.admin.middlewares import current_admin
from gateway.admin.parsing import MAX_ID, read_json_object
from gateway.policy import KNOWN_METHODS, Decision, Policy, Rule
from gateway.state import RUNTIME

EXPLAIN_FIELDS = frozenset({"method", "path", "roles", "key_id"})
MAX_PATH_LENGTH = 4096  # characters of a path to explain

M_METHOD = f"method must be one of: {', '.join(sorted(KNOWN_METHODS))}"
M_PATH = f"path must be an absolute path ('/...') of at most {MAX_PATH_LENGTH} characters"
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
    body = roles_json(policy, grant_set(current_admin(request)))
    return web.json_response(body, headers={"Cache-Control": NO_STORE})


def _method(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in KNOWN_METHODS:
        raise bad_request(M_METHOD, field="method")
    return value.upper()


def _path(value: Any) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or len(value) > MAX_PATH_LENGTH
        or any(ord(c) <= 32 or ord(c) == 127 for c in value)
    ):
        raise bad_request(M_PATH, field="path")
    return value.split("?", 1)[0].split("#", 1)[0]


def decision_json(decision: Decision) -> dict[str, Any]:
    """Return a policy decision and the rule that decided it (None when nothing allowed it)."""
    return {
        "allowed": decision.allowed,
        "reason": decision.reason,
        "rule": None if decision.rule is None else rule_json(decision.rule),
    }


async def explain(request: web.Request) -> web.Response:
    """POST /api/v1/policy/explain: would these roles (or this key) be allowed METHOD PATH."""
    runtime = request.app[RUNTIME]
    data = await read_json_object(request, EXPLAIN_FIELDS)
    method = _method(data.get("method"))
    path = _path(data.get("path"))
    if ("roles" in data) == ("key_id" in data):
        raise bad_request(M_ROLES_OR_KEY, field="roles")
    key: dict[str, Any] | None = None
    status = "active"
    if "roles" in data:
        roles = key_rules.validate_roles(data["roles"], runtime.policy)
    else:
        key_id = data["key_id"]
        if isinstance(key_id, bool) or not isinstance(key_id, int) or not 1 <= key_id <= MAX_ID:
            raise bad_request(M_KEY_ID, field="key_id")
        row = await runtime.store.get_key(key_id)
        if row is None:
            raise not_found()
        roles = row.roles
        status = key_rules.status_of(row, clock.now())
        key = {"id": row.id, "name": row.name, "status": status}
    body = decision_json(runtime.policy.explain(roles, method, path))
    if status != "active":  # the proxy refuses the key before the policy is asked
        body.update(allowed=False, reason=f"key_{status}", rule=None)
    body.update(
        method=method,
        path=path,
        roles=list(roles),
        effective_roles=sorted(runtime.policy.effective_roles(roles)),
        key=key,
    )
    return web.json_response(body, headers={"Cache-Control": NO_STORE})


async def policy_info(request: web.Request) -> web.Response:
    """GET /api/v1/policy: the policy in force, where it came from and how reloads went."""
    runtime = request.app[RUNTIME]
    policy = runtime.policy
    body: dict[str, Any] = {
        "source": str(runtime.settings.policy_path),
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
