"""CLI commands that touch only the store resolve only the store's secrets; `serve` all of them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from support.config import write_config
from support.processes import NEUTRAL_CWD, PYTHON, cli_env, free_port

PASSWORD = "a-good-password"
# Variables the config names but this environment leaves unset (the store needs none).
UNSET = {"KEYGATE_TEST_UNSET_HEADER", "KEYGATE_TEST_UNSET_WEBHOOK", "KEYGATE_TEST_UNSET_SIGNING"}


def _config(tmp_path: Path) -> Path:
    """A config whose upstream header, webhook secret and signing key come from unset variables."""
    return write_config(
        tmp_path,
        "http://127.0.0.1:9",
        listen_port=free_port(),
        admin_port=free_port(),
        extra={
            "upstream": {"headers": {"X-Service": {"env": "KEYGATE_TEST_UNSET_HEADER"}}},
            "notify": {
                "webhooks": [
                    {
                        "url": "https://hooks.example/k",
                        "secret": {"env": "KEYGATE_TEST_UNSET_WEBHOOK"},
                    }
                ]
            },
            "identity": {"signing_keys": [{"id": "k1", "env": "KEYGATE_TEST_UNSET_SIGNING"}]},
        },
    )


def _cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
    """Run `python -m gateway ARGS` with the UNSET variables surely unset."""
    env = {k: v for k, v in cli_env().items() if k not in UNSET}
    done = subprocess.run(
        [PYTHON, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=NEUTRAL_CWD,
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
def test_store_commands_run_without_the_unrelated_secrets_and_serve_names_them(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    c = ("--config", str(config))
    code, out, err = _cli("init", *c)
    assert code == 0, err
    code, out, err = _cli("admins", "add", "alice", "--password-stdin", "--grant-all", *c,
                          stdin=PASSWORD)  # fmt: skip
    assert code == 0, err
    assert "added admin alice" in out
    code, out, err = _cli("admins", "list", "--json", *c)
    assert code == 0, err
    assert [a["name"] for a in json.loads(out)] == ["alice"]
    code, out, err = _cli("keys", "create", "--name", "bot", "--role", "test-everything", *c)
    assert code == 0, err
    code, out, err = _cli("keys", "list", *c)
    assert code == 0 and "bot" in out, err
    code, out, err = _cli("audit", *c)
    assert code == 0 and "admin" in out, err

    # serve (and policy check) stay strict: every missing variable named, nothing started.
    code, out, err = _cli("serve", *c)
    assert code != 0
    for variable in UNSET:
        assert variable in err, err
    assert "Traceback" not in err
    code, out, err = _cli("policy", "check", *c)
    assert code != 0 and "KEYGATE_TEST_UNSET_HEADER" in err, err


@pytest.mark.slow
def test_the_store_secret_itself_is_still_required(tmp_path: Path) -> None:
    config = _config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["store"] = {
        "url": "postgresql://keygate@127.0.0.1:5432/keygate",
        "password": {"env": "KEYGATE_TEST_UNSET_HEADER"},
    }
    config.write_text(yaml.safe_dump(data))
    code, _out, err = _cli("admins", "list", "--config", str(config))
    assert code != 0
    assert "store.password" in err and "KEYGATE_TEST_UNSET_HEADER" in err, err
    assert "upstream.headers" not in err, err  # only what this command needs is reported
