"""Command line for API keys: `keygate keys create|list|show|edit|roll|revoke|...|usage`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from gateway import clock
from gateway.cli.common import CliError, add_config_option, cli_actor, load_store_config, open_store
from gateway.cli.key_advice import add_advice_command
from gateway.cli.key_usage import add_usage_command
from gateway.keys import keyformat as keys
from gateway.keys import rules as key_rules
from gateway.policy.rules import load_policy
from gateway.store.base import (
    BatchResult,
    IdempotencyMismatchError,
    IdempotentReplayError,
    KeyChanges,
    KeyRow,
    KeyStore,
)

Handler = Callable[[argparse.Namespace], Awaitable[int]]
DAY = 86_400  # seconds
IDEMPOTENCY_OPTION = "--idempotency-key"
# Exit status of a create its idempotency key already made: nothing created, no secret.
EXIT_REPLAYED = 3
E_IDEMPOTENT_REPLAY = "idempotent_replay"  # the admin API's code for the same answer
M_IDEMPOTENCY_REUSED = (
    f"this {IDEMPOTENCY_OPTION} was already used with a different request; nothing was created"
)


async def resolve_key(store: KeyStore, ref: str) -> KeyRow:
    """Find a key by numeric id or exact name, or raise CliError."""
    row = await store.get_key(int(ref)) if ref.isdigit() else await store.get_key_by_name(ref)
    if row is None:
        raise CliError(f"no key with id or name {ref!r}")
    return row


def print_key(row: KeyRow, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """Print one key as JSON or as aligned `field: value` lines."""
    data = key_rules.key_json(row, clock.now())
    if extra:
        data.update(extra)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    for field, value in data.items():
        if isinstance(value, dict):  # a rate limit, as --rate-limit takes it
            value = f"{value['requests']}/{value['per']},burst={value['burst']}"
        shown = ", ".join(value) if isinstance(value, list) else ("" if value is None else value)
        print(f"{field:>19}: {shown}")


async def keys_create(args: argparse.Namespace) -> int:
    """Create a key and print its secret once."""
    settings = load_store_config(args)
    policy = load_policy(settings.policy)
    request: dict[str, Any] = {
        "name": args.name,
        "description": args.description,
        "roles": args.role,
        "expires_at": args.expires,
        "rate_limit": None
        if args.rate_limit is None
        else key_rules.rate_limit_json(key_rules.parse_rate_limit_text(args.rate_limit)),
    }
    now = clock.now()
    claim = None
    if args.idempotency_key is not None:
        claim = key_rules.idempotency_claim(args.idempotency_key, request, now, IDEMPOTENCY_OPTION)
    async with open_store(settings) as store:
        try:
            created = await key_rules.create_key(store, request, policy, cli_actor(), now, claim)
        except IdempotentReplayError as replay:
            return _replayed(replay, args.json)
        except IdempotencyMismatchError:
            raise CliError(M_IDEMPOTENCY_REUSED) from None
    if args.json:
        print_key(created.row, True, {"secret": created.secret})
    else:
        print_key(created.row, False)
        print()
        print(f"secret: {created.secret}")
        print("Store this secret now: it is shown once and can never be read again.")
    return 0


def _replayed(replay: IdempotentReplayError, as_json: bool) -> int:
    """Say that an earlier create made this key (shown, without its secret); EXIT_REPLAYED."""
    template = key_rules.M_REPLAY if replay.row is not None else key_rules.M_REPLAY_DELETED
    message = template.format(field=IDEMPOTENCY_OPTION)
    if as_json:
        shown = None if replay.row is None else key_rules.key_json(replay.row, clock.now())
        print(
            json.dumps({"error": E_IDEMPOTENT_REPLAY, "message": message, "key": shown}, indent=2)
        )
    elif replay.row is not None:
        print_key(replay.row, False)
    print(f"keygate: {message}", file=sys.stderr)
    return EXIT_REPLAYED


async def keys_list(args: argparse.Namespace) -> int:
    """List keys, optionally filtered by status."""
    settings = load_store_config(args)
    within = settings.expiry.warn_days * DAY
    async with open_store(settings) as store:
        rows: list[KeyRow] = []
        after = 0
        while True:
            page = await store.list_keys(
                status=args.status, limit=1000, after_id=after, expiring_within=within
            )
            rows.extend(page)
            if len(page) < 1000:
                break
            after = page[-1].id
    now = clock.now()
    if args.json:
        print(json.dumps([key_rules.key_json(row, now) for row in rows], indent=2))
        return 0
    print(
        f"{'ID':>6}  {'NAME':<24} {'STATUS':<8} {'PREFIX':<11} {'USES':>6}  "
        f"{'LAST USED':<17} {'EXPIRES':<27} ROLES"
    )
    for row in rows:
        status = key_rules.status_of(row, now)
        roles = ",".join(row.roles)
        expires = _minute(row.expires_at)
        if key_rules.days_left(row, now, within) is not None and row.expires_at is not None:
            expires += f" ({key_rules.expires_in_text(row.expires_at - now)})"
        print(
            f"{row.id:>6}  {row.name:<24} {status:<8} {row.prefix:<11} {row.use_count:>6}  "
            f"{_minute(row.last_used_at):<17} {expires:<27} {roles}"
        )
    print(f"{len(rows)} key(s)")
    return 0


def _minute(stamp: float | None) -> str:
    """A time to the minute for the key table (`-` when unset)."""
    shown = clock.iso(stamp)
    return "-" if shown is None else shown[:16].replace("T", " ")


async def keys_show(args: argparse.Namespace) -> int:
    """Show one key."""
    settings = load_store_config(args)
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
    print_key(row, args.json)
    return 0


async def keys_edit(args: argparse.Namespace) -> int:
    """Edit a key's name, description, roles or expiry."""
    settings = load_store_config(args)
    policy = load_policy(settings.policy)
    now = clock.now()
    changes = KeyChanges(
        name=None if args.name is None else key_rules.validate_name(args.name),
        description=(
            None if args.description is None else key_rules.validate_description(args.description)
        ),
        roles=None if args.role is None else key_rules.validate_roles(args.role, policy),
        expires_at=(
            None
            if args.expires in (None, "never")
            else key_rules.parse_timestamp(args.expires, "expires", now)
        ),
        clear_expiry=args.expires == "never",
        rate_limit=(
            None
            if args.rate_limit in (None, "none")
            else key_rules.parse_rate_limit_text(args.rate_limit)
        ),
        clear_rate_limit=args.rate_limit == "none",
    )
    if changes == KeyChanges():
        raise CliError(
            "nothing to change: give --name, --description, --role, --expires or --rate-limit"
        )
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
        row = await store.update_key(row.id, changes, cli_actor())
    print_key(row, args.json)
    return 0


