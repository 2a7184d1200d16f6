"""`keygate demo`: a 1Integrate-like backend with keygate in front, a demo key and curl lines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
from importlib import resources
from pathlib import Path

from gateway.admin.passwords import hash_password
from gateway.clock import now
from gateway.demo.backend import (
    DEFAULT_USERS,
    TOKEN_AUDIENCE,
    TOKEN_ISSUER,
    start_demo_backend,
)
from gateway.demo.front import find_nginx, running_nginx
from gateway.keys import rules as key_rules
from gateway.policy.rules import load_policy
from gateway.runtime.logs import configure_logging
from gateway.serve.supervisor import check_ports_free, pid_file
from gateway.serve.wiring import running_gateway
from gateway.settings import Listener, load_settings
from gateway.store.factory import store_for

DEMO_KEY_NAME = "demo-integration"
DEMO_ADMIN_NAME = "demo-admin"
DEMO_ROLES = ["1int-user"]
DEFAULT_DATA_DIR = Path("keygate-demo")
DEMO_HOST = "127.0.0.1"  # every demo listener is on loopback
_CONFIG_TEMPLATE = """\
# Written by `keygate demo`: the demo gateway in front of the demo backend.
listen: {{host: 127.0.0.1, port: {port}}}
admin:
  host: 127.0.0.1
  port: {admin_port}
  sign_in:                 # the demo backend's accounts sign in too (admin / admin)
    methods: [local, backend]
    grants:
      claim: groups
      allowed_groups: [1int-admin, 1int-user]
      roles: {{1int-admin: ["*"], 1int-user: [1int-user, 1int-sessions-read]}}
    backend:
      token_url: "http://127.0.0.1:{backend_port}/1Integrate/rest/token"
      jwks_url: "http://127.0.0.1:{backend_port}/1Integrate/rest/jwks"
      issuer: {issuer}
      audience: {audience}
upstream: {{url: "http://127.0.0.1:{backend_port}", timeout: 30}}
store: {{url: "sqlite:///keygate.db"}}
policy: policy.yaml
anonymous: passthrough
log: {{level: info, access_log: true}}
"""
# With --front nginx: keygate decides for the nginx on the same machine.
_FORWARD_AUTH = """\
forward_auth: {prefix: "/_keygate/", trusted_proxies: [127.0.0.1/32, "::1/128"]}
"""


def write_demo_config(
    data_dir: Path, port: int, admin_port: int, backend_port: int, *, forward_auth: bool = False
) -> Path:
    """Write the demo's gateway.yaml and policy.yaml into `data_dir`; return the config path.

    With `forward_auth`, keygate's decision endpoints answer a front proxy on loopback.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    policy = resources.files("gateway").joinpath("examples/policy.yaml").read_text("utf-8")
    (data_dir / "policy.yaml").write_text(policy, encoding="utf-8")
    config = data_dir / "gateway.yaml"
    text = _CONFIG_TEMPLATE.format(
        port=port,
        admin_port=admin_port,
        backend_port=backend_port,
        issuer=TOKEN_ISSUER,
        audience=TOKEN_AUDIENCE,
    )
    config.write_text(text + (_FORWARD_AUTH if forward_auth else ""), encoding="utf-8")
    return config


async def fresh_demo_credentials(config: Path) -> tuple[str, str]:
    """Replace the demo key and the demo admin's password; return (key secret, password).

    Both are shown once, here; the store keeps only the key's digest and a scrypt hash.
    """
    settings = load_settings(config)
    policy = load_policy(settings.policy)
    store = store_for(settings)
    await store.open()
    try:
        old = await store.get_key_by_name(DEMO_KEY_NAME)
        if old is not None:
            await store.delete_key(old.id, "demo")
        password = secrets.token_urlsafe(12)
        password_hash = hash_password(password)
        if await store.get_admin(DEMO_ADMIN_NAME) is None:
            await store.add_admin(DEMO_ADMIN_NAME, password_hash, (), True, "demo")
        else:
            await store.set_admin_password(DEMO_ADMIN_NAME, password_hash, "demo")
        request = {
            "name": DEMO_KEY_NAME,
            "description": "created by keygate demo",
            "roles": DEMO_ROLES,
        }
        created = await key_rules.create_key(store, request, policy, "demo", now())
    finally:
        await store.close()
    return created.secret, password


def admin_lines(password: str, admin_port: int) -> str:
    """Return ready-to-paste curl commands for the admin API."""
    admin = f"-u {DEMO_ADMIN_NAME}:{password} http://127.0.0.1:{admin_port}/api/v1"
    return "\n".join(
        [
            f"# admin API (admin '{DEMO_ADMIN_NAME}', password shown once):",
            f"curl -s {admin}/keys",
            f"curl -s {admin}/keys -H 'Content-Type: application/json' "
            """-d '{"name": "etl-job", "roles": ["1int-sessions-read"]}'""",
            f"curl -s -X POST {admin}/keys/revoke-all -H 'Content-Type: application/json'",
        ]
    )


