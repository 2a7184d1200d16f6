"""The audit log's filters every reader shares (the known actions, the text bound) and its CSV
export, safe to open in a spreadsheet (API and CLI)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable

from gateway.admin.basic_auth import AUDIT_LOGIN_FAILED, AUDIT_LOGIN_THROTTLED
from gateway.admin.oidc_handlers import AUDIT_REFUSED
from gateway.admin.session_handlers import AUDIT_SIGN_IN, AUDIT_SIGN_OUT
from gateway.keys.rules import AUDIT_IDENTIFY, PATTERN_END
from gateway.store import common
from gateway.store.base import AuditEvent

# Every action the audit log holds: the stores' and the admin listener's.
AUDIT_ACTIONS: tuple[str, ...] = (
    common.ACTION_CREATE,
    common.ACTION_EDIT,
    common.ACTION_REVOKE,
    common.ACTION_REINSTATE,
    common.ACTION_DELETE,
    common.ACTION_REVOKE_ALL,
    common.ACTION_REINSTATE_ALL,
    common.ACTION_DELETE_REVOKED,
    common.ACTION_ROLL,
    common.ACTION_ADMIN_ADD,
    common.ACTION_ADMIN_PASSWD,
    common.ACTION_ADMIN_GRANTS,
    common.ACTION_ADMIN_REMOVE,
    common.ACTION_EXPIRING,
    AUDIT_IDENTIFY,
    AUDIT_SIGN_IN,
    AUDIT_SIGN_OUT,
    AUDIT_REFUSED,
    AUDIT_LOGIN_FAILED,
    AUDIT_LOGIN_THROTTLED,
)
# Characters of the audit's free-text search (q): a substring, not a document.
AUDIT_TEXT_MAX = 200
# Rows one CSV export holds at most (newest first; narrow the filters or page with the
# cursor for more): bounds the answer's size and the store read behind it.
AUDIT_CSV_MAX_ROWS = 10_000
CSV_COLUMNS = ("id", "at", "actor", "action", "key_id", "key_name", "details")
CSV_FILENAME = "keygate-audit.csv"
# A cell a spreadsheet would read as a formula (or whose leading tab/CR hides one) starts
# with one of these: it gets a leading apostrophe (OWASP's CSV injection advice).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class UnknownActionError(ValueError):
    """An action filter names an action the audit log never holds."""


def actions_pattern() -> str:
    """The JSON Schema pattern of an action filter: known actions, commas, ASCII spaces."""
    one = "(?:" + "|".join(AUDIT_ACTIONS) + ")"
    return f"^[ ,]*(?:{one}(?: *,[ ,]*{one})*)?[ ,]*{PATTERN_END}"


def parse_actions(text: str) -> list[str]:
    """Return the actions of a comma-separated list (ASCII spaces and empty items ignored);
    raise UnknownActionError naming the first unknown one."""
    actions = [part.strip(" ") for part in text.split(",") if part.strip(" ")]
    for action in actions:
        if action not in AUDIT_ACTIONS:
            shown = action[:40]
            raise UnknownActionError(f"unknown action {shown!r}; known: {', '.join(AUDIT_ACTIONS)}")
    return list(dict.fromkeys(actions))


def safe_cell(value: str) -> str:
    """Return a CSV cell a spreadsheet shows as text, never runs as a formula."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def audit_csv(events: Iterable[AuditEvent], iso: Callable[[float], str]) -> str:
    """Return the events as CSV: a header row, then one row per event (`at` as `iso`
    writes it, details as JSON)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for event in events:
        writer.writerow(
            [
                str(event.id),
                safe_cell(iso(event.at)),
                safe_cell(event.actor),
                safe_cell(event.action),
                "" if event.key_id is None else str(event.key_id),
                safe_cell(event.key_name or ""),
                safe_cell(json.dumps(dict(event.details), sort_keys=True, ensure_ascii=False)),
            ]
        )
    return out.getvalue()
