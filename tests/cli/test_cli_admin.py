"""The `keygate admins` and `keygate audit` commands, run as real processes on a real store."""

from __future__ import annotations

import csv
import io
import json
import os
import select
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from support.config import init_store

from gateway.admin.app import create_admin_app
from gateway.admin.identity import Identity
from gateway.admin.passwords import DEFAULT_N, cost_of, verify_password
from gateway.admin.sessions import SessionManager
from gateway.policy.rules import load_policy
from gateway.runtime.context import Runtime
from gateway.settings import load_settings
from gateway.store.sqlite import SqliteKeyStore

# Starts real processes (CLI, server, demo): deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]
PASSWORD = "a-good-password"
POLICY_YAML = """\
roles:
  reader:
    description: Read things
    allow: ["GET /a/**"]
  writer:
    allow: ["POST /a/**"]
protected: ["/a/apikeys/**"]
"""
# Run `python -m gateway` on a pseudo-terminal that is its controlling terminal (getpass).
TTY_WRAPPER = (
    "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'gateway', *sys.argv[1:]])"
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY_YAML)
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "upstream: {url: 'http://127.0.0.1:9'}\n"
        "store: {url: 'sqlite:///keygate.db'}\n"
        "policy: policy.yaml\n"
    )
    return init_store(path)


