"""Command line: serve, demo, keys, admins, audit and policy commands."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import inspect
import json
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway import lifecycle
from gateway.cache import now as current_time
from gateway.cli_admin import register as register_admin_commands
from gateway.policy import Policy, PolicyError, load_policy
from gateway.settings import ConfigError, Settings, config_path_from, load_settings
from gateway.store.base import KeyChanges, KeyRow, KeyStore, NameConflictError, NotFoundError
from gateway.store.factory import store_from_url

Handler = Callable[[argparse.Namespace], Awaitable[int] | int]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def cli_actor() -> str:
    """Return the audit actor for CLI commands: `cli:<os user>`."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:unknown"


def load_config(args: argparse.Namespace) -> Settings:
    """Load the settings named by --config, $KEYGATE_CONFIG or config/gateway.yaml."""
    return load_settings(config_path_from(getattr(args, "config", None)))


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[KeyStore]:
    """Open the configured store for one CLI command and close it afterwards."""
    store = store_from_url(settings.store_url, settings.base_dir)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def resolve_key(store: KeyStore, ref: str) -> KeyRow:
    """Find a key by numeric id or exact name, or raise CliError."""
    row = await store.get_key(int(ref)) if ref.isdigit() else await store.get_key_by_name(ref)
    if row is None:
        raise CliError(f"no key with id or name {ref!r}")
    return row


