"""Config writers and key minting: gateway.yaml, policy.yaml, the store `keygate init` makes."""

from __future__ import annotations

import asyncio
import copy
import functools
import shutil
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gateway.keys import rules as key_rules
from gateway.policy.rules import load_policy
from gateway.serve.wiring import RunningGateway
from gateway.settings import load_settings
from gateway.store.factory import store_for

REST = "/1Integrate/rest"


# Role granting every method on every path (protected paths must still refuse it).
ALL_ROLE = "test-everything"


# Role that may use the test upstream's echo and blob routes (tests/support/upstreams.py).
ECHO_ROLE = "test-echo"


# Role that may read and write rules and use the echo endpoints.
WRITER_ROLE = "test-rules-writer"


# libyaml's C loader and emitter where installed: the same YAML, without the pure-Python cost
# every config written here would otherwise pay.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(data: Mapping[str, Any]) -> str:
    """Return `data` as YAML, as yaml.safe_dump writes it."""
    return yaml.dump(dict(data), Dumper=_DUMPER)


@functools.cache
def _test_policy() -> dict[str, Any]:
    """The example policy plus the test roles, parsed once per run (callers get copies)."""
    text = resources.files("gateway").joinpath("examples/policy.yaml").read_text("utf-8")
    data: dict[str, Any] = yaml.load(text, Loader=_LOADER)
    data["roles"][ALL_ROLE] = {"description": "every method, every path", "allow": ["* /**"]}
    data["roles"][ECHO_ROLE] = {
        "description": "the test upstream's echo and blob diagnostics routes",
        "allow": [f"* {REST}/_echo/**", f"GET {REST}/_blob"],
    }
    data["roles"][WRITER_ROLE] = {
        "description": "rules read/write plus echo",
        "include": ["1int-rules-read", "1int-rules-write", ECHO_ROLE],
    }
    return data


@functools.cache
def _test_policy_text() -> str:
    """The test policy as the policy.yaml text write_config writes by default."""
    return _dump(_test_policy())


def policy_data() -> dict[str, Any]:
    """Return the example policy plus the test roles, as parsed YAML (a copy to change)."""
    return copy.deepcopy(_test_policy())


def write_config(
    directory: Path,
    upstream_url: str,
    *,
    listen_port: int = 0,
    admin_port: int = 0,
    extra: Mapping[str, Any] | None = None,
    policy: Mapping[str, Any] | None = None,
    store_from: Path | None = None,
) -> Path:
    """Write gateway.yaml and policy.yaml into `directory`; return the config path.

    `extra` is merged into the config one level deep (e.g. {"upstream": {"timeout": 0.5}}).
    `store_from` is an SQLite store file copied in as the config's store (the conftest
    fixture `sqlite_template`: a freshly created store, without the cost of creating one).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if store_from is not None:
        shutil.copyfile(store_from, directory / "keygate.db")
    (directory / "policy.yaml").write_text(
        _dump(policy) if policy is not None else _test_policy_text(),
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
    path.write_text(_dump(config), encoding="utf-8")
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
    policy = load_policy(settings.policy)
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
