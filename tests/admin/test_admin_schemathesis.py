"""The admin API against its own OpenAPI document: schemathesis, every check, both auth modes.

The admin app runs in this process (a thread with its own loop, a real SQLite store on a
loopback port); schemathesis runs as a real subprocess against it with a bounded number of
examples per operation.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.admin.app import create_admin_app
from gateway.admin.basic_auth import Authenticator
from gateway.admin.middlewares import SECURITY_HEADERS
from gateway.admin.passwords import hash_password
from gateway.admin.sessions import COOKIE as SESSION_COOKIE
from gateway.admin.throttle import LoginThrottle
from gateway.policy.rules import policy_from_data
from gateway.proxy.web_internals import JsonErrorAppRunner
from gateway.runtime.context import Runtime
from gateway.settings import settings_from_data
from gateway.store.sqlite import SqliteKeyStore

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 20  # examples per operation: enough to find a mismatch, bounded in time
RUN_TIMEOUT = 600.0  # seconds the whole schemathesis run may take
START_TIMEOUT = 15.0  # seconds for the admin app to start listening
NO_LOCKOUT = 10**9  # failed logins before a lockout: never, in this run
TEST_COST = 2**4  # scrypt N for the test account: fast
PASSWORD = "schema-password"
REST = "/1Integrate/rest"
POLICY = {
    "roles": {
        "reader": {"description": "Read", "allow": [f"GET {REST}/**"]},
        "writer": {"description": "Write", "include": ["reader"], "allow": [f"POST {REST}/**"]},
    },
    "protected": [f"{REST}/apikeys/**"],
}
# A schema-valid request may still be refused for what JSON Schema cannot say: a role the
# policy does not define, a secret whose checksum fails, a cursor this listing did not make
# for this order. Those answers are 422 with the rule's own words; 400 (the request is not
# what the document admits) and 5xx stay failures.
#
# Sign-in is sent the account's name and password some of the time, as a person types them
# (values it generates alone would never sign in, so it would only ever answer 401).
CONFIG = f"""
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
[dictionaries.admin_names]
values = ["root"]
[dictionaries.admin_passwords]
values = ["{PASSWORD}"]
[parameters]
"body.name" = {{ dictionary = "admin_names", probability = 0.5 }}
"body.password" = {{ dictionary = "admin_passwords", probability = 0.5 }}
"""
_OPERATION = re.compile(r"^_{3,} (?P<operation>[A-Z]+ \S+) _{3,}$")
_FAILURE = re.compile(r"^- (?P<code>ST[0-9]+) ")
SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))


class AdminServer:
    """The admin app on a loopback port, served by a loop in a background thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = 0
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stopped: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.run(),))

    async def run(self) -> None:
        """Open the store, serve until stopped, then close everything."""
        settings = settings_from_data(
            {"upstream": {"url": "http://127.0.0.1:9"}, "store": {"url": "sqlite:///k.db"}},
            self.tmp_path / "gateway.yaml",
            environ={},
        )
        store = SqliteKeyStore(self.tmp_path / "k.db")
        await store.open()
        await store.add_admin("root", hash_password(PASSWORD, n=TEST_COST), (), True, "test")
        runtime = Runtime(settings=settings, store=store, policy=policy_from_data(POLICY, "t"))
        await runtime.load_table()
        # The run sends bad credentials on purpose, many times: no lockout here (its 429 is
        # tested in test_admin_auth.py), so each gets the 401 schemathesis checks for.
        throttle = LoginThrottle(
            delay_base=0.001, delay_max=0.001, lockout_base=0.05, free_failures=NO_LOCKOUT
        )
        app = create_admin_app(
            runtime, authenticator=Authenticator(store, throttle, dummy_cost=TEST_COST)
        )
        # As `keygate serve` runs it: a request line over aiohttp's 8190 bytes (a long query
        # of four-byte characters, percent-encoded) is answered as JSON too.
        runner = JsonErrorAppRunner(app, error_headers=SECURITY_HEADERS)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self.stopped = asyncio.Event()
        self.ready.set()
        try:
            await self.stopped.wait()
        finally:
            await runner.cleanup()
            await store.close()

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        if self.stopped is not None:
            self.loop.call_soon_threadsafe(self.stopped.set)
        self.thread.join(timeout=START_TIMEOUT)
        self.loop.close()