def keygate(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS --config CONFIG` and return the finished process."""
    return subprocess.run(
        [PYTHON, "-m", "gateway", *args, "--config", str(config)],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def admins(config: Path) -> dict[str, Any]:
    listing = json.loads(ok(keygate(config, "admins", "list", "--json")))
    return {item["name"]: item for item in listing}


def password_hash(config: Path, name: str) -> str:
    with sqlite3.connect(config.parent / "keygate.db") as db:
        row = db.execute("SELECT password_hash FROM admins WHERE name = ?", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def database_text(config: Path) -> str:
    """Return every admin and audit row as text, to search for leaked secrets."""
    with sqlite3.connect(config.parent / "keygate.db") as db:
        rows = db.execute("SELECT * FROM admins").fetchall()
        rows += db.execute("SELECT * FROM audit").fetchall()
    return repr(rows)


# ------------------------------------------------------------------ admins


def test_add_list_and_stored_hash(config: Path) -> None:
    out = ok(
        keygate(
            config,
            "admins",
            "add",
            "alice",
            "--password-stdin",
            "--grant",
            "reader",
            stdin=PASSWORD + "\n",
        )
    )
    assert "alice" in out and "reader" in out
    ok(keygate(config, "admins", "add", "root", "--password-stdin", "--grant-all", stdin=PASSWORD))
    ok(keygate(config, "admins", "add", "nobody", "--password-stdin", stdin=PASSWORD + "\r\n"))
    listed = admins(config)
    assert listed["alice"]["grants"] == ["reader"] and listed["alice"]["grant_all"] is False
    assert listed["root"]["grant_all"] is True
    assert listed["nobody"]["grants"] == [] and listed["nobody"]["grant_all"] is False
    assert "password" not in json.dumps(listed)

    encoded = password_hash(config, "alice")
    assert encoded.startswith("scrypt$") and cost_of(encoded) == DEFAULT_N
    assert verify_password(PASSWORD, encoded)
    assert verify_password(PASSWORD, password_hash(config, "nobody"))  # \r\n stripped
    assert PASSWORD not in database_text(config)

    table = ok(keygate(config, "admins", "list"))
    assert "(all roles)" in table and "(none)" in table and "3 admin(s)" in table


def test_add_grants_several_roles(config: Path) -> None:
    ok(
        keygate(
            config,
            "admins",
            "add",
            "multi",
            "--password-stdin",
            "--grant",
            "writer",
            "reader",
            "--grant",
            "reader",
            stdin=PASSWORD,
        )
    )
    assert admins(config)["multi"]["grants"] == ["reader", "writer"]


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        ((), "", 1, "no password"),
        ((), "\n", 1, "must not be empty"),
        ((), "short\n", 1, "at least 8"),
        ((), "kg_aaaaaaaaaaaaaaaaaaaa\n", 1, "API key"),
        (("--grant", "ghost"), PASSWORD, 1, "ghost"),
        (("--grant", "reader", "--grant-all"), PASSWORD, 2, "not allowed with"),
    ],
)
def test_add_refuses_bad_input(
    config: Path, args: tuple[str, ...], stdin: str, code: int, message: str
) -> None:
    fails(
        keygate(config, "admins", "add", "bob", "--password-stdin", *args, stdin=stdin),
        code,
        message,
    )
    if code == 1:
        assert admins(config) == {}


@pytest.mark.parametrize("name", ["has:colon", "with space", "x" * 65])
def test_add_refuses_bad_names(config: Path, name: str) -> None:
    fails(
        keygate(config, "admins", "add", name, "--password-stdin", stdin=PASSWORD), 1, "admin name"
    )


def test_duplicate_admin_is_refused(config: Path) -> None:
    ok(keygate(config, "admins", "add", "alice", "--password-stdin", stdin=PASSWORD))
    fails(
        keygate(config, "admins", "add", "alice", "--password-stdin", stdin=PASSWORD),
        1,
        "already",
    )


def test_passwd_grants_and_remove(config: Path) -> None:
    ok(keygate(config, "admins", "add", "alice", "--password-stdin", stdin=PASSWORD))
    new = "another-password"
    ok(keygate(config, "admins", "passwd", "alice", "--password-stdin", stdin=new + "\n"))
    encoded = password_hash(config, "alice")
    assert verify_password(new, encoded) and not verify_password(PASSWORD, encoded)
    fails(
        keygate(config, "admins", "passwd", "alice", "--password-stdin", stdin="tiny"),
        1,
        "at least 8",
    )
    fails(keygate(config, "admins", "passwd", "ghost", "--password-stdin", stdin=new), 1, "ghost")

    ok(keygate(config, "admins", "grants", "alice", "--grant", "writer"))
    assert admins(config)["alice"]["grants"] == ["writer"]
    ok(keygate(config, "admins", "grants", "alice", "--grant-all"))
    assert admins(config)["alice"]["grant_all"] is True
    ok(keygate(config, "admins", "grants", "alice", "--no-grants"))
    assert admins(config)["alice"] == {**admins(config)["alice"], "grants": [], "grant_all": False}
    fails(keygate(config, "admins", "grants", "alice"), 2, "required")

    ok(keygate(config, "admins", "remove", "alice"))
    assert admins(config) == {}
    fails(keygate(config, "admins", "remove", "alice"), 1, "alice")
    assert new not in database_text(config)


def _run_on_tty(config: Path, args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run keygate with a pseudo-terminal, answering each password prompt in turn."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [PYTHON, "-c", TTY_WRAPPER, *args, "--config", str(config)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
    )
    os.close(slave)
    output = b""
    pending = list(answers)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
                prompts = output.lower().count(b"password: ")
                if pending and prompts > len(answers) - len(pending):
                    os.write(master, pending.pop(0).encode() + b"\n")
            elif process.poll() is not None:
                break
        return process.wait(timeout=30), output.decode(errors="replace")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_add_prompts_twice_without_password_stdin(config: Path) -> None:
    code, output = _run_on_tty(config, ["admins", "add", "typo"], [PASSWORD, PASSWORD + "x"])
    assert code == 1 and "do not match" in output
    assert PASSWORD not in output  # never echoed
    assert admins(config) == {}

    code, output = _run_on_tty(config, ["admins", "add", "tty"], [PASSWORD, PASSWORD])
    assert code == 0, output
    assert output.count("password") >= 2  # two prompts
    assert verify_password(PASSWORD, password_hash(config, "tty"))


# ------------------------------------------------------------------ audit


def test_audit_command_filters_and_json(config: Path) -> None:
    ok(keygate(config, "admins", "add", "alice", "--password-stdin", stdin=PASSWORD))
    created = json.loads(
        ok(keygate(config, "keys", "create", "--name", "etl", "--role", "reader", "--json"))
    )
    ok(keygate(config, "keys", "revoke", "etl"))
    ok(keygate(config, "admins", "remove", "alice"))

    events = json.loads(ok(keygate(config, "audit", "--json")))
    assert [e["action"] for e in events] == ["admin_remove", "revoke", "create", "admin_add"]
    assert all(e["actor"].startswith("cli:") for e in events)
    assert created["secret"] not in json.dumps(events)

    by_key = json.loads(ok(keygate(config, "audit", "--key", "etl", "--json")))
    assert [e["action"] for e in by_key] == ["revoke", "create"]
    by_id = json.loads(ok(keygate(config, "audit", "--key", str(created["id"]), "--json")))
    assert by_id == by_key
    assert len(json.loads(ok(keygate(config, "audit", "--limit", "1", "--json")))) == 1
    actor = events[0]["actor"]
    assert len(json.loads(ok(keygate(config, "audit", "--actor", actor, "--json")))) == 4
    assert json.loads(ok(keygate(config, "audit", "--actor", "nobody", "--json"))) == []
    later = json.loads(ok(keygate(config, "audit", "--since", "2999-01-01T00:00:00Z", "--json")))
    assert later == []

    text = ok(keygate(config, "audit"))
    assert "admin_add" in text and "etl" in text and "4 event(s)" in text
    fails(keygate(config, "audit", "--limit", "zero"), 2, "--limit")
    fails(keygate(config, "audit", "--since", "yesterday"), 2, "--since")


def test_audit_command_action_time_text_and_csv(config: Path) -> None:
    ok(keygate(config, "keys", "create", "--name", "=cmd", "--role", "reader"))
    ok(keygate(config, "keys", "create", "--name", "pct%off", "--role", "reader"))
    ok(keygate(config, "keys", "create", "--name", "pctXoff", "--role", "reader"))
    ok(keygate(config, "keys", "revoke", "pctXoff"))

    def actions(*args: str) -> list[tuple[str, str]]:
        events = json.loads(ok(keygate(config, "audit", *args, "--json")))
        return [(e["action"], e["key_name"]) for e in events]

    assert actions("--action", "revoke") == [("revoke", "pctXoff")]
    assert actions("--action", "revoke,create", "-q", "PCT%") == [("create", "pct%off")]
    assert actions("--text", "pct", "--until", "2000-01-01T00:00:00Z") == []
    assert len(actions("--until", "2999-01-01T00:00:00Z")) == 4
    fails(keygate(config, "audit", "--action", "create,bogus"), 2, "unknown action 'bogus'")
    fails(keygate(config, "audit", "--text", "x" * 201), 2, "at most 200 characters")
    fails(keygate(config, "audit", "--csv", "--json"), 2, "not allowed with")

    table = list(csv.reader(io.StringIO(ok(keygate(config, "audit", "--csv", "-q", "cmd")))))
    assert table[0] == ["id", "at", "actor", "action", "key_id", "key_name", "details"]
    assert [(row[3], row[5]) for row in table[1:]] == [("create", "'=cmd")]


async def test_cli_admin_logs_into_the_admin_api(
    config: Path, aiohttp_client: ClientFactory
) -> None:
    ok(
        keygate(
            config,
            "admins",
            "add",
            "alice",
            "--password-stdin",
            "--grant",
            "reader",
            stdin=PASSWORD,
        )
    )
    settings = load_settings(config)
    store = SqliteKeyStore(config.parent / "keygate.db")
    await store.open()
    try:
        runtime = Runtime(settings=settings, store=store, policy=load_policy(settings.policy))
        await runtime.load_table()
        client = await aiohttp_client(create_admin_app(runtime))
        good = {"Authorization": aiohttp.encode_basic_auth("alice", PASSWORD)}
        resp = await client.post(
            "/api/v1/keys", json={"name": "k", "roles": ["reader"]}, headers=good
        )
        assert resp.status == 201
        resp = await client.post(
            "/api/v1/keys", json={"name": "w", "roles": ["writer"]}, headers=good
        )
        assert resp.status == 403
        bad = {"Authorization": aiohttp.encode_basic_auth("alice", "wrong-password")}
        resp = await client.get("/api/v1/keys", headers=bad)
        assert resp.status == 401
        await client.close()
    finally:
        await store.close()

    failed = json.loads(ok(keygate(config, "audit", "--actor", "local:alice", "--json")))
    assert [e["action"] for e in failed] == ["admin_login_failed", "create"]
    assert failed[0]["details"] == {"remote": "127.0.0.1"}


async def test_admins_sessions_shows_who_is_signed_in_and_where_grants_come_from(
    config: Path,
) -> None:
    """Issue 23: the CLI lists signed-in sessions (local and identity ones), no secret."""
    ok(keygate(config, "admins", "add", "root", "--password-stdin", "--grant-all", stdin=PASSWORD))
    settings = load_settings(config)
    store = SqliteKeyStore(config.parent / "keygate.db")
    await store.open()
    try:
        manager = SessionManager(store, settings.sessions)
        account = await store.get_admin("root")
        assert account is not None
        await manager.start(account, "127.0.0.1")
        identity = Identity("backend", "ada", "Ada L.", ("ops",), frozenset({"reader"}), 4e9)
        await manager.start_identity(identity, {"token": "secret-token-value"}, "127.0.0.1")
    finally:
        await store.close()
    listed = json.loads(ok(keygate(config, "admins", "sessions", "--json")))
    by_actor = {entry["actor"]: entry for entry in listed}
    assert set(by_actor) == {"local:root", "backend:ada"}
    assert by_actor["backend:ada"]["source"] == "backend"
    assert by_actor["backend:ada"]["display_name"] == "Ada L."
    assert by_actor["local:root"]["source"] == "local"
    text = ok(keygate(config, "admins", "sessions"))
    assert "backend:ada" in text and "Ada L." in text and "2 session(s)" in text
    assert "secret-token-value" not in text + json.dumps(listed)
