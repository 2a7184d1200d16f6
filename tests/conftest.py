"""Shared fixtures: a real demo backend, a config dir with a real SQLite store, keys, gateways.

Everything here runs the real thing: the demo backend listens on a loopback port, the store
is an SQLite file in a temporary directory, keys are minted by `gateway.keys.rules.create_key`
and gateways run either in-process (`running_gateway`) or as `python -m gateway` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.demo.backend import runner_url, start_demo_backend
from gateway.keys import rules as key_rules
from gateway.keys.table import KeyTable
from gateway.policy.rules import load_policy
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.store.base import AuthRow, KeyRow, KeyStore, NewKey
from gateway.store.factory import store_for

PYTHON = sys.executable
REPO_ROOT = Path(__file__).resolve().parent.parent
REST = "/1Integrate/rest"
# Role granting every method on every path (protected paths must still refuse it).
ALL_ROLE = "test-everything"
# Role that may read and write rules and use the echo endpoints.
WRITER_ROLE = "test-rules-writer"
# Seconds a subprocess gateway gets to start accepting connections.
START_TIMEOUT = 15.0
# Working directory of subprocesses: nowhere near the repo's own config/ (no accidental use).
NEUTRAL_CWD = Path(tempfile.gettempdir())


def policy_data() -> dict[str, Any]:
    """Return the example policy plus the test roles, as parsed YAML."""
    text = resources.files("gateway").joinpath("examples/policy.yaml").read_text("utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    data["roles"][ALL_ROLE] = {"description": "every method, every path", "allow": ["* /**"]}
    data["roles"][WRITER_ROLE] = {
        "description": "rules read/write plus echo",
        "include": ["1int-rules-read", "1int-rules-write", "1int-echo"],
    }
    return data


# --------------------------------------------------------------------------- backend


@dataclass
class Backend:
    """A started demo backend: its runner, port and base URL."""

    runner: web.AppRunner
    port: int
    url: str


async def start_backend() -> Backend:
    """Start the demo backend on 127.0.0.1 with a free port."""
    runner = await start_demo_backend("127.0.0.1", 0)
    return Backend(runner, int(runner.addresses[0][1]), runner_url(runner))


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    """The demo backend on a loopback port chosen by the OS."""
    started = await start_backend()
    try:
        yield started
    finally:
        await started.runner.cleanup()


# --------------------------------------------------------------------------- config


def write_config(
    directory: Path,
    upstream_url: str,
    *,
    listen_port: int = 0,
    admin_port: int = 0,
    extra: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
) -> Path:
    """Write gateway.yaml and policy.yaml into `directory`; return the config path.

    `extra` is merged into the config one level deep (e.g. {"upstream": {"timeout": 0.5}}).
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text(
        yaml.safe_dump(dict(policy) if policy is not None else policy_data()),
        encoding="utf-8",
    )
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": listen_port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "upstream": {"url": upstream_url, "timeout": 30},
        "store": {"url": "sqlite:///keygate.db"},
        "policy": "policy.yaml",
        "feed": {"poll_interval": 0.05},
        "usage": {"flush_interval": 0.5},
        "shutdown": {"grace_period": 5},
        "log": {"level": "info", "access_log": True},
    }
    for name, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **value}
        else:
            config[name] = value
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def init_store(config: Path) -> Path:
    """Create the config's database as `keygate init` does (CLI commands never create it)."""

    async def create() -> None:
        settings = load_settings(config)
        store = store_for(settings)
        await store.open(create=True)
        await store.close()

    asyncio.run(create())
    return config


@pytest.fixture
def config_path(tmp_path: Path, backend: Backend) -> Path:
    """A config dir (gateway.yaml, policy.yaml, SQLite store) pointing at the demo backend."""
    return write_config(tmp_path / "config", backend.url)


# --------------------------------------------------------------------------- keys


async def create_key(
    config: Path,
    name: str,
    roles: Sequence[str],
    *,
    expires_at: str | None = None,
    now: float | None = None,
) -> str:
    """Create a key directly in the config's store with key_rules.create_key; return the secret.

    `now` is the moment the lifecycle validates `expires_at` against (pass a past moment to
    mint an already-expired key through the real code path).
    """
    settings = load_settings(config)
    policy = load_policy(settings.policy_path)
    store = store_for(settings)
    await store.open()
    try:
        request = {"name": name, "roles": list(roles), "expires_at": expires_at}
        created = await key_rules.create_key(
            store, request, policy, "test", time.time() if now is None else now
        )
    finally:
        await store.close()
    return created.secret