async def keys_roll(args: argparse.Namespace) -> int:
    """Give a key a new secret (printed once); the old one keeps working for the overlap."""
    overlap = key_rules.validate_overlap(args.overlap)
    settings = load_store_config(args)
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
        rolled = await key_rules.roll_key(store, row.id, overlap, cli_actor())
    if args.json:
        print_key(rolled.row, True, {"secret": rolled.secret})
    else:
        print_key(rolled.row, False)
        print()
        print(f"secret: {rolled.secret}")
        print("Store this secret now: it is shown once and can never be read again.")
        print(f"The old secret keeps working until {clock.iso(rolled.row.previous_expires_at)}.")
    return 0


async def keys_revoke(args: argparse.Namespace) -> int:
    """Revoke one key."""
    return await _set_revoked(args, True)


async def keys_reinstate(args: argparse.Namespace) -> int:
    """Reinstate one revoked key."""
    return await _set_revoked(args, False)


async def _set_revoked(args: argparse.Namespace, revoked: bool) -> int:
    settings = load_store_config(args)
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
        row = await store.set_revoked(row.id, revoked, cli_actor())
    print_key(row, args.json)
    return 0


async def keys_delete(args: argparse.Namespace) -> int:
    """Delete one key for good."""
    settings = load_store_config(args)
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
        await store.delete_key(row.id, cli_actor())
    print(f"deleted key {row.id} ({row.name})")
    return 0


