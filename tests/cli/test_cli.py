"""The `keys` and `policy` commands as real `python -m gateway` subprocesses on a real store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.config import ECHO_ROLE, create_key, init_store, write_config
from support.processes import NEUTRAL_CWD, PYTHON, cli_env, many, run_cli

from gateway.keys import keyformat as keys
from gateway.settings import load_settings
from gateway.store.factory import store_for

# Starts real processes (CLI, server, demo): deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow

KEY_FIELDS = {
    "id",
    "name",
    "description",
    "roles",
    "status",
    "prefix",
    "created_at",
    "created_by",
    "updated_at",
    "revoked_at",
    "expires_at",
    "last_used_at",
    "use_count",
    "rolled_at",
    "previous_expires_at",
    "rate_limit",
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config dir with the test policy and an initialised SQLite store (no gateway running)."""
    return init_store(write_config(tmp_path / "cfg", "http://127.0.0.1:9"))


# CLI processes run at once by `many` (each spends ~0.5 s importing; independent runs overlap).


def keys_args(config: Path, *args: str) -> list[str]:
    """Arguments for `keys ARGS --config CONFIG`."""
    return ["keys", *args, "--config", str(config)]


def out_of(result: subprocess.CompletedProcess[str]) -> str:
    """Assert a successful run without a traceback; return stdout."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def seed(config: Path, *names: str, roles: Sequence[str] = ("1int-user",)) -> None:
    """Create keys straight in the store (key_rules.create_key) to set up a CLI test."""

    async def create() -> None:
        for name in names:
            await create_key(config, name, roles)

    asyncio.run(create())


def ok(config: Path, *args: str) -> str:
    """Run `keys ARGS --config CONFIG`; assert success; return stdout."""
    result = run_cli("keys", *args, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def ok_json(config: Path, *args: str) -> Any:
    """Run `keys ARGS --json`; return the parsed stdout."""
    return json.loads(ok(config, *args, "--json"))


def fails(result: subprocess.CompletedProcess[str], *expected: str, one_line: bool = True) -> str:
    """Assert a failed run: non-zero exit, no traceback, each `expected` text on stderr."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("keygate: ")
    if one_line:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    return result.stderr


