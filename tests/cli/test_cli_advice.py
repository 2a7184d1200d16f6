"""`keygate keys advice` as a real subprocess on a real SQLite store holding rule usage."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from support.config import REST, create_key, init_store, write_config
from support.processes import run_cli

from gateway.settings import load_settings
from gateway.store.base import RuleUse
from gateway.store.factory import store_for

# Starts real processes: deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow

SESSIONS = f"{REST}/sessions/**"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return init_store(write_config(tmp_path / "cfg", "http://127.0.0.1:9"))


def seed(config: Path, name: str, roles: list[str], uses: int) -> None:
    """Create key `name` and store `uses` uses today of the sessions-read GET rule."""

    async def run() -> None:
        await create_key(config, name, roles)
        store = store_for(load_settings(config))
        await store.open()
        try:
            row = await store.get_key_by_name(name)
            assert row is not None
            if uses:
                day = int(time.time()) // 86400
                rule = RuleUse(
                    row.id, day, "1int-sessions-read", "GET", SESSIONS, uses, time.time()
                )
                await store.record_usage({}, rules=[rule])
        finally:
            await store.close()

    asyncio.run(run())


def test_keys_advice_prints_the_advice(config: Path) -> None:
    seed(config, "cli-advised", ["1int-user", "1int-rules-write"], 4)
    result = run_cli("keys", "advice", "cli-advised", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["key_name"] == "cli-advised" and data["days"] == 30 and data["requests"] == 4
    assert data["used_roles"] == ["1int-sessions-read"]
    assert data["unused_roles"] == ["1int-rules-write"]
    # Inside the broad 1int-user the key holds, the one role that allows what it did.
    assert data["suggested_roles"] == ["1int-sessions-read"]
    result = run_cli("keys", "advice", "cli-advised", "--days", "7", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("advice for key cli-advised (id ")
    assert "In the last 7 days this key used only role '1int-sessions-read'" in lines[0]
    assert "suggested roles: 1int-sessions-read" in lines
    assert f"       4  1int-sessions-read: GET {SESSIONS}" in lines


def test_keys_advice_of_an_unused_key_and_bad_input(config: Path) -> None:
    seed(config, "cli-idle", ["1int-user"], 0)
    result = run_cli("keys", "advice", "cli-idle", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["unused"] is True and data["suggested_roles"] is None
    for args, text in (
        (["cli-idle", "--days", "0"], "whole number of days"),
        (["cli-idle", "--days", "91"], "usage.keep_days"),
        (["no-such-key"], "no key with id or name 'no-such-key'"),
    ):
        result = run_cli("keys", "advice", *args, "--config", str(config))
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert text in result.stderr, result.stderr
