"""Every problem of a key's create or edit body at once, each naming its field (the page shows
them all beside their fields, not one per submit)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.admin.errors import ApiError, answer_of
from gateway.keys.rules import M_NAME, M_ROLES

# The members of a key body, in the order the page's form shows them.
KEY_MEMBERS = ("name", "description", "roles", "expires_at", "rate_limit")
# What a create must hold, and the words when it does not.
REQUIRED_ON_CREATE = {"name": M_NAME, "roles": M_ROLES}
# Statuses of a problem with a value (a conflict or a grant is not the value's fault).
VALUE_STATUSES = (400, 422)

Check = Callable[[dict[str, Any]], object]


def every_problem(data: Mapping[str, Any], check: Check, creating: bool) -> list[dict[str, str]]:
    """Return each key member's problem as {field, message}: `check` validates one member alone."""
    problems: list[dict[str, str]] = []
    for member in KEY_MEMBERS:
        if member not in data:
            if creating and member in REQUIRED_ON_CREATE:
                problems.append({"field": member, "message": REQUIRED_ON_CREATE[member]})
            continue
        try:
            check({member: data[member]})
        except Exception as error:
            answer = answer_of(error)
            if answer is None:
                raise
            problems.append({"field": member, "message": answer.message})
    return problems


def with_problems(
    error: Exception, data: Mapping[str, Any], check: Check, creating: bool
) -> Exception:
    """Return the answer to raise for a failed key body: a value's problem gains `problems`,
    the list of every member's problem (its own first); any other error is returned as is."""
    answer = answer_of(error)
    if answer is None or answer.status not in VALUE_STATUSES or answer.field not in KEY_MEMBERS:
        return error
    problems = every_problem(data, check, creating)
    own = {"field": answer.field, "message": answer.message}
    others = [problem for problem in problems if problem["field"] != answer.field]
    return ApiError(
        answer.status,
        answer.code,
        answer.message,
        field=answer.field,
        headers=answer.headers,
        extra={**answer.extra, "problems": [own, *others]},
    )
