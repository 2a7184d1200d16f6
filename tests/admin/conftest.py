"""The admin API tests' shared fixtures: a runtime on a copy of the once-migrated SQLite store,
and a test client of the admin app on it (a test module may define its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_admin_api import Client, ClientFactory, make_app, make_runtime

from gateway.runtime.context import Runtime


@pytest.fixture
async def runtime(tmp_path: Path, sqlite_template: Path) -> AsyncIterator[Runtime]:
    """A runtime whose store is a copy of the template (no migration per test)."""
    rt = await make_runtime(tmp_path, sqlite_template)
    try:
        yield rt
    finally:
        await rt.store.close()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, runtime: Runtime) -> Client:
    """A test client of the admin app on `runtime`."""
    return await aiohttp_client(make_app(runtime))