def print_key(row: KeyRow, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """Print one key as JSON or as aligned `field: value` lines."""
    data = lifecycle.key_json(row, current_time())
    if extra:
        data.update(extra)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    for field, value in data.items():
        shown = ", ".join(value) if isinstance(value, list) else ("" if value is None else value)
        print(f"{field:>13}: {shown}")


# --- keys ---------------------------------------------------------------------


async def keys_create(args: argparse.Namespace) -> int:
    """Create a key and print its secret once."""
    settings = load_config(args)
    policy = load_policy(settings.policy_path)
    request: dict[str, Any] = {
        "name": args.name,
        "description": args.description,
        "roles": args.role,
        "expires_at": args.expires,
    }
    async with open_store(settings) as store:
        created = await lifecycle.create_key(store, request, policy, cli_actor(), current_time())
    if args.json:
        print_key(created.row, True, {"secret": created.secret})
    else:
        print_key(created.row, False)
        print()
        print(f"secret: {created.secret}")
        print("Store this secret now: it is shown once and can never be read again.")
    return 0


async def keys_list(args: argparse.Namespace) -> int:
    """List keys, optionally filtered by status."""
    settings = load_config(args)
    async with open_store(settings) as store:
        rows: list[KeyRow] = []
        after = 0
        while True:
            page = await store.list_keys(status=args.status, limit=1000, after_id=after)
            rows.extend(page)
            if len(page) < 1000:
                break
            after = page[-1].id
    now = current_time()
    if args.json:
        print(json.dumps([lifecycle.key_json(row, now) for row in rows], indent=2))
        return 0
    print(f"{'ID':>6}  {'NAME':<24} {'STATUS':<8} {'PREFIX':<11} {'USES':>6}  ROLES")
    for row in rows:
        status = lifecycle.status_of(row, now)
        roles = ",".join(row.roles)
        print(
            f"{row.id:>6}  {row.name:<24} {status:<8} {row.prefix:<11} {row.use_count:>6}  {roles}"
        )
    print(f"{len(rows)} key(s)")
    return 0


async def keys_show(args: argparse.Namespace) -> int:
    """Show one key."""
    settings = load_config(args)
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
    print_key(row, args.json)
    return 0


async def keys_edit(args: argparse.Namespace) -> int:
    """Edit a key's name, description, roles or expiry."""
    settings = load_config(args)
    policy = load_policy(settings.policy_path)
    now = current_time()
    changes = KeyChanges(
        name=None if args.name is None else lifecycle.validate_name(args.name),
        description=(
            None if args.description is None else lifecycle.validate_description(args.description)
        ),
        roles=None if args.role is None else lifecycle.validate_roles(args.role, policy),
        expires_at=(
            None
            if args.expires in (None, "never")
            else lifecycle.parse_timestamp(args.expires, "expires", now)
        ),
        clear_expiry=args.expires == "never",
    )
    if changes == KeyChanges():
        raise CliError("nothing to change: give --name, --description, --role or --expires")
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
        row = await store.update_key(row.id, changes, cli_actor())
    print_key(row, args.json)
    return 0


async def keys_revoke(args: argparse.Namespace) -> int:
    """Revoke one key."""
    return await _set_revoked(args, True)


async def keys_reinstate(args: argparse.Namespace) -> int:
    """Reinstate one revoked key."""
    return await _set_revoked(args, False)


async def _set_revoked(args: argparse.Namespace, revoked: bool) -> int:
    settings = load_config(args)
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
        row = await store.set_revoked(row.id, revoked, cli_actor())
    print_key(row, args.json)
    return 0


async def keys_delete(args: argparse.Namespace) -> int:
    """Delete one key for good."""
    settings = load_config(args)
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
        await store.delete_key(row.id, cli_actor())
    print(f"deleted key {row.id} ({row.name})")
    return 0


def _batch(action: str, label: str) -> Handler:
    async def run(args: argparse.Namespace) -> int:
        settings = load_config(args)
        async with open_store(settings) as store:
            count: int = await getattr(store, action)(cli_actor())
        if args.json:
            print(json.dumps({"count": count}))
        else:
            print(f"{label} {count} key(s)")
        return 0

    run.__doc__ = f"{label.capitalize()} keys in one transaction."
    return run


# --- policy and serve ---------------------------------------------------------


async def policy_check(args: argparse.Namespace) -> int:
    """Validate a policy file (default: the one the config names)."""
    path = Path(args.file) if args.file else load_config(args).policy_path
    policy: Policy = load_policy(path)
    rules = sum(len(role.rules) for role in policy.roles.values())
    print(
        f"{path}: OK ({len(policy.roles)} roles, {rules} rules, "
        f"{len(policy.protected)} protected paths)"
    )
    return 0


def serve(args: argparse.Namespace) -> int:
    """Run the gateway (proxy and admin listeners) until interrupted."""
    from gateway.server import resolve_workers, run_server

    settings = load_config(args)
    load_policy(settings.policy_path)  # fail fast with every policy problem listed
    workers = resolve_workers(args.workers)
    if workers > 1 and args.worker_index is None and settings.listen.port == 0:
        # Port 0 would give every worker its own random port instead of one shared port.
        raise CliError(f"--workers {args.workers} needs a fixed listen.port (not 0)")
    return run_server(settings, args.workers, args.worker_index)


async def demo(args: argparse.Namespace) -> int:
    """Start the demo backend and a gateway in front of it, with a demo key."""
    from gateway.demo import run_demo

    return await run_demo(args)


# --- parser -------------------------------------------------------------------


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="config file (default: $KEYGATE_CONFIG, then config/gateway.yaml)"
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argparse tree for every command."""
    parser = argparse.ArgumentParser(prog="keygate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the gateway")
    _add_config(serve_parser)
    serve_parser.add_argument(
        "--workers", default="1", help="worker processes sharing the port, or 'auto' (default 1)"
    )
    serve_parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve_parser.set_defaults(func=serve)

    demo_parser = commands.add_parser("demo", help="run a demo backend with keygate in front")
    demo_parser.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    demo_parser.add_argument("--admin-port", type=int, default=8081, help="admin port")
    demo_parser.add_argument("--backend-port", type=int, default=9000, help="demo backend port")
    demo_parser.add_argument("--data-dir", default=None, help="where the demo keeps its files")
    demo_parser.add_argument(
        "--exit-after", type=float, default=None, help=argparse.SUPPRESS
    )  # seconds; used by tests
    demo_parser.set_defaults(func=demo)

    keys_parser = commands.add_parser("keys", help="manage API keys")
    keys_commands = keys_parser.add_subparsers(dest="keys_command", required=True)

    create = keys_commands.add_parser("create", help="create a key (prints the secret once)")
    create.add_argument("--name", required=True)
    create.add_argument("--description", default="")
    create.add_argument("--role", action="append", required=True, help="repeat for more roles")
    create.add_argument("--expires", help="ISO-8601 time with zone, e.g. 2027-01-01T00:00:00Z")
    create.set_defaults(func=keys_create)

    listing = keys_commands.add_parser("list", help="list keys")
    listing.add_argument("--status", choices=("active", "revoked", "expired"))
    listing.set_defaults(func=keys_list)

    show = keys_commands.add_parser("show", help="show one key")
    show.add_argument("key", metavar="ID|NAME")
    show.set_defaults(func=keys_show)

    edit = keys_commands.add_parser("edit", help="edit a key")
    edit.add_argument("key", metavar="ID|NAME")
    edit.add_argument("--name")
    edit.add_argument("--description")
    edit.add_argument("--role", action="append", help="replaces all roles; repeat for more")
    edit.add_argument("--expires", help="ISO-8601 time with zone, or 'never'")
    edit.set_defaults(func=keys_edit)

    for name, func, text in (
        ("revoke", keys_revoke, "revoke a key (can be reinstated)"),
        ("reinstate", keys_reinstate, "reinstate a revoked key"),
        ("delete", keys_delete, "delete a key for good"),
    ):
        one = keys_commands.add_parser(name, help=text)
        one.add_argument("key", metavar="ID|NAME")
        one.set_defaults(func=func)

    for name, action, label in (
        ("revoke-all", "revoke_all", "revoked"),
        ("reinstate-all", "reinstate_all", "reinstated"),
        ("delete-revoked", "delete_revoked", "deleted"),
    ):
        batch = keys_commands.add_parser(name, help=f"batch: {name.replace('-', ' ')}")
        batch.set_defaults(func=_batch(action, label))

    for sub in keys_commands.choices.values():
        _add_config(sub)
        sub.add_argument("--json", action="store_true", help="print JSON")

    policy_parser = commands.add_parser("policy", help="policy tools")
    policy_commands = policy_parser.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate a policy file")
    check.add_argument("file", nargs="?", help="policy file (default: the config's)")
    _add_config(check)
    check.set_defaults(func=policy_check)

    register_admin_commands(commands, _add_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors print one clear line and exit non-zero, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
        status = asyncio.run(result) if inspect.iscoroutine(result) else result
        return int(status)
    except (ConfigError, PolicyError) as error:
        print(f"keygate: {error}", file=sys.stderr)
        return 2
    except lifecycle.InputError as error:
        print(f"keygate: error: {error.message}", file=sys.stderr)
        return 1
    except NameConflictError as error:
        print(f"keygate: error: name already in use: {error}", file=sys.stderr)
        return 1
    except (NotFoundError, CliError, PermissionError) as error:
        print(f"keygate: error: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f"keygate: error: {error}", file=sys.stderr)
        return 1
    except sqlite3.Error as error:  # e.g. the store file is not a database
        print(f"keygate: error: store: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