async def add_key(
    gateway: RunningGateway,
    name: str,
    roles: Sequence[str],
    *,
    expires_at: str | None = None,
    now: float | None = None,
) -> str:
    """Create a key in a running in-process gateway's store and its table; return the secret."""
    runtime = gateway.runtime
    request = {"name": name, "roles": list(roles), "expires_at": expires_at}
    created = await key_rules.create_key(
        runtime.store, request, runtime.policy, "test", time.time() if now is None else now
    )
    await runtime.apply_own_writes()
    return created.secret


@pytest.fixture
async def gateway(config_path: Path) -> AsyncIterator[RunningGateway]:
    """A gateway running in this process in front of the demo backend (admin on a free port)."""
    async with running_gateway(load_settings(config_path)) as running:
        yield running


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class RawResponse:
    """An HTTP/1.1 response exactly as it came off the socket."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def raw_request(
    port: int, request: bytes, *, head: bool = False, timeout: float = 10.0
) -> RawResponse:
    """Send raw request bytes to 127.0.0.1:port and parse one response (no normalisation)."""

    async def exchange() -> RawResponse:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            head_bytes = await reader.readuntil(b"\r\n\r\n")
            lines = head_bytes.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = []
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers.append((name, value.strip()))
            lowered = {name.lower(): value for name, value in headers}
            if head or status in (204, 304) or 100 <= status < 200:
                body = b""
            elif lowered.get("transfer-encoding", "").lower() == "chunked":
                body = await _read_chunked(reader)
            elif "content-length" in lowered:
                body = await reader.readexactly(int(lowered["content-length"]))
            else:
                body = await reader.read()
            return RawResponse(status, headers, body)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.wait_for(exchange(), timeout)


def http_request(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str = "127.0.0.1",
    connection: str = "close",
) -> bytes:
    """Build raw HTTP/1.1 request bytes, header names and duplicates sent exactly as given.

    A `Connection` header (default `close`) is appended so the raw reader sees EOF.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Connection: {connection}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_for_port(
    port: int, timeout: float = START_TIMEOUT, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until 127.0.0.1:port accepts a connection; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as error:
            if process is not None and process.poll() is not None:
                raise AssertionError(
                    f"process exited with {process.returncode} before listening"
                ) from error
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"nothing listening on port {port} after {timeout}s"
                ) from error
            await asyncio.sleep(0.05)
        else:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for gateway subprocesses: this one, without KEYGATE_CONFIG, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "KEYGATE_CONFIG"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` to completion and capture its output."""
    return subprocess.run(
        [PYTHON, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=NEUTRAL_CWD,
        env=cli_env(env),
        timeout=timeout,
        check=False,
    )


async def arun_cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run `python -m gateway ARGS` without blocking the event loop; return (rc, out, err)."""
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=NEUTRAL_CWD,
        env=cli_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@dataclass
class ServeProcess:
    """A `python -m gateway serve` subprocess with its stderr captured to a file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra_pids: list[int] = field(default_factory=list)

    def log_text(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the process, wait for it, return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def start_serve(config: Path, port: int, log_path: Path, *args: str) -> ServeProcess:
    """Start `python -m gateway serve --config CONFIG ARGS`; the caller waits for the port."""
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(
            [PYTHON, "-m", "gateway", "serve", "--config", str(config), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=NEUTRAL_CWD,
            env=cli_env(),
        )
    finally:
        log_file.close()
    return ServeProcess(process, port, log_path)


@contextlib.contextmanager
def reaped(serve: ServeProcess) -> Iterator[ServeProcess]:
    """Make sure a serve process (and any pids noted in extra_pids) is gone afterwards."""
    try:
        yield serve
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait(timeout=10)
        for pid in serve.extra_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Served:
    """A running `serve` subprocess, its config and the secret of its one key."""

    serve: ServeProcess
    config: Path
    secret: str

    @property
    def base(self) -> str:
        """The proxy listener's base URL."""
        return f"http://127.0.0.1:{self.serve.port}"


@contextlib.asynccontextmanager
async def serving(
    directory: Path, backend: Backend, key_name: str, extra: dict[str, Any]
) -> AsyncIterator[Served]:
    """Run `serve` in front of the backend with one all-roles key; it must stop with 0."""
    port = free_port()
    config = write_config(
        directory, backend.url, listen_port=port, admin_port=free_port(), extra=extra
    )
    secret = await create_key(config, key_name, [ALL_ROLE])
    serve = start_serve(config, port, directory.parent / f"{directory.name}-serve.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        yield Served(serve, config, secret)
        assert serve.stop() == 0, serve.log_text()


def rss_bytes(pid: int) -> int:
    """Return a process's resident set size from /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def children_of(pid: int) -> set[int]:
    """Return the pids whose parent is `pid` (scanning /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def fill_table(table: KeyTable, rows: Iterable[KeyRow], seq: int) -> None:
    """Replace a key table's contents with `rows` at feed sequence `seq`, as a cold load does."""
    loader = table.loader()
    loader.add(
        (r.digest, r.id, r.name, r.roles, r.status, r.expires_at, None, None, r.rate_limit)
        for r in rows
    )
    loader.finish(seq)


async def load_auth_rows(store: KeyStore) -> tuple[list[AuthRow], int]:
    """Return every auth row the store's cold load gives, and the sequence they reflect."""
    rows: list[AuthRow] = []
    seq = await store.load_auth(rows.extend)
    return rows, seq


async def load_table_from(store: KeyStore, table: KeyTable) -> None:
    """Fill `table` from the store the way a starting gateway does."""
    loader = table.loader()
    loader.finish(await store.load_auth(loader.add))


# --------------------------------------------------------------------------- store backends

# The PostgreSQL server the tests use; each run makes its own database there and drops it.
POSTGRES_ENV_VAR = "KEYGATE_TEST_POSTGRES"
DEFAULT_TEST_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
# Seconds to wait for the test server before calling it unreachable.
POSTGRES_PROBE_TIMEOUT = 3.0


def postgres_server_url() -> str:
    """The test server's URL: $KEYGATE_TEST_POSTGRES, else the local default."""
    return os.environ.get(POSTGRES_ENV_VAR) or DEFAULT_TEST_POSTGRES


def with_database(url: str, database: str) -> str:
    """Return `url` naming another database on the same server."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the test server for this run (dropped afterwards).

    An unreachable server skips PostgreSQL tests with a clear message, or fails them under
    CI=true: CI must never pass by skipping them.
    """
    import uuid

    import asyncpg

    server = postgres_server_url()
    database = f"keygate_test_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(server, timeout=POSTGRES_PROBE_TIMEOUT)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{database}"'))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
        message = f"PostgreSQL test server {server} unreachable ({error}); set {POSTGRES_ENV_VAR}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield with_database(server, database)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


_schema_counter = iter(range(1, 1_000_000))


def fresh_schema() -> str:
    """A schema name no test of this run has used."""
    return f"t{os.getpid()}_{next(_schema_counter)}"


@dataclass
class StoreBackend:
    """One store backend under test: how to make stores on one fresh database, and raw SQL."""

    name: str
    location: str  # the SQLite file, or the PostgreSQL URL
    schema: str | None = None  # PostgreSQL: the schema this test's store lives in

    def make(self) -> KeyStore:
        """Return a new, unopened store on this test's database (another "process")."""
        if self.name == "sqlite":
            from gateway.store.sqlite import SqliteKeyStore

            return SqliteKeyStore(self.location)
        from gateway.store.postgres import PostgresKeyStore

        return PostgresKeyStore(self.location, schema=self.schema)

    @property
    def refused(self) -> type[Exception]:
        """The error a refusal trigger (see `refuse`) makes the store raise."""
        if self.name == "sqlite":
            import sqlite3

            return sqlite3.IntegrityError
        import asyncpg

        return asyncpg.RaiseError  # type: ignore[no-any-return]

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run SQL behind the store's back ($1-style parameters) and return every row."""
        if self.name == "sqlite":
            import re
            import sqlite3

            connection = sqlite3.connect(self.location, isolation_level=None)
            try:
                return connection.execute(re.sub(r"\$\d+", "?", sql), params).fetchall()
            finally:
                connection.close()
        import asyncpg

        conn = await asyncpg.connect(self.location, server_settings={"search_path": self.schema})
        try:
            return [tuple(row) for row in await conn.fetch(sql, *params)]
        finally:
            await conn.close()

    async def insert_bulk_keys(self, rows: Sequence[tuple[str, str, bytes]]) -> None:
        """Insert (name, roles JSON, digest) keys directly, without feed entries or audit."""
        if self.name == "sqlite":
            import sqlite3

            connection = sqlite3.connect(self.location, isolation_level=None)
            try:
                connection.execute("BEGIN")
                connection.executemany(
                    "INSERT INTO keys (name, roles, status, digest, prefix, created_at,"
                    " created_by, updated_at) VALUES (?, ?, 'active', ?, 'kg_x', 1.0,"
                    " 'cli:root', 1.0)",
                    rows,
                )
                connection.execute("COMMIT")
            finally:
                connection.close()
            return
        import asyncpg

        conn = await asyncpg.connect(self.location, server_settings={"search_path": self.schema})
        try:
            await conn.copy_records_to_table(
                "keys",
                columns=[
                    *("name", "roles", "status", "digest", "prefix"),
                    *("created_at", "created_by", "updated_at"),
                ],
                records=[
                    (name, roles, "active", digest, "kg_x", 1.0, "cli:root", 1.0)
                    for name, roles, digest in rows
                ],
                schema_name=self.schema,
            )
        finally:
            await conn.close()

    async def refuse(self, name: str, event: str, table: str, when: str, message: str) -> None:
        """Add a trigger that makes `event` (INSERT/UPDATE/DELETE) on `table` fail when
        `when` (SQL on OLD/NEW) holds, with `message`."""
        if self.name == "sqlite":
            await self.rows(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {when}"
                f" BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
            return
        await self.rows(
            f"CREATE FUNCTION {name}_fn() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN RAISE EXCEPTION '{message}'; END $$"
        )
        await self.rows(
            f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW WHEN ({when})"
            f" EXECUTE FUNCTION {name}_fn()"
        )

    async def allow(self, name: str, table: str) -> None:
        """Remove a trigger added by `refuse`."""
        if self.name == "sqlite":
            await self.rows(f"DROP TRIGGER {name}")
        else:
            await self.rows(f"DROP TRIGGER {name} ON {table}")


@pytest.fixture(params=["sqlite", "postgres"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """Each store backend in turn, on a fresh database (a file, or a PostgreSQL schema)."""
    if request.param == "sqlite":
        return StoreBackend("sqlite", str(tmp_path / "data" / "keygate.db"))
    url = request.getfixturevalue("postgres_url")
    return StoreBackend("postgres", url, fresh_schema())


@pytest.fixture
async def backend_store(store_backend: StoreBackend) -> AsyncIterator[KeyStore]:
    """An open store of the backend under test."""
    opened = store_backend.make()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def backend_other(
    store_backend: StoreBackend, backend_store: KeyStore
) -> AsyncIterator[KeyStore]:
    """A second store on the same database, standing in for another process or instance."""
    opened = store_backend.make()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def secret_for(name: str) -> str:
    """A stand-in secret per key name (the store only ever sees its digest)."""
    return f"kg_secret_of_{name}"


def new_key(
    name: str,
    roles: tuple[str, ...] = ("reader",),
    description: str = "",
    expires_at: float | None = None,
) -> NewKey:
    """A NewKey whose digest is the SHA-256 of secret_for(name)."""
    secret = secret_for(name)
    return NewKey(
        name=name,
        description=description,
        roles=roles,
        digest=hashlib.sha256(secret.encode()).digest(),
        prefix=secret[:10],
        expires_at=expires_at,
    )


# Concurrent CLI runs `many` starts at once (subprocesses on a 2-core machine).
PARALLEL_RUNS = 4


def many(*commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent `python -m gateway` commands concurrently; results in order."""
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        return list(pool.map(lambda args: run_cli(*args), commands))