def fails_keys(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `keys ARGS --config CONFIG` expecting failure."""
    return run_cli("keys", *args, "--config", str(config))


def created_secret(stdout: str) -> str:
    """The secret from `keys create` plain output (the one `secret: ...` line)."""
    lines = [line for line in stdout.splitlines() if line.startswith("secret: ")]
    assert len(lines) == 1, stdout
    return lines[0].removeprefix("secret: ").strip()


def stored_digest(config: Path, name: str) -> bytes:
    """The digest the store holds for key `name`."""

    async def read() -> bytes:
        settings = load_settings(config)
        store = store_for(settings)
        await store.open()
        try:
            row = await store.get_key_by_name(name)
        finally:
            await store.close()
        assert row is not None
        return row.digest

    return asyncio.run(read())


# --------------------------------------------------------------------------- create


def test_create_prints_the_secret_once(config: Path) -> None:
    out = ok(config, "create", "--name", "ci-bot", "--role", "1int-user", "--description", "CI")
    secret = created_secret(out)
    assert keys.is_well_formed(secret)
    assert out.count(secret) == 1
    assert "shown once" in out
    assert stored_digest(config, "ci-bot") == keys.digest(secret)
    assert "name: ci-bot" in out and "description: CI" in out


def test_create_json_has_the_key_json_and_the_secret(config: Path) -> None:
    data = ok_json(
        config,
        "create",
        "--name",
        "json-bot",
        "--role",
        "1int-user",
        "--role",
        ECHO_ROLE,
        "--role",
        "1int-user",
        "--expires",
        "2031-02-03T04:05:06Z",
    )
    assert set(data) == KEY_FIELDS | {"secret"}
    assert data["name"] == "json-bot"
    assert data["roles"] == ["1int-user", ECHO_ROLE]
    assert data["status"] == "active"
    assert data["expires_at"] == "2031-02-03T04:05:06Z"
    assert data["created_by"].startswith("cli:")
    assert data["use_count"] == 0
    assert data["secret"].startswith(data["prefix"])
    assert keys.is_well_formed(data["secret"])
    assert stored_digest(config, "json-bot") == keys.digest(data["secret"])


# --------------------------------------------------------------------------- list, show


def test_list_filters_by_status(config: Path) -> None:
    seed(config, "alpha", "bravo")
    seed(config, "delta", roles=["1int-admin"])
    asyncio.run(
        create_key(
            config,
            "charlie",
            ["1int-user"],
            expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60)),
            now=time.time() - 3600,
        )
    )
    ok(config, "revoke", "bravo")
    listed, active, revoked, expired, table, unknown = many(
        keys_args(config, "list", "--json"),
        keys_args(config, "list", "--status", "active", "--json"),
        keys_args(config, "list", "--status", "revoked", "--json"),
        keys_args(config, "list", "--status", "expired", "--json"),
        keys_args(config, "list", "--status", "revoked"),
        keys_args(config, "list", "--status", "lost"),
    )

    def names(result: subprocess.CompletedProcess[str]) -> list[str]:
        return [key["name"] for key in json.loads(out_of(result))]

    assert names(listed) == ["alpha", "bravo", "delta", "charlie"]
    assert names(active) == ["alpha", "delta"]
    assert names(revoked) == ["bravo"]
    assert names(expired) == ["charlie"]
    keys_listed = json.loads(listed.stdout)
    assert all(set(key) == KEY_FIELDS for key in keys_listed)
    assert {key["name"]: key["status"] for key in keys_listed} == {
        "alpha": "active",
        "bravo": "revoked",
        "charlie": "expired",
        "delta": "active",
    }
    text = out_of(table)
    assert "bravo" in text and "revoked" in text and "alpha" not in text
    assert text.strip().endswith("1 key(s)")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr


def test_show_by_id_and_by_name(config: Path) -> None:
    created = ok_json(config, "create", "--name", "show-bot", "--role", "1int-user")
    by_id, by_name, plain = many(
        keys_args(config, "show", str(created["id"]), "--json"),
        keys_args(config, "show", "show-bot", "--json"),
        keys_args(config, "show", "show-bot"),
    )
    expected = {k: v for k, v in created.items() if k != "secret"}
    assert json.loads(out_of(by_id)) == json.loads(out_of(by_name)) == expected
    text = out_of(plain)
    assert "name: show-bot" in text and f"id: {created['id']}" in text


# --------------------------------------------------------------------------- edit


def test_edit_name_description_roles_and_expiry(config: Path) -> None:
    created = ok_json(config, "create", "--name", "edit-me", "--role", "1int-user")
    key_id = str(created["id"])
    edited = ok_json(
        config,
        "edit",
        "edit-me",
        "--name",
        "edited",
        "--description",
        "now with words",
        "--role",
        "1int-admin",
        "--role",
        ECHO_ROLE,
        "--expires",
        "2032-01-01T00:00:00+02:00",
    )
    assert edited["id"] == created["id"]
    assert edited["name"] == "edited"
    assert edited["description"] == "now with words"
    assert edited["roles"] == ["1int-admin", ECHO_ROLE]
    assert edited["expires_at"] == "2031-12-31T22:00:00Z"
    assert ok_json(config, "show", key_id) == edited
    assert ok_json(config, "edit", key_id, "--expires", "never")["expires_at"] is None
    fails(run_cli("keys", "show", "edit-me", "--config", str(config)), "edit-me")


# --------------------------------------------------------------------------- lifecycle


def test_revoke_reinstate_delete(config: Path) -> None:
    ok(config, "create", "--name", "cycle", "--role", "1int-user")
    revoked = ok_json(config, "revoke", "cycle")
    assert revoked["status"] == "revoked"
    assert revoked["revoked_at"] is not None
    reinstated = ok_json(config, "reinstate", "cycle")
    assert reinstated["status"] == "active"
    assert reinstated["revoked_at"] is None
    out = ok(config, "delete", "cycle")
    assert "deleted" in out and "cycle" in out
    fails(fails_keys(config, "show", "cycle"), "cycle")
    assert ok_json(config, "list") == []


def test_batch_actions_print_counts(config: Path) -> None:
    seed(config, "b1", "b2", "b3")
    assert ok(config, "revoke-all").strip() == "revoked 3 key(s)"
    assert ok_json(config, "revoke-all") == {"count": 0}
    assert ok_json(config, "reinstate-all") == {"count": 3}
    ok(config, "revoke", "b2")
    assert ok(config, "reinstate-all").strip() == "reinstated 1 key(s)"
    ok(config, "revoke", "b1")
    assert ok(config, "delete-revoked").strip() == "deleted 1 key(s)"
    assert [key["name"] for key in ok_json(config, "list")] == ["b2", "b3"]


# --------------------------------------------------------------------------- errors


def test_unknown_role_is_one_clear_line(config: Path) -> None:
    seed(config, "y")
    create, edit = many(
        keys_args(config, "create", "--name", "x", "--role", "no-such-role"),
        keys_args(config, "edit", "y", "--role", "ghost"),
    )
    fails(create, "no-such-role")
    fails(edit, "ghost")
    assert [(key["name"], key["roles"]) for key in ok_json(config, "list")] == [
        ("y", ["1int-user"])
    ]


def test_duplicate_name_is_refused(config: Path) -> None:
    seed(config, "taken", "other")
    create, rename = many(
        keys_args(config, "create", "--name", "taken", "--role", "1int-user"),
        keys_args(config, "edit", "other", "--name", "taken"),
    )
    fails(create, "taken")
    fails(rename, "taken")
    assert [key["name"] for key in ok_json(config, "list")] == ["taken", "other"]


BAD_EXPIRES = [
    ("tomorrow", "tomorrow"),
    ("2030-01-01T00:00:00", "time zone"),
    ("2001-01-01T00:00:00Z", "future"),
    ("2030-13-01T00:00:00Z", "2030-13-01"),
]


def test_bad_expires_is_refused(config: Path) -> None:
    seed(config, "exp2")
    commands = []
    for expires, _ in BAD_EXPIRES:
        commands.append(
            keys_args(
                config, "create", "--name", "exp", "--role", "1int-user", "--expires", expires
            )
        )
        commands.append(keys_args(config, "edit", "exp2", "--expires", expires))
    results = many(*commands)
    for index, (_, expected) in enumerate(BAD_EXPIRES):
        fails(results[2 * index], expected)
        fails(results[2 * index + 1], expected)
    assert [(key["name"], key["expires_at"]) for key in ok_json(config, "list")] == [("exp2", None)]


def test_bad_names_are_refused(config: Path) -> None:
    bad = [("12345", "digits"), ("x" * 65, "64"), (" padded", "spaces"), ("bell\x07", "control")]
    results = many(
        *(keys_args(config, "create", "--name", name, "--role", "1int-user") for name, _ in bad)
    )
    for result, (_, expected) in zip(results, bad, strict=True):
        fails(result, expected)
    assert ok_json(config, "list") == []


def test_unknown_key_is_one_clear_line(config: Path) -> None:
    seed(config, "known")
    commands = [
        keys_args(config, command, ref)
        for command in ("show", "revoke", "reinstate", "delete")
        for ref in ("999", "nobody")
    ]
    commands.append(keys_args(config, "edit", "nobody", "--description", "x"))
    commands.append(keys_args(config, "edit", "known"))
    *unknown, nothing = many(*commands)
    for command, result in zip(commands, unknown, strict=False):
        fails(result, command[2])
    fails(nothing, "nothing to change")


def test_broken_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": 70000, "colour": "blue"},
                "upstream": {"url": "ftp://backend", "timeout": -1},
                "store": {"url": "mysql://db"},
                "anonymous": "maybe",
                "verbose": True,
            }
        ),
        encoding="utf-8",
    )
    results = many(["keys", "list", "--config", str(config)], ["serve", "--config", str(config)])
    for result in results:
        stderr = fails(result, one_line=False)
        for location in (
            "listen.port",
            "listen.colour",
            "upstream.url",
            "upstream.timeout",
            "store.url",
            "anonymous",
            "verbose",
        ):
            assert f": {location}: " in stderr, (location, stderr)


def test_missing_config_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "gateway.yaml"
    stderr = fails(run_cli("keys", "list", "--config", str(missing)), one_line=False)
    assert str(missing) in stderr
    assert "cannot read" in stderr
    assert len(stderr.strip().splitlines()) <= 2


def test_invalid_yaml_config_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("listen: {host: [unclosed\n", encoding="utf-8")
    fails(run_cli("keys", "list", "--config", str(config)), "invalid YAML", one_line=False)


# --------------------------------------------------------------------------- secrets


def test_the_secret_is_never_listed_shown_or_stored(config: Path) -> None:
    secret = created_secret(ok(config, "create", "--name", "hidden", "--role", "1int-user"))
    hidden_part = secret[len(keys.display_prefix(secret)) :]
    ok(config, "edit", "hidden", "--description", "touch the row again")
    ok(config, "revoke", "hidden")
    outputs = [
        out_of(result)
        for result in many(
            keys_args(config, "list"),
            keys_args(config, "list", "--json"),
            keys_args(config, "show", "hidden"),
            keys_args(config, "show", "hidden", "--json"),
        )
    ]
    for output in outputs:
        assert secret not in output
        assert hidden_part not in output
        assert keys.display_prefix(secret) in output  # the non-secret prefix is shown
    files = sorted(config.parent.glob("keygate.db*"))
    assert config.parent / "keygate.db" in files
    for path in files:
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert hidden_part.encode() not in data, path


# --------------------------------------------------------------------------- config location


def test_keygate_config_env_var_is_honoured(config: Path, tmp_path: Path) -> None:
    seed(config, "env-bot")
    from_env = run_cli("keys", "list", "--json", env={"KEYGATE_CONFIG": str(config)})
    assert from_env.returncode == 0, from_env.stderr
    assert [key["name"] for key in json.loads(from_env.stdout)] == ["env-bot"]
    # --config wins over the variable.
    other = init_store(write_config(tmp_path / "other", "http://127.0.0.1:9"))
    explicit = run_cli(
        "keys", "list", "--json", "--config", str(other), env={"KEYGATE_CONFIG": str(config)}
    )
    assert explicit.returncode == 0, explicit.stderr
    assert json.loads(explicit.stdout) == []
    # A variable naming a missing file is that file's error, not the default path's.
    missing = tmp_path / "missing.yaml"
    fails(run_cli("keys", "list", env={"KEYGATE_CONFIG": str(missing)}), one_line=False)


# --------------------------------------------------------------------------- policy check


def test_policy_check_ok(config: Path) -> None:
    result, explicit = many(
        ["policy", "check", "--config", str(config)],
        ["policy", "check", str(config.parent / "policy.yaml")],
    )
    assert "OK" in out_of(result) and "policy.yaml" in result.stdout
    assert "OK" in out_of(explicit)


def test_policy_check_broken_lists_every_problem(tmp_path: Path) -> None:
    broken = tmp_path / "policy.yaml"
    broken.write_text(
        yaml.safe_dump(
            {
                "roles": {
                    "reader": {"allow": ["GET /ok/**", "FETCH /x", "GET no-slash"]},
                    "writer": {"include": ["ghost"], "allow": ["PUT /a/**/b"]},
                    "sloppy": {"allow": ["GET"], "colour": "red"},
                },
                "protected": ["/1Integrate/rest/apikeys/**"],
            }
        ),
        encoding="utf-8",
    )
    stderr = fails(run_cli("policy", "check", str(broken)), one_line=False)
    for expected in (
        "role 'reader', allow[1]",
        "FETCH",
        "role 'reader', allow[2]",
        "no-slash",
        "role 'writer', allow[0]",
        "'ghost'",
        "role 'sloppy', allow[0]",
        "'colour'",
    ):
        assert expected in stderr, (expected, stderr)
    assert "allow[0]: " not in stderr.split("role 'reader'")[1].split("\n")[0]
    # A config whose policy is broken fails `policy check --config` the same way.
    config = write_config(tmp_path / "cfg", "http://127.0.0.1:9")
    (config.parent / "policy.yaml").write_text(broken.read_text(), encoding="utf-8")
    fails(run_cli("policy", "check", "--config", str(config)), "'ghost'", one_line=False)


def test_a_store_file_that_is_not_a_database_is_one_clear_line(config: Path) -> None:
    (config.parent / "keygate.db").write_bytes(b"this is not an SQLite database\n" * 100)
    listing, serving = many(keys_args(config, "list"), ["serve", "--config", str(config)])
    fails(listing, "not a database")
    assert serving.returncode != 0 and "Traceback" not in serving.stderr
    db = config.parent / "keygate.db"
    assert f"keygate: error: store {db}: corrupt (file is not a database)" in serving.stderr


def test_identify_reads_the_secret_from_stdin(config: Path) -> None:
    created = json.loads(ok(config, "create", "--name", "leaked", "--role", "1int-user", "--json"))
    secret = created["secret"]

    def identify(text: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "gateway", "keys", "identify", "--config", str(config), *extra],
            input=text,
            capture_output=True,
            text=True,
            cwd=NEUTRAL_CWD,
            env=cli_env(),
            timeout=30,
            check=False,
        )

    found = identify(secret + "\n", "--json")
    assert json.loads(out_of(found))["id"] == created["id"]
    assert secret not in found.stdout + found.stderr
    plain = out_of(identify(secret))
    assert "leaked" in plain and secret not in plain
    unknown = identify(keys.generate_key() + "\n")
    fails(unknown, "no key")
    bad = identify("kg_not-a-key\n")
    fails(bad, "not a well-formed")
    assert "kg_not-a-key" not in bad.stderr

    # Every look-up is audited (who asked, which key), never with the secret.
    events = json.loads(out_of(run_cli("audit", "--json", "--config", str(config))))
    identified = [event for event in events if event["action"] == "identify"]
    assert [(e["key_id"], e["key_name"], e["details"]["found"]) for e in identified] == [
        (None, None, False),
        (created["id"], "leaked", True),
        (created["id"], "leaked", True),
    ]
    assert all(event["actor"].startswith("cli:") for event in identified)
    assert secret not in json.dumps(events)


def test_list_shows_expiry_and_last_use(config: Path) -> None:
    asyncio.run(create_key(config, "expiring", ["1int-user"], expires_at="2031-02-03T04:05:00Z"))
    seed(config, "unused")
    lines = ok(config, "list").splitlines()
    assert "LAST USED" in lines[0] and "EXPIRES" in lines[0]
    expiring = next(line for line in lines if " expiring " in line)
    assert "2031-02-03 04:05" in expiring
    unused = next(line for line in lines if " unused " in line)
    assert unused.split()[5:7] == ["-", "-"]  # never used, never expires


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith("keygate 0.")


def test_policy_check_names_the_file_as_given_with_line_numbers(tmp_path: Path) -> None:
    real = tmp_path / "real-policy.yaml"
    real.write_text(
        "roles:\n  good:\n    allow:\n      - GET /a\n      - FETCH /b\n"
        "  other:\n    include: [gooood]\n",
        encoding="utf-8",
    )
    link = tmp_path / "policy.yaml"
    link.symlink_to(real)
    result = run_cli("policy", "check", str(link))
    assert result.returncode == 2
    assert "real-policy.yaml" not in result.stderr
    assert f"{link}: role 'good', allow[1]: unknown method 'FETCH'" in result.stderr
    assert "(line 5)" in result.stderr
    assert "unknown role 'gooood' (did you mean 'good'?) (line 6)" in result.stderr


def test_roll_prints_the_new_secret_once_and_keeps_the_old_for_the_overlap(config: Path) -> None:
    made = ok_json(config, "create", "--name", "rolled", "--role", "1int-user")
    out = ok(config, "roll", "rolled", "--overlap", "120")
    secret = created_secret(out)
    assert secret != made["secret"] and keys.is_well_formed(secret)
    assert "shown once" in out and "old secret keeps working until" in out
    shown = ok_json(config, "show", str(made["id"]))
    assert shown["prefix"] == keys.display_prefix(secret)
    assert shown["rolled_at"] is not None and shown["previous_expires_at"] is not None
    assert secret not in ok(config, "show", "rolled") and secret not in ok(config, "list")
    default = ok_json(config, "roll", "rolled")
    assert default["secret"] != secret
    fails(fails_keys(config, "roll", "rolled", "--overlap", "2592001"), "overlap_seconds")
    fails(fails_keys(config, "roll", "nobody"), "nobody")
    events = json.loads(
        out_of(run_cli("audit", "--key", "rolled", "--json", "--config", str(config)))
    )
    assert [event["action"] for event in events] == ["roll", "roll", "create"]


def test_rate_limit_on_create_and_edit(config: Path) -> None:
    made = ok_json(
        config,
        "create",
        "--name",
        "rl",
        "--role",
        "1int-user",
        "--rate-limit",
        "100/minute,burst=20",
    )
    assert made["rate_limit"] == {"requests": 100, "per": "minute", "burst": 20}
    assert "100/minute,burst=20" in ok(config, "show", "rl")
    edited = ok_json(config, "edit", "rl", "--rate-limit", "5/second")
    assert edited["rate_limit"] == {"requests": 5, "per": "second", "burst": 5}
    assert ok_json(config, "edit", "rl", "--rate-limit", "none")["rate_limit"] is None
    for bad in ("100", "100/week", "0/minute", "10/minute,bust=2", "10/minute,burst=0"):
        fails(fails_keys(config, "edit", "rl", "--rate-limit", bad), "rate")


def test_policy_check_reports_rules_that_can_never_match_with_their_line(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "roles:\n"  # line 1
        "  reader:\n"
        "    allow:\n"
        "      - GET /ok/**\n"
        "      - GET /search?q=1\n"  # line 5
        "      - GET /page#top\n"
        "      - GET /a;jsessionid=1/**\n"
        "protected:\n"
        "  - /apikeys/**\n"
        "  - /admin;x/**\n",  # line 10
        encoding="utf-8",
    )
    stderr = fails(run_cli("policy", "check", str(policy)), one_line=False)
    for rule, char, line in (("allow[1]", "?", 5), ("allow[2]", "#", 6), ("allow[3]", ";", 7)):
        found = [text for text in stderr.splitlines() if f"role 'reader', {rule}:" in text]
        assert len(found) == 1, (rule, stderr)
        assert f"'{char}'" in found[0] and found[0].endswith(f"(line {line})"), found
    found = [text for text in stderr.splitlines() if "protected[1]:" in text]
    assert len(found) == 1 and "';'" in found[0] and found[0].endswith("(line 10)"), stderr
    assert "allow[0]" not in stderr and "protected[0]" not in stderr
