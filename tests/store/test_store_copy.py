"""`keygate store copy`: SQLite to PostgreSQL with keys, admins, audit and usage, verified."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from support.processes import run_cli
from support.stores import StoreBackend, fresh_schema

from gateway.store.base import NewKey
from gateway.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.slow  # runs the CLI as a process


def new_key(name: str) -> NewKey:
    """A NewKey whose digest is derived from its name."""
    digest = hashlib.sha256(name.encode()).digest()
    return NewKey(name=name, description="d", roles=("r",), digest=digest, prefix="kg_abcdefg")


async def seed(path: Path) -> None:
    """An SQLite store with keys (one deleted, one revoked, one used), an admin and audit."""
    store = SqliteKeyStore(path)
    await store.open()
    try:
        used = await store.create_key(new_key("used"), "cli:x")
        gone = await store.create_key(new_key("gone"), "cli:x")
        await store.delete_key(gone.id, "cli:x")
        revoked = await store.create_key(new_key("revoked"), "cli:x")
        await store.set_revoked(revoked.id, True, "cli:x")
        await store.record_usage({used.id: (1700000000.25, 42)})
        await store.add_admin("root", "scrypt$hash", ("r",), False, "cli:x")
    finally:
        await store.close()


def test_copy_sqlite_to_postgres_verifies_and_refuses_to_overwrite(
    tmp_path: Path, postgres_url: str
) -> None:
    source = tmp_path / "keygate.db"
    asyncio.run(seed(source))
    schema = fresh_schema()
    args = ["store", "copy", "--from", f"sqlite:///{source}", "--to", postgres_url]
    args += ["--to-schema", schema]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert "copied 2 keys, 1 admins and 6 audit events" in done.stdout
    assert "(verified)" in done.stdout

    async def compare() -> None:
        sqlite_store = SqliteKeyStore(source)
        await sqlite_store.open(create=False)
        pg_store = StoreBackend("postgres", postgres_url, schema).make()
        await pg_store.open(create=False)
        try:
            assert await pg_store.export_contents() == await sqlite_store.export_contents()
            used = await pg_store.get_key_by_name("used")
            assert used is not None
            assert (used.use_count, used.last_used_at) == (42, 1700000000.25)
            later = await pg_store.create_key(new_key("later"), "t")
            assert later.id == 4  # past the deleted key's id 2 and revoked key's id 3
        finally:
            await sqlite_store.close()
            await pg_store.close()

    asyncio.run(compare())
    again = run_cli(*args)
    assert again.returncode == 1
    assert "is not empty; pass --replace" in again.stderr
    replaced = run_cli(*args, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "copied 2 keys" in replaced.stdout


def test_copy_from_a_missing_source_creates_nothing(tmp_path: Path) -> None:
    done = run_cli(
        "store",
        "copy",
        "--from",
        f"sqlite:///{tmp_path}/none.db",
        "--to",
        f"sqlite:///{tmp_path}/t.db",
    )
    assert done.returncode == 1
    assert "no source database" in done.stderr
    assert not (tmp_path / "none.db").exists()
    assert not (tmp_path / "t.db").exists()
