"""Command line for admin accounts (`keygate admins ...`) and the audit log (`keygate audit`)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from gateway.admin.accounts import validate_admin_name, validate_password
from gateway.admin.audit_export import (
    AUDIT_ACTIONS,
    AUDIT_TEXT_MAX,
    UnknownActionError,
    audit_csv,
    parse_actions,
)
from gateway.admin.parsing import is_safe_text
from gateway.admin.passwords import hash_password
from gateway.cli.common import CliError, add_config_option, cli_actor, load_store_config, open_store
from gateway.clock import iso
from gateway.keys.rules import audit_json
from gateway.policy.rules import load_policy
from gateway.settings import Settings
from gateway.store.base import AdminAccount, AdminSession

Handler = Callable[[argparse.Namespace], Awaitable[int]]

AUDIT_DEFAULT_LIMIT = 50  # events shown by `keygate audit` unless --limit says otherwise
AUDIT_MAX_LIMIT = 10_000

M_MISMATCH = "passwords do not match"
M_NO_PASSWORD = "no password given on standard input"
M_LIMIT = f"--limit must be an integer from 1 to {AUDIT_MAX_LIMIT}"
M_SINCE = "--since must be an ISO-8601 time with a time zone, e.g. 2026-01-01T00:00:00Z"


def read_new_password(args: argparse.Namespace) -> str:
    """Read a new password: one line from stdin with --password-stdin, else getpass twice."""
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise CliError(M_NO_PASSWORD)
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass("New admin password: ")
        if password != getpass.getpass("Repeat the password: "):
            raise CliError(M_MISMATCH)
    try:
        return validate_password(password)
    except ValueError as error:
        raise CliError(str(error)) from None


def _admin_name(value: str) -> str:
    try:
        return validate_admin_name(value)
    except ValueError as error:
        raise CliError(f"{error}: {value!r}") from None


def _grants(args: argparse.Namespace, settings: Settings) -> tuple[tuple[str, ...], bool]:
    """Return (grants, grant_all) from --grant/--grant-all; every role must be in the policy."""
    if args.grant_all:
        return (), True
    grants = tuple(sorted(set(args.grant or ())))
    if grants:
        policy = load_policy(settings.policy)
        unknown = [role for role in grants if role not in policy.roles]
        if unknown:
            raise CliError(f"unknown role(s) {', '.join(unknown)}: not defined in {policy.source}")
    return grants, False


def admin_json(account: AdminAccount) -> dict[str, Any]:
    """Return an admin account as `admins list --json` shows it (never the password hash)."""
    return {
        "name": account.name,
        "grants": list(account.grants),
        "grant_all": account.grant_all,
        "created_at": iso(account.created_at),
        "updated_at": iso(account.updated_at),
    }


def _grants_text(account: AdminAccount) -> str:
    if account.grant_all:
        return "(all roles)"
    return ", ".join(account.grants) or "(none)"


async def admins_add(args: argparse.Namespace) -> int:
    """Create an admin account with a password and a grant set."""

    name = _admin_name(args.name)
    settings = load_store_config(args)
    grants, grant_all = _grants(args, settings)
    password = read_new_password(args)
    encoded = await asyncio.to_thread(hash_password, password)
    async with open_store(settings) as store:
        account = await store.add_admin(name, encoded, grants, grant_all, cli_actor())
    print(f"added admin {account.name} (may grant: {_grants_text(account)})")
    return 0


async def admins_list(args: argparse.Namespace) -> int:
    """List admin accounts and what each may grant."""

    async with open_store(load_store_config(args)) as store:
        accounts = await store.list_admins()
    if args.json:
        print(json.dumps([admin_json(account) for account in accounts], indent=2))
        return 0
    print(f"{'NAME':<24} {'CREATED':<21} GRANTS")
    for account in accounts:
        created = iso(account.created_at) or ""
        print(f"{account.name:<24} {created[:19] + 'Z':<21} {_grants_text(account)}")
    print(f"{len(accounts)} admin(s)")
    return 0


def session_json(session: AdminSession) -> dict[str, Any]:
    """A signed-in session as `admins sessions --json` prints it (no token, nothing sealed)."""
    return {
        "actor": session.admin if session.source is not None else f"local:{session.admin}",
        "source": session.source or "local",
        "admin": session.subject or session.admin,
        "display_name": session.display_name or session.admin,
        "signed_in_at": iso(session.created_at),
        "last_seen": iso(session.last_seen),
        "expires_at": iso(session.expires_at) if session.expires_at is not None else None,
    }


async def admins_sessions(args: argparse.Namespace) -> int:
    """List signed-in web sessions: who, where their grants come from, since when."""
    async with open_store(load_store_config(args)) as store:
        sessions = [session_json(session) for session in await store.list_sessions()]
    if args.json:
        print(json.dumps(sessions, indent=2))
        return 0
    print(f"{'ACTOR':<32} {'SOURCE':<8} {'DISPLAY NAME':<24} {'SIGNED IN':<21} TOKEN EXPIRES")
    for entry in sessions:
        signed_in = (entry["signed_in_at"] or "")[:19] + "Z"
        expires = (entry["expires_at"] or "-")[:19] + ("Z" if entry["expires_at"] else "")
        print(
            f"{entry['actor']:<32} {entry['source']:<8} {entry['display_name']:<24} "
            f"{signed_in:<21} {expires}"
        )
    print(f"{len(sessions)} session(s)")
    return 0


async def admins_passwd(args: argparse.Namespace) -> int:
    """Set a new password for an admin account."""

    name = _admin_name(args.name)
    settings = load_store_config(args)
    async with open_store(settings) as store:
        if await store.get_admin(name) is None:
            raise CliError(f"no admin named {name!r}")
        password = read_new_password(args)
        encoded = await asyncio.to_thread(hash_password, password)
        await store.set_admin_password(name, encoded, cli_actor())
    print(f"password changed for admin {name}")
    return 0


async def admins_grants(args: argparse.Namespace) -> int:
    """Replace the set of roles an admin may grant."""

    name = _admin_name(args.name)
    settings = load_store_config(args)
    grants, grant_all = _grants(args, settings)
    async with open_store(settings) as store:
        account = await store.set_admin_grants(name, grants, grant_all, cli_actor())
    print(f"admin {account.name} may grant: {_grants_text(account)}")
    return 0


async def admins_remove(args: argparse.Namespace) -> int:
    """Delete an admin account."""

    name = _admin_name(args.name)
    async with open_store(load_store_config(args)) as store:
        await store.remove_admin(name, cli_actor())
    print(f"removed admin {name}")
    return 0


def _limit(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= AUDIT_MAX_LIMIT:
        raise argparse.ArgumentTypeError(M_LIMIT)
    return int(text)


def _since(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(M_SINCE) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(M_SINCE)
    try:
        return moment.timestamp()
    except OverflowError:
        raise argparse.ArgumentTypeError(M_SINCE) from None


def _actions(text: str) -> list[str]:
    try:
        return parse_actions(text)
    except UnknownActionError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _text(text: str) -> str:
    if len(text) > AUDIT_TEXT_MAX or not is_safe_text(text):
        raise argparse.ArgumentTypeError(
            f"must be at most {AUDIT_TEXT_MAX} characters without control characters"
        )
    return text


def details_text(details: dict[str, Any]) -> str:
    """Return audit details as `name=value` pairs: objects in parentheses
    (`before=(name=a)`), lists comma-separated, null as `-`."""
    return " ".join(f"{name}={_value_text(value)}" for name, value in sorted(details.items()))


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={_value_text(v)}" for k, v in sorted(value.items())) + ")"
    if isinstance(value, list):
        return ",".join(_value_text(item) for item in value)
    return "-" if value is None else str(value)


async def audit(args: argparse.Namespace) -> int:
    """Show audit events, newest first."""

    key_id = int(args.key) if args.key and args.key.isascii() and args.key.isdigit() else None
    key_name = args.key if args.key and key_id is None else None
    async with open_store(load_store_config(args)) as store:
        if key_name is not None:
            # By id: the key's batches and its entries under earlier names; a name no key
            # has now finds the entries written under it (a deleted key's).
            current = await store.get_key_by_name(key_name)
            if current is not None:
                key_id, key_name = current.id, None
        events = await store.list_audit(
            key_id=key_id,
            key_name=key_name,
            actor=args.actor,
            since=args.since,
            limit=args.limit,
            actions=args.action,
            until=args.until,
            text=args.text,
        )
    if args.csv:
        sys.stdout.write(audit_csv(events, lambda at: iso(at) or ""))
        return 0
    items = [audit_json(event) for event in events]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    for item in items:
        key = "" if item["key_id"] is None else f"#{item['key_id']} {item['key_name']}"
        details = details_text(item["details"])
        at = (item["at"] or "")[:19] + "Z"
        print(f"{at}  {item['actor']:<16} {item['action']:<20} {key:<28} {details}")
    print(f"{len(items)} event(s)")
    return 0


def _add_grant_options(parser: argparse.ArgumentParser, replacing: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=replacing)
    group.add_argument(
        "--grant",
        action="extend",
        nargs="+",
        metavar="ROLE",
        help="a role this admin may give keys (repeatable; roles are matched literally)",
    )
    group.add_argument("--grant-all", action="store_true", help="may give keys every role")
    if replacing:
        group.add_argument("--no-grants", action="store_true", help="may give keys no role")


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `admins add|list|passwd|grants|remove` and `audit` to the keygate CLI."""
    admins = commands.add_parser("admins", help="manage admin accounts of the admin API")
    admin_commands = admins.add_subparsers(dest="admins_command", required=True)

    add = admin_commands.add_parser("add", help="add an admin account")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    _add_grant_options(add, replacing=False)
    add.set_defaults(func=admins_add)

    listing = admin_commands.add_parser("list", help="list admin accounts")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=admins_list)

    signed_in = admin_commands.add_parser(
        "sessions", help="list signed-in web sessions (who, and where their grants come from)"
    )
    signed_in.add_argument("--json", action="store_true", help="print JSON")
    signed_in.set_defaults(func=admins_sessions)

    passwd = admin_commands.add_parser("passwd", help="set an admin's password")
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    passwd.set_defaults(func=admins_passwd)

    grants = admin_commands.add_parser("grants", help="replace the roles an admin may grant")
    grants.add_argument("name", metavar="NAME")
    _add_grant_options(grants, replacing=True)
    grants.set_defaults(func=admins_grants)

    remove = admin_commands.add_parser("remove", help="remove an admin account")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=admins_remove)

    for sub in admin_commands.choices.values():
        add_config_option(sub)

    log = commands.add_parser("audit", help="show the audit log, newest first")
    log.add_argument("--key", metavar="NAME|ID", help="only events about this key")
    log.add_argument("--actor", help="only events by this actor (admin name or cli:<user>)")
    log.add_argument("--since", type=_since, help="only events at or after this ISO-8601 time")
    log.add_argument("--until", type=_since, help="only events at or before this ISO-8601 time")
    log.add_argument(
        "--action",
        type=_actions,
        metavar="ACTION[,ACTION...]",
        help="only events with one of these actions: " + ", ".join(AUDIT_ACTIONS),
    )
    log.add_argument(
        "--text",
        "-q",
        type=_text,
        help="only events whose key name, actor or details hold this text (case-insensitive)",
    )
    log.add_argument(
        "--limit",
        type=_limit,
        default=AUDIT_DEFAULT_LIMIT,
        help=f"most events to show (default {AUDIT_DEFAULT_LIMIT})",
    )
    output = log.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument(
        "--csv",
        action="store_true",
        help="print CSV (the admin API's export: header row, formula cells neutralised)",
    )
    add_config_option(log)
    log.set_defaults(func=audit)
