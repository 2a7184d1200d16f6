"""Fixtures for the forward-auth tests: a recording backend, keygate deciding, a front proxy.

keygate runs in this process (a real gateway on loopback ports) with forward-auth on its
proxy listener and a signing key; nginx or Caddy run as subprocesses from the files in
deploy/, with the test's free ports in place of the addresses those files name.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.config import ALL_ROLE, write_config
from support.fronts import (
    ALL_KEY,
    DEPLOY_BACKEND,
    DEPLOY_FRONT,
    DEPLOY_KEYGATE,
    FORWARD_AUTH_PREFIX,
    LIMITED_KEY,
    NGINX_SITE,
    ONE_AN_HOUR,
    READER_KEY,
    READER_ROLES,
    SIGNING_KEY_ID,
    Decider,
    Front,
    caddy_env,
    find_caddy,
    find_nginx,
    render,
    start_caddy,
    start_nginx,
    stopped_after,
    tool_or_skip,
    wait_listening,
)
from support.processes import free_port
from support.upstreams import RecordingBackend, start_recording_backend

from gateway.keys import rules as key_rules
from gateway.serve.wiring import running_gateway
from gateway.settings import load_settings


@pytest.fixture
async def recording_backend() -> AsyncIterator[RecordingBackend]:
    """The demo backend on a loopback port, noting every request it receives."""
    backend = await start_recording_backend()
    try:
        yield backend
    finally:
        await backend.runner.cleanup()


@pytest.fixture
async def decider(tmp_path: Path, recording_backend: RecordingBackend) -> AsyncIterator[Decider]:
    """keygate with forward-auth on its proxy listener, signing the acting user, three keys."""
    directory = tmp_path / "keygate"
    directory.mkdir()
    signing_key = secrets.token_hex(32).encode()
    key_file = directory / "signing.key"
    key_file.write_bytes(signing_key)
    key_file.chmod(0o600)
    config = write_config(
        directory,
        recording_backend.url,
        extra={
            "anonymous": "passthrough",
            "identity": {"signing_keys": [{"id": SIGNING_KEY_ID, "file": "signing.key"}]},
            "forward_auth": {
                "prefix": FORWARD_AUTH_PREFIX,
                "trusted_proxies": ["127.0.0.1/32", "::1/128"],
            },
        },
    )
    async with running_gateway(load_settings(config)) as gateway:
        runtime = gateway.runtime
        made: dict[str, tuple[str, str]] = {}
        for name, roles, limit in (
            (ALL_KEY, [ALL_ROLE], None),
            (READER_KEY, list(READER_ROLES), None),
            (LIMITED_KEY, [ALL_ROLE], ONE_AN_HOUR),
        ):
            request = {"name": name, "roles": roles, "rate_limit": limit}
            created = await key_rules.create_key(
                runtime.store, request, runtime.policy, "test", time.time()
            )
            made[name] = (created.secret, str(created.row.id))
        await runtime.apply_own_writes()
        yield Decider(
            gateway,
            config,
            {name: secret for name, (secret, _) in made.items()},
            {name: key_id for name, (_, key_id) in made.items()},
            signing_key,
        )


@pytest.fixture(params=["nginx", "caddy"])
async def front(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    decider: Decider,
    recording_backend: RecordingBackend,
) -> AsyncIterator[Front]:
    """nginx (deploy/nginx/keygate-forward-auth.conf) or Caddy (deploy/caddy/Caddyfile)."""
    port = free_port()
    keygate = f"127.0.0.1:{decider.port}"
    backend = f"127.0.0.1:{recording_backend.port}"
    if request.param == "nginx":
        binary = tool_or_skip("nginx", find_nginx())
        site = render(
            NGINX_SITE.read_text(encoding="utf-8"),
            {DEPLOY_KEYGATE: keygate, DEPLOY_BACKEND: backend, DEPLOY_FRONT: f"127.0.0.1:{port}"},
        )
        process = start_nginx(binary, tmp_path / "nginx", site)
        rate_limited = 403
    else:
        binary = tool_or_skip("caddy", find_caddy())
        env = caddy_env(
            tmp_path / "caddy",
            {
                "CADDY_ADMIN": "off",
                "SITE_ADDRESS": f"http://:{port}",
                "BIND_ADDRESS": "127.0.0.1",
                "KEYGATE_ADDRESS": keygate,
                "BACKEND_ADDRESS": backend,
            },
        )
        process = start_caddy(binary, tmp_path / "caddy", env)
        rate_limited = 429
    with stopped_after(process):
        await wait_listening(process, port)
        yield Front(request.param, port, process, rate_limited)
