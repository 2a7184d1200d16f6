"""Store faults on real SQLite files: deleted, replaced, full, read-only and corrupt stores.

The faults are made the way an operator meets them: the file is removed or moved over, a
small tmpfs is filled to the last byte, the files are made immutable (`chattr +i`, which
binds root too), garbage is written where the database was. Tests run as root (they mount
and chattr); nothing here is simulated inside keygate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.config import ALL_ROLE, REST, create_key, write_config
from support.processes import run_cli
from support.upstreams import Backend

from gateway.admin.passwords import hash_password
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.store import base as store_base
from gateway.store.base import NewKey
from gateway.store.sqlite import SqliteKeyStore

ACTOR = "test"
ADMIN = "root"
ADMIN_PASSWORD = "root-password"
TEST_COST = 2**4  # scrypt N for the test admin: fast
AUTH = {"Authorization": aiohttp.encode_basic_auth(ADMIN, ADMIN_PASSWORD)}
WRITE = {**AUTH, "Content-Type": "application/json"}
KEYS = "/api/v1/keys"
ECHO = f"{REST}/_echo/x"
# Bytes of the tmpfs that is filled up to make "disk full" (room for the store and its WAL).
SMALL_FS_BYTES = 4 * 1024 * 1024
# Bytes written per step while filling a file system to the last byte.
FILL_STEP = 64 * 1024
# What /readyz answers on a healthy gateway.
READY = (200, {"status": "ready", "checks": {"store": True, "policy": True}})
# Seconds a fault or a recovery gets to show (the feed polls every 0.05 s in tests).
SETTLE_TIMEOUT = 5.0


def new_key(name: str) -> NewKey:
    """A NewKey with a digest unique to its name (the store never sees a secret)."""
    digest = name.encode().ljust(32, b"\0")[:32]
    return NewKey(name=name, description="", roles=("reader",), digest=digest, prefix="kg_test00")


def backup(path: Path, to: Path) -> None:
    """Copy a live database with SQLite's backup API (consistent, WAL included)."""
    source = sqlite3.connect(path)
    target = sqlite3.connect(to)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def remove_database(path: Path) -> None:
    """Remove the database file only, as `rm keygate.db` does (its -wal and -shm stay)."""
    path.unlink()


@contextlib.contextmanager
def small_filesystem(directory: Path) -> Iterator[Path]:
    """Mount a SMALL_FS_BYTES tmpfs on `directory` (needs root) and unmount it afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_BYTES},mode=0700", "tmpfs", directory],
        check=True,
        capture_output=True,
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", directory], check=True, capture_output=True)


def fill_up(directory: Path) -> Path:
    """Write a filler file until the file system has no byte left; return the filler."""
    filler = directory / "filler"
    chunk = b"\0" * FILL_STEP
    # Unbuffered: a buffered file would retry what did not fit on close, and fail there.
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
        # Whatever the last buffered write left over, byte by byte.
        for _ in range(FILL_STEP):
            try:
                os.write(out.fileno(), b"\0")
            except OSError:
                break
    return filler


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make files and directories immutable with `chattr +i` (refused even to root)."""
    present = [path for path in paths if path.exists()]
    subprocess.run(["chattr", "+i", *present], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *present], check=True, capture_output=True)


def database_files(path: Path) -> tuple[Path, ...]:
    """The database, its -wal file and their directory.

    Not the -shm file: SQLite maps it into memory, and an immutable mapping that must grow
    kills the process with SIGBUS; an operator's read-only store is the data, not the index.
    """
    return (path, Path(f"{path}-wal"), path.parent)


