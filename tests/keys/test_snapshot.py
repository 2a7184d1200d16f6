"""The key-table snapshot file: a round trip, and every damaged or foreign file refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.keys.keyformat import digest as digest_of
from gateway.keys.keyformat import generate_key
from gateway.keys.snapshot import SnapshotError, SnapshotWriter, load_snapshot
from gateway.keys.table import KeyTable
from gateway.ratelimit.limiters import RateLimit
from gateway.store.base import AuthRow

STORE = "postgresql://keygate@db.internal/keygate"


def rows(count: int) -> tuple[list[AuthRow], list[str]]:
    """`count` auth rows (every other one revoked, one with a rate limit) and their secrets."""
    secrets = [generate_key() for _ in range(count)]
    made: list[AuthRow] = []
    for index, secret in enumerate(secrets):
        limit = RateLimit(10, "minute", 5) if index == 0 else None
        status = "revoked" if index % 2 else "active"
        made.append(
            (
                digest_of(secret),
                index + 1,
                f"key-{index}",
                ("r1", "r2"),
                status,
                None,
                None,
                None,
                limit,
            )
        )
    return made, secrets


def written(path: Path, location: str, made: list[AuthRow], seq: int) -> None:
    writer = SnapshotWriter(path, location)
    writer.add(made[: len(made) // 2])
    writer.add(made[len(made) // 2 :])
    assert writer.commit(seq)


def test_a_snapshot_round_trips_and_holds_no_secret(tmp_path: Path) -> None:
    made, secrets = rows(25)
    path = tmp_path / "table.snapshot"
    written(path, STORE, made, 42)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert not any(secret in text for secret in secrets)
    table = KeyTable()
    assert load_snapshot(path, STORE, table) == 25
    assert (len(table), table.seq) == (25, 42)
    first = table.lookup(digest_of(secrets[0]))
    assert first is not None and first.name == "key-0" and first.rate_limit == made[0][8]
    second = table.lookup(digest_of(secrets[1]))
    assert second is not None and second.revoked


@pytest.mark.parametrize(
    "damage",
    ["truncated", "no trailer", "bad row", "other store", "empty", "binary"],
)
def test_a_damaged_or_foreign_snapshot_is_refused_and_changes_nothing(
    tmp_path: Path, damage: str
) -> None:
    made, _ = rows(4)
    path = tmp_path / "table.snapshot"
    written(path, STORE, made, 7)
    lines = path.read_text().splitlines(keepends=True)
    location = STORE
    if damage == "truncated":
        path.write_text("".join(lines[:2]))
    elif damage == "no trailer":
        path.write_text("".join(lines[:-1]))
    elif damage == "bad row":
        path.write_text("".join([lines[0], '["not base64!",1]\n', lines[-1]]))
    elif damage == "other store":
        location = "postgresql://keygate@elsewhere/keygate"
    elif damage == "empty":
        path.write_text("")
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    table = KeyTable()
    with pytest.raises(SnapshotError):
        load_snapshot(path, location, table)
    assert (len(table), table.seq) == (0, 0)


def test_an_unwritable_directory_leaves_no_snapshot_and_raises_nothing(tmp_path: Path) -> None:
    made, _ = rows(2)
    path = tmp_path / "missing-dir" / "table.snapshot"
    writer = SnapshotWriter(path, STORE)
    writer.add(made)
    assert not writer.commit(3)
    assert not path.exists()
