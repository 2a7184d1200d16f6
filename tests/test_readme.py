"""README's Admin API shell block, run as written with bash and curl against `keygate serve`."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.processes import REPO_ROOT, cli_env, free_port, serving, wait_for_port
from support.upstreams import Backend

README = REPO_ROOT / "README.md"
ADMIN_HEADING = "## Admin API"
README_ADMIN = "127.0.0.1:8081"  # the admin listener the README's commands talk to
# Alice's password: what the user types at her prompts and what the example's $PASSWORD holds.
PASSWORDS = {"plain": "s3cret-Pa55word", "with-spaces": "correct horse battery staple"}
OPS_PASSWORD = "ops pass-phrase 2"  # $OPS_PASSWORD, piped in for ops
RUN_TIMEOUT = 60.0  # seconds the whole block may take
KEY_PATTERN = re.compile(r"^kg_[0-9A-Za-z]{36}$")
KEY_NAME = "etl-nightly"

# Prepended to the block. It changes nothing the README says: `curl` stays curl, but it also
# fails on HTTP errors (keeping the body), is bounded, ignores ~/.curlrc, reaches nothing but
# 127.0.0.1 (any other host goes to a dead loopback proxy, so no DNS) and records each call
# (arguments, HTTP status, body) under $CURL_CALLS so the test can check every answer.
HARNESS = r"""
curl() {
  local record
  record=$(printf '%s/%03d' "$CURL_CALLS" "$(find "$CURL_CALLS" -name '*.args' | wc -l)")
  printf '%s\n' "$@" >"$record.args"
  : >"$record.body"
  local rc=0
  command curl -q -sS --fail-with-body --max-time 10 \
    --proxy http://127.0.0.1:9 --noproxy 127.0.0.1 \
    -o "$record.body" -w '%{http_code}' "$@" >"$record.status" || rc=$?
  cat "$record.body"
  return "$rc"
}
"""


@dataclass
class Call:
    """One curl call the block made: method, host:port, URL path, HTTP status and body."""

    method: str
    netloc: str
    path: str
    status: int
    body: str

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def batch_counts(body: Any, scope: str = "all") -> tuple[int, int]:
    """A batch answer's (count, skipped), after checking it names a batch id and its scope."""
    assert re.fullmatch(r"[0-9a-f]{32}", body["batch_id"]) and body["scope"] == scope, body
    return body["count"], body["skipped"]


def admin_block(markdown: str) -> str:
    """Return the one fenced ```sh block of the README's Admin API section."""
    blocks: list[str] = []
    heading = ""
    fence: list[str] | None = None  # lines of the fenced block being read
    wanted = False  # is that block the Admin API's sh block?
    for line in markdown.splitlines():
        if fence is not None:
            if line.strip() == "```":
                if wanted:
                    blocks.append("\n".join(fence) + "\n")
                fence = None
            else:
                fence.append(line)
        elif line.startswith("```"):
            fence = []
            wanted = heading == ADMIN_HEADING and line.strip() == "```sh"
        elif line.startswith("## "):
            heading = line.strip()
    assert len(blocks) == 1, f"want one ```sh block under {ADMIN_HEADING!r}, found {len(blocks)}"
    return blocks[0]


def curl_method(args: list[str]) -> str:
    """The HTTP method a curl command line uses: -X, else POST with -d, else GET."""
    if "-X" in args:
        return args[args.index("-X") + 1]
    return "POST" if "-d" in args else "GET"


def recorded_calls(directory: Path) -> list[Call]:
    """Read back the calls the curl wrapper recorded, in order."""
    calls = []
    for args_file in sorted(directory.glob("*.args")):
        args = args_file.read_text(encoding="utf-8").splitlines()
        urls = [arg for arg in args if arg.startswith("http://")]
        assert len(urls) == 1, args
        status_text = args_file.with_suffix(".status").read_text(encoding="utf-8")
        body = args_file.with_suffix(".body").read_text(encoding="utf-8")
        url = urlsplit(urls[0])
        calls.append(Call(curl_method(args), url.netloc, url.path, int(status_text), body))
    return calls


