"""Command line for moving stores: `keygate store copy --from URL --to URL [--replace]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.common import CliError
from gateway.store.base import StoreMissingError, StoreNotEmptyError
from gateway.store.factory import store_from_url


async def store_copy(args: argparse.Namespace) -> int:
    """Copy keys (with usage), admins and audit from one store to another, then verify."""
    base = Path.cwd()
    source = store_from_url(args.source, base, schema=args.from_schema)
    target = store_from_url(args.target, base, schema=args.to_schema)
    try:
        await source.open(create=False)
    except StoreMissingError as error:
        raise CliError(f"no source database at {error.location}") from None
    try:
        await target.open(create=True)
        try:
            contents = await source.export_contents()
            try:
                await target.import_contents(contents, replace=args.replace)
            except StoreNotEmptyError:
                raise CliError(
                    f"{target.location} is not empty; pass --replace to overwrite what it holds"
                ) from None
            copied = await target.export_contents()
        finally:
            await target.close()
    finally:
        await source.close()
    counts = (len(contents.keys), len(contents.admins), len(contents.audit))
    if (len(copied.keys), len(copied.admins), len(copied.audit)) != counts or copied != contents:
        raise CliError(
            f"verification failed: {target.location} holds {len(copied.keys)} keys, "
            f"{len(copied.admins)} admins, {len(copied.audit)} audit events; "
            f"expected {counts[0]}, {counts[1]}, {counts[2]}"
        )
    print(
        f"copied {counts[0]} keys, {counts[1]} admins and {counts[2]} audit events "
        f"from {source.location} to {target.location} (verified)"
    )
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keygate store ...` to the command tree."""
    store_parser = commands.add_parser("store", help="store tools (copy between backends)")
    store_commands = store_parser.add_subparsers(dest="store_command", required=True)
    copy = store_commands.add_parser(
        "copy", help="copy keys, admins, audit and usage from one store to another"
    )
    copy.add_argument("--from", dest="source", required=True, help="source store URL")
    copy.add_argument("--to", dest="target", required=True, help="target store URL")
    copy.add_argument("--from-schema", default=None, help="PostgreSQL schema of the source")
    copy.add_argument("--to-schema", default=None, help="PostgreSQL schema of the target")
    copy.add_argument(
        "--replace", action="store_true", help="overwrite a target that already holds data"
    )
    copy.set_defaults(func=store_copy)