async def keys_identify(args: argparse.Namespace) -> int:
    """Say which key a leaked secret belongs to; the secret is read from standard input."""
    secret = sys.stdin.readline().strip()
    if not keys.is_well_formed(secret):
        raise CliError("standard input is not a well-formed keygate key (kg_... with checksum)")
    settings = load_store_config(args)
    async with open_store(settings) as store:
        row = await store.get_key_by_digest(keys.digest(secret))
        await key_rules.audit_identify(store, cli_actor(), row, {})
    if row is None:
        raise CliError("no key has that secret (deleted, or never a keygate key)")
    print_key(row, args.json)
    return 0


def _batch(action: str, label: str) -> Handler:
    async def run(args: argparse.Namespace) -> int:
        settings = load_store_config(args)
        async with open_store(settings) as store:
            result: BatchResult = await getattr(store, action)(cli_actor())
        count = result.changed
        if args.json:
            print(json.dumps({"count": count}))
        else:
            print(f"{label} {count} key(s)")
        return 0

    run.__doc__ = f"{label.capitalize()} keys in one transaction."
    return run


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `keys ...` to the keygate CLI."""
    keys_parser = commands.add_parser("keys", help="manage API keys")
    keys_commands = keys_parser.add_subparsers(dest="keys_command", required=True)

    create = keys_commands.add_parser("create", help="create a key (prints the secret once)")
    create.add_argument("--name", required=True)
    create.add_argument("--description", default="")
    create.add_argument("--role", action="append", required=True, help="repeat for more roles")
    create.add_argument("--expires", help="ISO-8601 time with zone, e.g. 2027-01-01T00:00:00Z")
    create.add_argument(
        "--rate-limit",
        metavar="N/PER[,burst=B]",
        help="the key's own limit over its roles' default, e.g. 100/minute,burst=20",
    )
    create.add_argument(
        IDEMPOTENCY_OPTION,
        metavar="KEY",
        help="makes a retry safe: a repeat with this KEY (within 24 h) creates nothing, shows "
        f"the key without its secret and exits {EXIT_REPLAYED}; another request under it fails",
    )
    create.set_defaults(func=keys_create)

    listing = keys_commands.add_parser("list", help="list keys")
    listing.add_argument(
        "--status",
        choices=("active", "revoked", "expired", "expiring"),
        help="expiring: active keys expiring within expiry.warn_days",
    )
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
    edit.add_argument(
        "--rate-limit",
        metavar="N/PER[,burst=B]",
        help="the key's own limit (e.g. 100/minute,burst=20), or 'none' for its roles' default",
    )
    edit.set_defaults(func=keys_edit)

    for name, func, text in (
        ("revoke", keys_revoke, "revoke a key (can be reinstated)"),
        ("reinstate", keys_reinstate, "reinstate a revoked key"),
        ("delete", keys_delete, "delete a key for good"),
    ):
        one = keys_commands.add_parser(name, help=text)
        one.add_argument("key", metavar="ID|NAME")
        one.set_defaults(func=func)

    roll = keys_commands.add_parser(
        "roll", help="give a key a new secret (printed once); the old one works for the overlap"
    )
    roll.add_argument("key", metavar="ID|NAME")
    roll.add_argument(
        "--overlap",
        type=int,
        metavar="SECONDS",
        help=f"how long the old secret keeps working (default {key_rules.ROLL_OVERLAP_DEFAULT},"
        f" at most {key_rules.ROLL_OVERLAP_MAX})",
    )
    roll.set_defaults(func=keys_roll)

    identify = keys_commands.add_parser(
        "identify", help="which key a leaked secret belongs to (secret on standard input)"
    )
    identify.set_defaults(func=keys_identify)

    for name, action, label in (
        ("revoke-all", "revoke_all", "revoked"),
        ("reinstate-all", "reinstate_all", "reinstated"),
        ("delete-revoked", "delete_revoked", "deleted"),
    ):
        batch = keys_commands.add_parser(name, help=f"batch: {name.replace('-', ' ')}")
        batch.set_defaults(func=_batch(action, label))

    add_usage_command(keys_commands)
    add_advice_command(keys_commands)

    for sub in keys_commands.choices.values():
        add_config_option(sub)
        sub.add_argument("--json", action="store_true", help="print JSON")
