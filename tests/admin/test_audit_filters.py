"""Audit filters (actions, until, partial text with LIKE metacharacters) and the CSV export
(header, bound, attachment, formula injection), through the admin API on a real store."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from test_admin_api import (
    KEYS,
    ROOT,
    WRITE,
    Client,
    assert_documented,
    create,
    expect,
    expect_error,
)

from gateway.admin import audit_handlers
from gateway.admin.audit_export import AUDIT_CSV_MAX_ROWS, AUDIT_TEXT_MAX
from gateway.runtime.context import Runtime

AUDIT = "/api/v1/audit"


async def audit(client: Client, **params: str) -> list[dict[str, Any]]:
    body = await expect(await client.get(AUDIT, params=params, headers=ROOT), 200)
    assert_documented(AUDIT, "get", 200, body)
    return list(body["items"])


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


async def test_filter_by_actions_and_time(client: Client, runtime: Runtime) -> None:
    made = await create(client, "act-a")
    await create(client, "act-b")
    await expect(await client.post(f"{KEYS}/{made['key']['id']}/revoke", headers=WRITE), 200)
    got = await audit(client, action="revoke")
    assert [(e["action"], e["key_name"]) for e in got] == [("revoke", "act-a")]
    got = await audit(client, action=" create , revoke,,")
    assert [e["action"] for e in got] == ["revoke", "create", "create"]
    answer = await client.get(AUDIT, params={"action": "create,bogus"}, headers=ROOT)
    body = await expect_error(answer, 400, "invalid_request", "action")
    assert "'bogus'" in body["message"] and "create" in body["message"]
    first = got[-1]["at"]
    stamp = datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp()
    assert [e["key_name"] for e in await audit(client, action="create", until=first)] == ["act-a"]
    later = await audit(client, since=iso(stamp + 3600))
    assert later == []
    assert len(await audit(client, since=iso(stamp - 0.001), until=iso(time.time() + 60))) == 3
    answer = await client.get(
        AUDIT, params={"since": iso(stamp), "until": iso(stamp - 1)}, headers=ROOT
    )
    await expect_error(answer, 422, "out_of_range", "until")
    answer = await client.get(AUDIT, params={"until": "tomorrow"}, headers=ROOT)
    await expect_error(answer, 400, "invalid_request", "until")


async def test_text_search_escapes_like_wildcards(client: Client, runtime: Runtime) -> None:
    for name in ("pct%off", "pctxoff", "under_score", "underXscore", "Mixed-Case"):
        await create(client, name)
    await runtime.store.append_audit("local:someone", "identify", None, None, {"note": "50%"})
    assert [e["key_name"] for e in await audit(client, q="pct%")] == ["pct%off"]
    assert [e["key_name"] for e in await audit(client, q="r_s")] == ["under_score"]
    assert [e["key_name"] for e in await audit(client, q="MIXED-case")] == ["Mixed-Case"]
    # Over the actor and the details JSON too.
    assert [e["actor"] for e in await audit(client, q="SOMEONE")] == ["local:someone"]
    assert [e["details"] for e in await audit(client, q='"50%"')] == [{"note": "50%"}]
    assert await audit(client, q="%") == [
        e for e in await audit(client) if "%" in str(e["key_name"]) + str(e["details"])
    ]
    answer = await client.get(AUDIT, params={"q": "x" * (AUDIT_TEXT_MAX + 1)}, headers=ROOT)
    await expect_error(answer, 400, "invalid_request", "q")
    assert await audit(client, q="x" * AUDIT_TEXT_MAX) == []


async def test_text_search_finds_what_the_details_say(client: Client) -> None:
    # Details are stored as JSON with escapes (\u00fc, \"); q matches the text as shown.
    for name, description in (("zk", "Zürich-export"), ("jp", 'the "日本" feed')):
        made = await create(client, name)
        answer = await client.patch(
            f"{KEYS}/{made['key']['id']}", json={"description": description}, headers=WRITE
        )
        await expect(answer, 200)

    async def described(q: str) -> list[str]:
        return [e["details"]["after"]["description"] for e in await audit(client, q=q)]

    assert await described("zürich-EXPORT") == ["Zürich-export"]
    assert await described('"日本" FEED') == ['the "日本" feed']
    assert await described("\\u00fc") == []  # the storage escape typed literally
    assert await described("\\") == []


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def test_csv_export_is_safe_and_bounded(
    client: Client, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("=HYPERLINK(1)", "+SUM(2)", "-3+4", "@cmd", "plain"):
        await create(client, name)
    await runtime.store.append_audit("\tlocal:tab", "identify", None, "\rcr", {"a": "=1"})
    only = {"format": "csv", "action": "create,identify"}  # not the setup's admin_add
    answer = await client.get(AUDIT, params=only, headers=ROOT)
    assert answer.status == 200
    assert answer.content_type == "text/csv" and answer.charset == "utf-8"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="keygate-audit.csv"'
    assert "X-Keygate-Truncated" not in answer.headers
    table = rows(await answer.text())
    assert table[0] == ["id", "at", "actor", "action", "key_id", "key_name", "details"]
    assert len(table) == 1 + 6
    tab_row = table[1]
    assert tab_row[2] == "'\tlocal:tab" and tab_row[5] == "'\rcr" and tab_row[4] == ""
    assert tab_row[6] == '{"a": "=1"}'  # starts with {: a formula never
    names = [row[5] for row in table[2:]]
    assert names == ["plain", "'@cmd", "'-3+4", "'+SUM(2)", "'=HYPERLINK(1)"]
    created = table[-1]
    assert created[3] == "create" and created[1].endswith("Z") and created[0].isdigit()
    assert '"roles": ["reader"]' in created[6]
    # Accept: text/csv asks for the same; the filters apply.
    answer = await client.get(AUDIT, params={"q": "plain"}, headers={**ROOT, "Accept": "text/csv"})
    assert answer.content_type == "text/csv"
    assert [row[5] for row in rows(await answer.text())[1:]] == ["plain"]
    answer = await client.get(AUDIT, params={"format": "xml"}, headers=ROOT)
    await expect_error(answer, 400, "invalid_request", "format")
    # The bound: at most AUDIT_CSV_MAX_ROWS rows, and a header saying more matched.
    assert AUDIT_CSV_MAX_ROWS == 10_000
    monkeypatch.setattr(audit_handlers, "AUDIT_CSV_MAX_ROWS", 4)
    answer = await client.get(AUDIT, params={"format": "csv"}, headers=ROOT)
    assert answer.headers["X-Keygate-Truncated"] == "true"
    assert len(rows(await answer.text())) == 1 + 4


async def test_an_entrys_own_time_finds_it_as_since_and_as_until(
    client: Client, runtime: Runtime
) -> None:
    """`at` is shown to the microsecond, rounded from the stored time: passed back as since
    or until it must still include its own entry (the bounds take the whole microsecond)."""
    for index in range(20):
        await runtime.store.append_audit("local:clock", "identify", None, f"at-{index}", {})
    entries = await audit(client, actor="local:clock", limit="50")
    assert len(entries) == 20
    for entry in entries:
        found = await audit(client, actor="local:clock", since=entry["at"], until=entry["at"])
        assert entry["id"] in [e["id"] for e in found], entry