def page_lines(password: str, admin_port: int) -> str:
    """Return where the API Keys page is and how to sign in to it."""
    return "\n".join(
        [
            f"# API Keys page: open http://127.0.0.1:{admin_port}/ in a browser and sign in",
            f"#   Name: {DEMO_ADMIN_NAME}   Password: {password}",
            "# or with the demo backend's account (its signed token gives the grants):",
            *(f"#   Name: {name}   Password: {secret}" for name, secret in DEFAULT_USERS.items()),
        ]
    )


def curl_lines(secret: str, port: int, via: str = "keygate") -> str:
    """Return ready-to-paste curl commands: allowed, denied and protected calls (through `via`)."""
    base = f"http://127.0.0.1:{port}/1Integrate/rest"
    header = f'-H "X-API-Key: {secret}"'
    return "\n".join(
        [
            f"# every call goes through {via} on 127.0.0.1:{port}",
            "# allowed (1int-user may read sessions):",
            f"curl -i {header} {base}/sessions/",
            "# allowed (1int-sessions-control): create a session, then play it; the backend",
            "# records the key's name as createdBy/lastEditedBy:",
            f"curl -i -X PUT {header} -H 'Content-Type: application/json' -d '{{}}' "
            f"{base}/sessions/demo/s1",
            f"curl -i -X PUT {header} '{base}/sessions/demo/s1?action=play'",
            "# denied, 403 (1int-user may not write rules):",
            f"curl -i -X PUT {header} -H 'Content-Type: application/json' -d '{{}}' "
            f"{base}/rules/demo/r1",
            "# protected, 403 for every key whatever its roles (key management):",
            f"curl -i {header} {base}/apikeys",
            "# no key: passes through, the backend asks for its own login (401):",
            f"curl -i {base}/sessions/",
        ]
    )


async def run_demo(args: argparse.Namespace) -> int:
    """Run backend and gateway until Ctrl-C (or --exit-after seconds)."""
    configure_logging("info")
    data_dir = Path(args.data_dir) if args.data_dir else DEFAULT_DATA_DIR
    # Before anything is touched: a second demo on the same data directory would otherwise
    # replace the running demo's key and admin password, then fail on the port.
    front = args.front == "nginx"
    listeners = [
        ("proxy", Listener(DEMO_HOST, args.port)),
        ("admin", Listener(DEMO_HOST, args.admin_port)),
        ("demo backend", Listener(DEMO_HOST, args.backend_port)),
    ]
    if front:
        find_nginx()  # missing: say how to install it before anything starts
        listeners.append(("nginx", Listener(DEMO_HOST, args.front_port)))
    check_ports_free(listeners)
    config = write_demo_config(
        data_dir, args.port, args.admin_port, args.backend_port, forward_auth=front
    )
    secret, password = await fresh_demo_credentials(config)
    backend = await start_demo_backend("127.0.0.1", args.backend_port)
    try:
        settings = load_settings(config)
        async with contextlib.AsyncExitStack() as stack:
            gateway = await stack.enter_async_context(running_gateway(settings))
            calls = curl_lines(secret, gateway.proxy_port)
            where = f"gateway on 127.0.0.1:{gateway.proxy_port}"
            if front:
                await stack.enter_async_context(
                    running_nginx(data_dir, gateway.proxy_port, args.backend_port, args.front_port)
                )
                calls = curl_lines(secret, args.front_port, "nginx (keygate decides)")
                where += f" deciding for nginx on 127.0.0.1:{args.front_port}"
            # As `keygate serve` does: `keygate policy reload` finds the demo by its pid file.
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, gateway.runtime.reload_policy, "SIGHUP"
            )
            print(
                f"\nkeygate demo: backend on 127.0.0.1:{args.backend_port}, {where}, "
                f"admin on 127.0.0.1:{gateway.admin_port}; data in {data_dir.resolve()}\n"
                f"\nDemo API key '{DEMO_KEY_NAME}' (roles {', '.join(DEMO_ROLES)}), "
                f"shown once:\n\n    {secret}\n\n"
                f"{calls}\n\n"
                f"{admin_lines(password, gateway.admin_port or args.admin_port)}\n\n"
                f"{page_lines(password, gateway.admin_port or args.admin_port)}\n\n"
                f"Manage keys: keygate keys list --config {config}\n"
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
            with pid_file(settings.pid_file):
                await _wait_for_stop(args.exit_after)
    finally:
        await backend.cleanup()
    return 0


async def _wait_for_stop(exit_after: float | None) -> None:
    """Wait for SIGINT/SIGTERM, or for `exit_after` seconds when given."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), exit_after)