# --------------------------------------------------------------------------- store level


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the store's file lives."""
    return tmp_path / "data" / "keygate.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteKeyStore]:
    """An open store on a fresh file."""
    opened = SqliteKeyStore(db_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_deleted_file_makes_the_store_unavailable_and_is_never_recreated(
    store: SqliteKeyStore, db_path: Path
) -> None:
    await store.create_key(new_key("before"), ACTOR)
    remove_database(db_path)
    with pytest.raises(store_base.StoreUnavailableError, match="deleted") as caught:
        await store.create_key(new_key("after"), ACTOR)
    assert str(db_path) in str(caught.value)
    with pytest.raises(store_base.StoreUnavailableError, match="deleted"):
        await store.ping()
    with pytest.raises(store_base.StoreUnavailableError, match="deleted"):
        await store.changes_since(0)
    assert not db_path.exists()


async def test_a_replaced_file_is_reopened_and_its_generation_counted(
    store: SqliteKeyStore, db_path: Path, tmp_path: Path
) -> None:
    await store.create_key(new_key("in-backup"), ACTOR)
    saved = tmp_path / "backup.db"
    backup(db_path, saved)
    await store.create_key(new_key("after-backup"), ACTOR)
    generation = store.generation
    remove_database(db_path)
    with pytest.raises(store_base.StoreUnavailableError):
        await store.create_key(new_key("while-gone"), ACTOR)
    os.replace(saved, db_path)  # the operator restores last night's backup
    await store.create_key(new_key("after-restore"), ACTOR)
    assert store.generation == generation + 1
    names = {row.name for row in await store.list_keys()}
    assert names == {"in-backup", "after-restore"}
    await store.ping()


async def test_open_without_create_refuses_a_missing_file_and_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "absent" / "keygate.db"
    with pytest.raises(store_base.StoreMissingError) as caught:
        await SqliteKeyStore(path).open(create=False)
    assert str(path) in str(caught.value)
    assert not path.parent.exists()


async def test_a_corrupt_file_at_open_names_the_file(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not an SQLite database\n" * 200)
    with pytest.raises(store_base.StoreUnavailableError, match="not a database") as caught:
        await SqliteKeyStore(db_path).open()
    assert str(db_path) in str(caught.value)


async def test_a_full_disk_refuses_writes_whole_and_recovers(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small") as directory:
        store = SqliteKeyStore(directory / "keygate.db")
        await store.open()
        try:
            await store.create_key(new_key("before"), ACTOR)
            filler = fill_up(directory)
            with pytest.raises(store_base.StoreUnavailableError, match="disk full"):
                for index in range(200):  # until the WAL needs a byte it does not have
                    await store.create_key(new_key(f"k{index}"), ACTOR)
            with pytest.raises(store_base.StoreUnavailableError, match="disk full"):
                await store.ping()
            acknowledged = {row.name for row in await store.list_keys(limit=1000)}
            filler.unlink()
            await store.ping()
            await store.create_key(new_key("after"), ACTOR)
            names = {row.name for row in await store.list_keys(limit=1000)}
            assert names == acknowledged | {"after"}
        finally:
            await store.close()


async def test_an_immutable_store_refuses_writes_and_recovers(
    store: SqliteKeyStore, db_path: Path
) -> None:
    await store.create_key(new_key("before"), ACTOR)
    with immutable(*database_files(db_path)):
        with pytest.raises(store_base.StoreUnavailableError) as caught:
            await store.create_key(new_key("refused"), ACTOR)
        assert str(db_path) in str(caught.value)
        with pytest.raises(store_base.StoreUnavailableError):
            await store.ping()
        # Another process opening the file now reads it, and is told it is read-only.
        other = SqliteKeyStore(db_path)
        await other.open(create=False)
        try:
            assert [row.name for row in await other.list_keys()] == ["before"]
            with pytest.raises(store_base.StoreUnavailableError, match="read-only"):
                await other.create_key(new_key("refused"), ACTOR)
        finally:
            await other.close()
    await store.ping()
    await store.create_key(new_key("after"), ACTOR)
    assert {row.name for row in await store.list_keys()} == {"before", "after"}


# --------------------------------------------------------------------------- running gateway


@dataclass
class Faulty:
    """A gateway running in this process on a store the test breaks, with one key."""

    gateway: RunningGateway
    session: aiohttp.ClientSession
    db: Path
    secret: str

    @property
    def admin(self) -> str:
        """The admin listener's base URL."""
        return f"http://127.0.0.1:{self.gateway.admin_port}"

    @property
    def proxy(self) -> str:
        """The proxy listener's base URL."""
        return f"http://127.0.0.1:{self.gateway.proxy_port}"

    async def keyed(self, secret: str | None = None) -> int:
        """Status of one keyed request through the proxy."""
        headers = {"X-API-Key": secret or self.secret}
        async with self.session.get(f"{self.proxy}{ECHO}", headers=headers) as response:
            await response.read()
            return response.status

    async def create(self, name: str) -> tuple[int, dict[str, Any]]:
        """POST a new key to the admin API; return (status, JSON body)."""
        body = {"name": name, "roles": [ALL_ROLE]}
        async with self.session.post(f"{self.admin}{KEYS}", json=body, headers=WRITE) as response:
            return response.status, await response.json()

    async def ready(self) -> tuple[int, dict[str, Any]]:
        """GET /readyz; return (status, JSON body)."""
        async with self.session.get(f"{self.admin}/readyz") as response:
            return response.status, await response.json()


async def eventually(probe: Any, expected: Any) -> None:
    """Wait until `await probe()` returns `expected` (within SETTLE_TIMEOUT)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT
    while (value := await probe()) != expected:
        assert loop.time() < deadline, (value, expected)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def faulty_gateway(directory: Path, backend: Backend) -> AsyncIterator[Faulty]:
    """Start a gateway whose store lives in `directory`, with an admin and one key."""
    config = write_config(directory, backend.url)
    secret = await create_key(config, "steady", [ALL_ROLE])
    settings = load_settings(config)
    store = SqliteKeyStore(directory / "keygate.db")
    await store.open()
    try:
        await store.add_admin(
            ADMIN, hash_password(ADMIN_PASSWORD, n=TEST_COST), (), True, "test-setup"
        )
    finally:
        await store.close()
    async with (
        running_gateway(settings) as gateway,
        aiohttp.ClientSession() as session,
    ):
        yield Faulty(gateway, session, directory / "keygate.db", secret)


def expect_unavailable(status: int, body: dict[str, Any], cause: str) -> None:
    """Assert a 503 store_unavailable answer naming `cause`."""
    assert status == 503, body
    assert body["error"] == "store_unavailable", body
    assert cause in body["message"], body


async def test_a_deleted_store_answers_503_serves_from_memory_and_resumes_on_restore(
    tmp_path: Path, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with faulty_gateway(tmp_path / "cfg", backend) as faulty:
        status, created = await faulty.create("acknowledged")
        assert status == 201, created
        saved = tmp_path / "backup.db"
        backup(faulty.db, saved)
        remove_database(faulty.db)

        status, body = await faulty.create("refused")
        expect_unavailable(status, body, "deleted")
        status, body = await faulty.ready()
        assert status == 503 and body["checks"]["store"] is False, body
        assert "deleted" in body["store_error"], body
        assert await faulty.keyed() == 200
        assert await faulty.keyed(created["secret"]) == 200
        assert not faulty.db.exists()
        await asyncio.sleep(0.3)  # several feed polls while the store is gone

        os.replace(saved, faulty.db)
        await eventually(faulty.ready, READY)
        status, after = await faulty.create("after-restore")
        assert status == 201, after
        assert await faulty.keyed(after["secret"]) == 200
        assert await faulty.keyed(created["secret"]) == 200
        names = {row.name for row in await faulty.gateway.runtime.store.list_keys()}
        assert names == {"steady", "acknowledged", "after-restore"}

        async def feed_recovered() -> bool:
            return any("recovered" in r.getMessage() for r in caplog.records)

        await eventually(feed_recovered, True)
    feed_logs = [r for r in caplog.records if r.name == "keygate.feed"]
    messages = [r.getMessage() for r in feed_logs]
    assert len([m for m in messages if "paused" in m]) == 1, messages  # not once per poll
    assert len([m for m in messages if "recovered" in m]) == 1, messages
    assert len([m for m in messages if "reloaded" in m]) == 1, messages


async def test_a_replaced_store_is_reloaded_whole_by_the_proxy(
    tmp_path: Path, backend: Backend
) -> None:
    async with faulty_gateway(tmp_path / "cfg", backend) as faulty:
        replacement_dir = tmp_path / "other"
        other_config = write_config(replacement_dir, backend.url)
        only_in_new = await create_key(other_config, "only-in-new", [ALL_ROLE])
        status, only_in_old = await faulty.create("only-in-old")
        assert status == 201
        assert await faulty.keyed(only_in_old["secret"]) == 200
        os.replace(replacement_dir / "keygate.db", faulty.db)
        await eventually(lambda: faulty.keyed(only_in_new), 200)
        assert await faulty.keyed(only_in_old["secret"]) == 401
        assert await faulty.keyed() == 401  # "steady" lived in the old file only
        # The new file has no admin: the admin API now refuses our login.
        status, body = await faulty.create("x")
        assert status == 401, body


async def test_a_full_disk_answers_503_keeps_usage_and_resumes(
    tmp_path: Path, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    with small_filesystem(tmp_path / "small") as directory:
        async with faulty_gateway(directory / "cfg", backend) as faulty:
            filler = fill_up(directory)
            created: list[str] = []
            for index in range(200):  # until the WAL needs a byte it does not have
                status, body = await faulty.create(f"k{index}")
                if status != 201:
                    break
                created.append(body["name"])
            expect_unavailable(status, body, "disk full")
            status, ready = await faulty.ready()
            assert status == 503 and "disk full" in ready["store_error"], ready
            uses = 20
            for _ in range(uses):
                assert await faulty.keyed() == 200
            await asyncio.sleep(1.2)  # two usage flushes fail meanwhile

            filler.unlink()
            await eventually(faulty.ready, READY)
            status, body = await faulty.create("after")
            assert status == 201, body
            store = faulty.gateway.runtime.store
            names = {row.name for row in await store.list_keys(limit=1000)}
            assert names == {"steady", "after", *created}

            async def steady_uses() -> int:
                row = await store.get_key_by_name("steady")
                assert row is not None
                return row.use_count

            await eventually(steady_uses, uses)
    flush_errors = [r for r in caplog.records if r.name == "keygate.usage"]
    assert len(flush_errors) <= 2, [r.getMessage() for r in flush_errors]
    assert all(r.exc_info is None for r in flush_errors)


async def test_an_immutable_store_answers_503_and_resumes(tmp_path: Path, backend: Backend) -> None:
    async with faulty_gateway(tmp_path / "cfg", backend) as faulty:
        with immutable(*database_files(faulty.db)):
            status, body = await faulty.create("refused")
            assert status == 503 and body["error"] == "store_unavailable", body
            status, ready = await faulty.ready()
            assert status == 503 and ready["store_error"], ready
            assert await faulty.keyed() == 200
        await eventually(faulty.ready, READY)
        status, body = await faulty.create("after")
        assert status == 201, body


async def test_a_corrupt_file_moved_in_answers_503_until_a_good_one_is(
    tmp_path: Path, backend: Backend
) -> None:
    async with faulty_gateway(tmp_path / "cfg", backend) as faulty:
        status, created = await faulty.create("acknowledged")
        assert status == 201
        saved = tmp_path / "backup.db"
        backup(faulty.db, saved)
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"not a database at all\n" * 500)
        os.replace(garbage, faulty.db)
        status, body = await faulty.create("refused")
        expect_unavailable(status, body, "corrupt")
        status, ready = await faulty.ready()
        assert status == 503 and "corrupt" in ready["store_error"], ready
        assert await faulty.keyed(created["secret"]) == 200
        os.replace(saved, faulty.db)
        await eventually(faulty.ready, READY)
        status, body = await faulty.create("after")
        assert status == 201, body
        assert await faulty.keyed(created["secret"]) == 200


# --------------------------------------------------------------------------- commands


STORE_COMMANDS: list[tuple[str, ...]] = [
    ("keys", "list"),
    ("keys", "show", "x"),
    ("keys", "create", "--name", "n", "--role", "1int-user"),
    ("keys", "edit", "x", "--description", "d"),
    ("keys", "revoke", "x"),
    ("keys", "reinstate", "x"),
    ("keys", "delete", "x"),
    ("keys", "revoke-all"),
    ("keys", "reinstate-all"),
    ("keys", "delete-revoked"),
    ("admins", "list"),
    ("admins", "remove", "someone"),
    ("admins", "grants", "someone", "--grant-all"),
    ("audit",),
]


@pytest.mark.slow
def test_store_commands_on_a_missing_store_fail_naming_it_and_create_nothing(
    tmp_path: Path,
) -> None:
    from support.processes import many

    config = write_config(tmp_path / "cfg", "http://127.0.0.1:9")
    db = config.parent / "keygate.db"
    results = many(*([*command, "--config", str(config)] for command in STORE_COMMANDS))
    for command, result in zip(STORE_COMMANDS, results, strict=True):
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (command, result.stderr)
        assert lines[0] == (
            f"keygate: error: no database at {db}; create it with "
            f"'keygate init --config {config}' (or start 'keygate serve')"
        ), command
    assert sorted(path.name for path in config.parent.iterdir()) == ["gateway.yaml", "policy.yaml"]


@pytest.mark.slow
def test_init_creates_the_database_and_says_where(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", "http://127.0.0.1:9")
    db = config.parent / "keygate.db"
    created = run_cli("init", "--config", str(config))
    assert created.returncode == 0, created.stderr
    assert f"created {db}" in created.stdout
    assert db.is_file()
    listed = run_cli("keys", "list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert "0 key(s)" in listed.stdout
    again = run_cli("init", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert f"{db} already exists" in again.stdout


@pytest.mark.slow
def test_startup_errors_name_the_store_file(tmp_path: Path) -> None:
    from support.processes import many

    config = write_config(tmp_path / "cfg", "http://127.0.0.1:9")
    db = config.parent / "keygate.db"
    db.write_bytes(b"this is not an SQLite database\n" * 100)
    listing, serving, init = many(
        ["keys", "list", "--config", str(config)],
        ["serve", "--config", str(config)],
        ["init", "--config", str(config)],
    )
    for result in (listing, serving, init):
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert f"keygate: error: store {db}: corrupt (file is not a database)" in result.stderr


@pytest.mark.slow
async def test_a_store_deleted_under_keygate_serve_answers_503_until_restored(
    tmp_path: Path, backend: Backend
) -> None:
    from support.processes import serving

    async with serving(tmp_path / "cfg", backend, "served", {}) as served:
        db = served.config.parent / "keygate.db"
        saved = tmp_path / "backup.db"
        backup(db, saved)
        remove_database(db)
        admin_port = load_settings(served.config).admin.port
        async with aiohttp.ClientSession() as session:
            admin = f"http://127.0.0.1:{admin_port}"

            async def ready() -> int:
                async with session.get(f"{admin}/readyz") as response:
                    return response.status

            assert await ready() == 503
            headers = {"X-API-Key": served.secret}
            async with session.get(f"{served.base}{ECHO}", headers=headers) as response:
                assert response.status == 200
            # The CLI does not recreate it either.
            listing = run_cli("keys", "list", "--config", str(served.config))
            assert listing.returncode == 1 and "no database at" in listing.stderr
            assert not db.exists()
            os.replace(saved, db)
            await eventually(ready, 200)
        log = served.serve.log_text()
    assert "was deleted" in log
