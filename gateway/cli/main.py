"""Command line: serve, demo, init, keys, admins, audit, policy and store commands."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import inspect
import os
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from gateway.cli import admins as cli_admin
from gateway.cli import keys as cli_keys
from gateway.cli import notify as cli_notify
from gateway.cli import store as cli_store
from gateway.cli.common import CliError, add_config_option, load_config, load_store_config
from gateway.keys import rules as key_rules
from gateway.policy.rules import Policy, PolicyError, load_policy
from gateway.settings import ConfigError
from gateway.store.base import (
    KeyExpiredError,
    NameConflictError,
    NotFoundError,
    StoreMissingError,
    StoreUnavailableError,
)
from gateway.store.factory import store_for
from gateway.store.migrations.sqlite import SchemaTooNewError

# Exit status when the reader of stdout went away: 128 + SIGPIPE, as a shell reports it.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
Handler = Callable[[argparse.Namespace], Awaitable[int] | int]


async def policy_check(args: argparse.Namespace) -> int:
    """Validate a policy file (default: the one the config names)."""
    path = Path(args.file) if args.file else load_config(args).policy
    policy: Policy = load_policy(path)
    rules = sum(len(role.rules) for role in policy.roles.values())
    print(
        f"{path}: OK ({len(policy.roles)} roles, {rules} rules, "
        f"{len(policy.protected)} protected paths)"
    )
    return 0


def policy_reload(args: argparse.Namespace) -> int:
    """Check the config's policy file, then ask the running `keygate serve` to reload it."""
    settings = load_config(args)
    load_policy(settings.policy)  # a broken file: every problem listed, nothing signalled
    if settings.pid_file is None:
        raise CliError("no pid_file configured: send SIGHUP to keygate serve yourself")
    try:
        text = settings.pid_file.read_text(encoding="ascii").strip()
    except OSError:
        raise CliError(
            f"no running keygate serve for this config (no pid file {settings.pid_file})"
        ) from None
    if not text.isdigit() or not _is_keygate(int(text)):
        raise CliError(f"the pid file {settings.pid_file} names no running keygate serve")
    os.kill(int(text), signal.SIGHUP)
    print(f"sent SIGHUP to keygate serve (pid {text}): it reloads {settings.policy}")
    return 0


def _is_keygate(pid: int) -> bool:
    """Return True when `pid` is a running `keygate serve` or `demo` (checked in /proc)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    running = b"serve" in command or b"demo" in command
    return running and any(b"gateway" in part or b"keygate" in part for part in command)


async def init(args: argparse.Namespace) -> int:
    """Create the configured database (and its directory) unless it exists; migrate it."""
    settings = load_store_config(args)
    store = store_for(settings)
    try:
        await store.open(create=False)
        existed = True
    except StoreMissingError:
        await store.open(create=True)
        existed = False
    await store.close()
    if existed:
        print(f"{store.location} already exists; its schema is up to date")
    else:
        print(f"created {store.location}")
    return 0


def serve(args: argparse.Namespace) -> int:
    """Run the gateway (proxy and admin listeners) until interrupted."""
    from gateway.serve.supervisor import resolve_workers, run_server

    settings = load_config(args)
    load_policy(settings.policy)  # fail fast with every policy problem listed
    workers = resolve_workers(args.workers)
    if workers > 1 and args.worker_index is None and settings.listen.port == 0:
        # Port 0 would give every worker its own random port instead of one shared port.
        raise CliError(f"--workers {args.workers} needs a fixed listen.port (not 0)")
    return run_server(settings, args.workers, args.worker_index)


async def demo(args: argparse.Namespace) -> int:
    """Start the demo backend and a gateway in front of it, with a demo key."""
    from gateway.demo.command import run_demo

    return await run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    """Build the argparse tree for every command."""
    parser = argparse.ArgumentParser(prog="keygate", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"keygate {importlib.metadata.version('keygate')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the gateway")
    add_config_option(serve_parser)
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
        "--front",
        choices=["nginx"],
        default=None,
        help="put Debian's nginx in front (auth_request; keygate only decides)",
    )
    demo_parser.add_argument(
        "--front-port", type=int, default=8000, help="nginx port with --front (default 8000)"
    )
    demo_parser.add_argument(
        "--exit-after", type=float, default=None, help=argparse.SUPPRESS
    )  # seconds; used by tests
    demo_parser.set_defaults(func=demo)

    init_parser = commands.add_parser(
        "init", help="create the database the config names (other commands never do)"
    )
    add_config_option(init_parser)
    init_parser.set_defaults(func=init)

    cli_keys.register(commands)
    cli_notify.register(commands)

    policy_parser = commands.add_parser("policy", help="policy tools")
    policy_commands = policy_parser.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate a policy file")
    check.add_argument("file", nargs="?", help="policy file (default: the config's)")
    add_config_option(check)
    check.set_defaults(func=policy_check)
    reload = policy_commands.add_parser(
        "reload", help="check the policy, then have the running keygate serve reload it"
    )
    add_config_option(reload)
    reload.set_defaults(func=policy_reload)

    cli_admin.register(commands)
    cli_store.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors print one clear line and exit non-zero, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
        status = asyncio.run(result) if inspect.iscoroutine(result) else result
        sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
        return int(status)
    except BrokenPipeError:
        # The reader left (`keygate keys list --json | head`): stop quietly, as `cat` does.
        # Python's documented pattern: point stdout at devnull so the exit flush is silent.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (ConfigError, PolicyError) as error:
        print(f"keygate: {error}", file=sys.stderr)
        return 2
    except key_rules.InputError as error:
        print(f"keygate: error: {error.message}", file=sys.stderr)
        return 1
    except NameConflictError as error:
        print(f"keygate: error: name already in use: {error}", file=sys.stderr)
        return 1
    except (NotFoundError, KeyExpiredError, CliError, key_rules.GrantError) as error:
        print(f"keygate: error: {error}", file=sys.stderr)
        return 1
    except (StoreUnavailableError, SchemaTooNewError, OSError, ValueError) as error:
        print(f"keygate: error: {error}", file=sys.stderr)
        return 1
    except sqlite3.Error as error:  # e.g. the store file is not a database
        print(f"keygate: error: store: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
