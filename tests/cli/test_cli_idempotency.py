"""`keygate keys create --idempotency-key KEY`: a scripted create is safe to retry.

The same answers as the admin API's Idempotency-Key: a replay creates nothing and says the
secret cannot be shown again; a different request under the same key is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support.config import ALL_ROLE, init_store, write_config
from support.processes import run_cli

EXIT_REPLAYED = 3  # the documented exit status of a replayed create
SECRET = re.compile(r"kg_[0-9A-Za-z]{30,}")  # a whole secret, not its display prefix


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return init_store(write_config(tmp_path, "http://127.0.0.1:9"))


def _keys(config: Path) -> list[str]:
    done = run_cli("keys", "list", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    return sorted(key["name"] for key in json.loads(done.stdout))


@pytest.mark.slow
def test_a_retried_create_creates_nothing_and_shows_no_secret(config: Path) -> None:
    c = ("--config", str(config))
    first = run_cli("keys", "create", "--name", "etl", "--role", ALL_ROLE,
                    "--idempotency-key", "deploy-42", *c)  # fmt: skip
    assert first.returncode == 0, first.stderr
    secret = SECRET.search(first.stdout)
    assert secret is not None, first.stdout

    again = run_cli("keys", "create", "--name", "etl", "--role", ALL_ROLE,
                    "--idempotency-key", "deploy-42", *c)  # fmt: skip
    assert again.returncode == EXIT_REPLAYED, (again.stdout, again.stderr)
    assert SECRET.search(again.stdout + again.stderr) is None
    assert "nothing was created" in again.stderr
    assert "cannot be shown again" in again.stderr
    assert "etl" in again.stdout  # the key the first run created
    assert "Traceback" not in again.stderr
    assert _keys(config) == ["etl"]

    as_json = run_cli("keys", "create", "--name", "etl", "--role", ALL_ROLE,
                      "--idempotency-key", "deploy-42", "--json", *c)  # fmt: skip
    assert as_json.returncode == EXIT_REPLAYED, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["error"] == "idempotent_replay"
    assert answer["key"]["name"] == "etl" and "secret" not in answer
    assert "cannot be shown again" in answer["message"]

    other = run_cli("keys", "create", "--name", "other", "--role", ALL_ROLE,
                    "--idempotency-key", "deploy-42", *c)  # fmt: skip
    assert other.returncode == 1, (other.stdout, other.stderr)
    assert "different request" in other.stderr and "nothing was created" in other.stderr
    assert SECRET.search(other.stdout) is None
    assert _keys(config) == ["etl"]

    # Another idempotency key is another create (here refused: the name is taken).
    fresh = run_cli("keys", "create", "--name", "etl", "--role", ALL_ROLE,
                    "--idempotency-key", "deploy-43", *c)  # fmt: skip
    assert fresh.returncode == 1 and "name already in use" in fresh.stderr, fresh.stderr

    deleted = run_cli("keys", "delete", "etl", *c)
    assert deleted.returncode == 0, deleted.stderr
    gone = run_cli("keys", "create", "--name", "etl", "--role", ALL_ROLE,
                   "--idempotency-key", "deploy-42", *c)  # fmt: skip
    assert gone.returncode == EXIT_REPLAYED, (gone.stdout, gone.stderr)
    assert "since deleted" in gone.stderr and "nothing was created" in gone.stderr
    assert _keys(config) == []


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["", "has space", "é", "x" * 256])
def test_a_malformed_idempotency_key_is_refused(config: Path, bad: str) -> None:
    done = run_cli("keys", "create", "--name", "etl", "--role", ALL_ROLE,
                   "--idempotency-key", bad, "--config", str(config))  # fmt: skip
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "--idempotency-key must be 1-255 visible ASCII characters" in done.stderr
    assert _keys(config) == []
