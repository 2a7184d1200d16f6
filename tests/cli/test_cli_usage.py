"""`keygate keys usage` as a real subprocess on a real SQLite store holding usage rows."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from support.config import create_key, init_store, write_config
from support.processes import run_cli

from gateway.settings import load_settings
from gateway.store.base import UsageHour
from gateway.store.factory import store_for

# Starts real processes: deselect with -m "not slow" for a fast loop.
pytestmark = pytest.mark.slow


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return init_store(write_config(tmp_path / "cfg", "http://127.0.0.1:9"))


def seed_usage(config: Path, name: str, hours: list[tuple[int, int, int]]) -> int:
    """Create key `name` and store (hours ago, forwarded, denied) rows; return this hour."""

    async def seed() -> int:
        await create_key(config, name, ["1int-user"])
        store = store_for(load_settings(config))
        await store.open()
        try:
            row = await store.get_key_by_name(name)
            assert row is not None
            now_hour = int(time.time()) // 3600
            rows = [
                UsageHour(row.id, now_hour - ago, forwarded=f, denied=d, addresses=1)
                for ago, f, d in hours
            ]
            await store.record_usage({}, rows)
        finally:
            await store.close()
        return now_hour

    return asyncio.run(seed())


def test_keys_usage_prints_hours_and_days(config: Path) -> None:
    now_hour = seed_usage(config, "cli-used", [(0, 5, 1), (2, 3, 0), (30, 7, 2)])
    result = run_cli("keys", "usage", "cli-used", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["key_name"] == "cli-used" and data["step"] == "hour"
    by_hour = {p["start"]: p for p in data["points"]}
    assert sum(p["forwarded"] for p in data["points"]) == 8  # the 30-hour-old row is outside
    this_hour = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(now_hour * 3600))
    assert by_hour[this_hour]["forwarded"] == 5 and by_hour[this_hour]["denied"] == 1
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * 86_400))
    result = run_cli(
        "keys", "usage", "cli-used", "--step", "day", "--from", start, "--config", str(config)
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("usage of key cli-used (id ")
    total = lines[-1].split()
    assert total == ["total", "15", "3", "0", "0"]


def test_keys_usage_refuses_bad_windows_and_unknown_keys(config: Path) -> None:
    seed_usage(config, "cli-bounded", [])
    for args, text in (
        (["--from", "2000-01-01T00:00:00Z"], "--from: from must be within usage.keep_days"),
        (["--from", "yesterday"], "ISO-8601"),
        (["--step", "week"], "invalid choice"),
    ):
        result = run_cli("keys", "usage", "cli-bounded", *args, "--config", str(config))
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert text in result.stderr, result.stderr
    result = run_cli("keys", "usage", "no-such-key", "--config", str(config))
    assert result.returncode == 1 and "no key with id or name 'no-such-key'" in result.stderr
