"""The key JSON an admin is shown: the key, and whether their grants let them manage it."""

from __future__ import annotations

from typing import Any

from gateway.keys import rules as key_rules
from gateway.policy.rules import Policy
from gateway.store.base import Grants, KeyRow
from gateway.store.common import outside


def shown_key(row: KeyRow, now: float, policy: Policy | None, grants: Grants) -> dict[str, Any]:
    """Return a key's JSON for an admin holding `grants` (None: every role).

    `outside_grants` is the store's own rule (`outside`, which refuses edit, roll, revoke,
    reinstate and delete with 403), so the page disables exactly what would be refused.
    """
    shown = key_rules.key_json(row, now, policy)
    beyond = outside(row, grants)
    shown["can_manage"] = not beyond
    shown["outside_grants"] = list(beyond)
    return shown