@pytest.fixture
def admin_server(tmp_path: Path) -> Iterator[str]:
    server = AdminServer(tmp_path)
    server.thread.start()
    assert server.ready.wait(START_TIMEOUT), "the admin app did not start"
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


async def _session_auth(base: str) -> str:
    """Sign in; return the config giving the session's cookie and CSRF token to its schemes."""
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{base}/api/v1/session", json={"name": "root", "password": PASSWORD}
        )
        assert response.status == 200, await response.text()
        csrf = (await response.json())["csrf_token"]
        token = response.cookies[SESSION_COOKIE].value
    # The document's own security schemes: reads take the cookie, writes the cookie and the
    # CSRF header (one requirement), as the page sends them.
    return (
        f'[auth.openapi.adminSession]\napi_key = "{token}"\n'
        f'[auth.openapi.adminCsrf]\napi_key = "{csrf}"\n'
    )


async def _document(base: str) -> Any:
    """Return the OpenAPI document the admin API serves (read with Basic credentials)."""
    async with aiohttp.ClientSession() as http:
        response = await http.get(
            f"{base}/api/v1/openapi.json",
            headers={"Authorization": aiohttp.encode_basic_auth("root", PASSWORD)},
        )
        assert response.status == 200, await response.text()
        return await response.json()


def _basic_auth() -> str:
    """Return the config giving the admin's name and password to the Basic scheme."""
    return f'[auth.openapi.adminBasic]\nusername = "root"\npassword = "{PASSWORD}"\n'


def _schemathesis(base: str, auth: str, tmp_path: Path, *exclude: str) -> dict[str, Any]:
    """Run schemathesis with every check against the admin API; return its JSON report."""
    assert SCHEMATHESIS is not None, "schemathesis is in the test extras"
    (tmp_path / "schemathesis.toml").write_text(CONFIG + auth, encoding="utf-8")
    # The document is served to admins only: read as one, tested as served.
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(asyncio.run(_document(base))), encoding="utf-8")
    report = tmp_path / "report.json"
    command = [
        SCHEMATHESIS,
        "run",
        str(document),
        "--url",
        base,
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--workers",
        "1",
        "--no-color",
        # The stateful phase reports its failures without the operation (the schema
        # defines no links yet).
        "--phases",
        "examples,coverage,fuzzing",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        *(option for name in exclude for option in ("--exclude-operation-id", name)),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=tmp_path, check=False
    )
    output = done.stdout + done.stderr
    assert report.is_file(), output  # it ran to its report
    result: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    result["output"] = output
    return result


def failures(output: str) -> set[tuple[str, str]]:
    """Return (operation, code) of each failure schemathesis reports."""
    found: set[tuple[str, str]] = set()
    operation = "?"
    for line in output.splitlines():
        heading = _OPERATION.match(line.strip())
        if heading:
            operation = heading["operation"]
        failure = _FAILURE.match(line.strip())
        if failure:
            found.add((operation, failure["code"]))
    return found


def unexercised(report: dict[str, Any]) -> set[str]:
    """Return the operations that only ever answered 401 or 403 (so were never tested)."""
    return set(report["warnings"]["missing_auth"])


def check(report: dict[str, Any]) -> None:
    """Assert the run tested every selected operation past its auth and found nothing."""
    output = report["output"]
    assert failures(output) == set(), output
    assert report["failures"] == [], output
    operations = report["operations"]
    assert operations["tested"] == operations["selected"], output
    assert unexercised(report) == set(), output


def test_schemathesis_finds_nothing_with_basic_auth(admin_server: str, tmp_path: Path) -> None:
    check(_schemathesis(admin_server, _basic_auth(), tmp_path))


def test_schemathesis_finds_nothing_with_a_session(admin_server: str, tmp_path: Path) -> None:
    auth = asyncio.run(_session_auth(admin_server))
    # Signing out would end the session the run authenticates with (tested on its own).
    check(_schemathesis(admin_server, auth, tmp_path, "signOut"))