def run_bounded(
    script: str, env: dict[str, str], cwd: Path, typed: str
) -> subprocess.CompletedProcess[str]:
    """Run `bash -euo pipefail -c SCRIPT` in its own session; kill the whole group on timeout.

    `typed` is what the user types at prompts: with no controlling terminal, getpass reads
    it from standard input.
    """
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(typed, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(
            f"README block still running after {RUN_TIMEOUT}s\n{out}\n{err}"
        ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("password", list(PASSWORDS.values()), ids=list(PASSWORDS))
async def test_readme_admin_block_runs_as_written(
    tmp_path: Path, backend: Backend, password: str
) -> None:
    block = admin_block(README.read_text(encoding="utf-8"))
    assert README_ADMIN in block
    admin_port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    async with serving(
        tmp_path / "readme", backend, "readme-bot", {"admin": {"port": admin_port}}
    ) as served:
        await wait_for_port(admin_port, process=served.serve.process)
        calls_dir = tmp_path / "calls"
        calls_dir.mkdir()
        work = tmp_path / "work"
        work.mkdir()
        env = cli_env(
            {
                "KEYGATE_CONFIG": str(served.config),
                "PASSWORD": password,
                "OPS_PASSWORD": OPS_PASSWORD,
                "CURL_CALLS": str(calls_dir),
                "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        keygate = shutil.which("keygate", path=env["PATH"])
        assert keygate == str(Path(bin_dir) / "keygate"), keygate
        script = HARNESS + block.replace(README_ADMIN, f"127.0.0.1:{admin_port}")
        typed = f"{password}\n{password}\n"  # alice's prompt asks twice
        result = await asyncio.to_thread(run_bounded, script, env, work, typed)
        assert result.returncode == 0, (
            f"README admin block failed (exit {result.returncode})\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    calls = recorded_calls(calls_dir)
    # Every curl in the block ran (bash -e stops at the first failure).
    assert len(calls) == len(re.findall(r"(?:^|[;$(]\s*)curl ", block, re.MULTILINE))
    assert {call.netloc for call in calls} == {f"127.0.0.1:{admin_port}"}
    created = calls[0].json()
    key_id = created["key"]["id"]
    routes = [(call.method, call.path.replace(f"/keys/{key_id}", "/keys/{id}")) for call in calls]
    assert routes == [
        ("POST", "/api/v1/keys"),
        ("GET", "/api/v1/keys"),
        ("GET", "/api/v1/keys/{id}"),
        ("GET", "/api/v1/keys/{id}/rules"),
        ("GET", "/api/v1/keys/{id}/addresses"),
        ("GET", "/api/v1/keys/{id}/advice"),
        ("GET", "/api/v1/keys/summary"),
        ("GET", "/api/v1/keys"),
        ("PATCH", "/api/v1/keys/{id}"),
        ("POST", "/api/v1/keys/{id}/roll"),
        ("POST", "/api/v1/keys/{id}/revoke"),
        ("POST", "/api/v1/keys/{id}/reinstate"),
        ("POST", "/api/v1/keys/batch"),
        ("DELETE", "/api/v1/keys/{id}"),
        ("POST", "/api/v1/keys/revoke-all"),
        ("POST", "/api/v1/keys/reinstate-all"),
        ("POST", "/api/v1/keys/reinstate-all"),
        ("POST", "/api/v1/keys/delete-revoked"),
        ("GET", "/api/v1/roles"),
        ("POST", "/api/v1/policy/explain"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/audit"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    ]
    (create, listing, show, rules, addresses, advice, summary, filtered, edit, roll, revoke,
     reinstate, batch, delete, revoke_all, reinstate_all, reinstate_last, delete_revoked,
     roles, explain, audit, audit_csv, healthz, readyz) = calls  # fmt: skip

    assert "added admin alice" in result.stdout and "added admin ops" in result.stdout
    assert create.status == 201
    assert KEY_PATTERN.match(created["secret"]), created
    assert created["key"]["name"] == KEY_NAME and created["key"]["status"] == "active"
    assert created["key"]["created_by"] == "local:alice"
    assert result.stdout.count(created["secret"]) == 1  # the user sees it, once
    assert listing.status == 200
    assert [item["name"] for item in listing.json()["items"]] == [KEY_NAME]
    assert listing.json()["next_cursor"] is None
    assert show.status == 200 and show.json()["id"] == key_id
    # A key never used: no rules, no addresses, advice says so (and suggests nothing).
    assert rules.status == 200 and rules.json()["items"] == [] and rules.json()["days"] == 30
    assert addresses.status == 200 and addresses.json()["key_name"] == KEY_NAME
    assert addresses.json()["items"] == []
    assert advice.status == 200 and advice.json()["unused"] is True
    assert advice.json()["suggested_roles"] is None
    assert advice.json()["message"] == "In the last 30 days this key made no requests."
    # The served config's own key (every role) and alice's: none revoked, expired or unused.
    assert summary.status == 200 and summary.json() == {
        "total": 2,
        "active": 2,
        "revoked": 0,
        "expired": 0,
        "expiring": 0,
        "unused": 0,
        "unused_days": 30,
    }
    assert filtered.status == 200
    assert [item["name"] for item in filtered.json()["items"]] == [KEY_NAME]
    assert edit.status == 200
    assert edit.json()["description"] == "nightly ETL" and edit.json()["expires_at"] is None
    assert roll.status == 200 and KEY_PATTERN.match(roll.json()["secret"])
    assert roll.json()["key"]["id"] == key_id and roll.json()["key"]["rolled_at"] is not None
    assert revoke.status == 200 and revoke.json()["status"] == "revoked"
    assert reinstate.status == 200 and reinstate.json()["status"] == "active"
    assert batch.status == 200 and batch_counts(batch.json(), "chosen") == (1, 0)
    assert delete.status == 204 and delete.body == ""
    # alice may grant only sessions roles: the fixture's all-roles key is not hers to touch.
    assert (revoke_all.status, batch_counts(revoke_all.json())) == (200, (0, 1))
    assert (reinstate_all.status, batch_counts(reinstate_all.json())) == (200, (0, 0))
    assert (reinstate_last.status, batch_counts(reinstate_last.json(), "batch")) == (200, (0, 0))
    assert (delete_revoked.status, batch_counts(delete_revoked.json())) == (200, (0, 0))
    grantable = {role["name"]: role["grantable"] for role in roles.json()["roles"]}
    assert grantable["1int-sessions-read"] and grantable["1int-sessions-control"]
    assert not grantable["1int-admin"]
    assert explain.status == 200
    assert explain.json()["allowed"] is False and explain.json()["roles"] == ["1int-user"]
    events = [(event["action"], event["actor"], event["key_id"]) for event in audit.json()["items"]]
    assert events == [
        (action, "local:alice", key_id)
        for action in ("delete", "revoke", "reinstate", "revoke", "roll", "edit", "create")
    ]
    table = list(csv.reader(io.StringIO(audit_csv.body)))
    assert audit_csv.status == 200
    assert table[0] == ["id", "at", "actor", "action", "key_id", "key_name", "details"]
    assert [(row[3], row[5]) for row in table[1:]] == [
        ("revoke", KEY_NAME),
        ("revoke", KEY_NAME),
        ("create", KEY_NAME),
    ]
    assert (healthz.status, healthz.json()) == (200, {"status": "ok"})
    assert readyz.status == 200 and readyz.json()["status"] == "ready"
