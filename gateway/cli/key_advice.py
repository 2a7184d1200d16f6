"""Command line: `keygate keys advice ID|NAME`, least-privilege advice for a key."""

from __future__ import annotations

import argparse

import msgspec

from gateway import clock
from gateway.admin.insight_handlers import DEFAULT_DAYS, advice_answer, window_start
from gateway.cli.common import CliError, load_store_config, open_store
from gateway.cli.key_usage import resolve_key
from gateway.policy.rules import load_policy


def _days(text: str) -> int:
    """Parse --days: a whole number of days from 1."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 99_999:
        raise argparse.ArgumentTypeError("must be a whole number of days from 1")
    return int(text)


async def keys_advice(args: argparse.Namespace) -> int:
    """Print which rules and roles a key used in the last days, and a narrower role set."""
    settings = load_store_config(args)
    keep_days = settings.usage.keep_days
    days = args.days if args.days is not None else min(DEFAULT_DAYS, keep_days)
    if days > keep_days:
        raise CliError(f"--days: must be at most {keep_days} (usage.keep_days)")
    policy = load_policy(settings.policy)
    first_day = window_start(days, clock.now())
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
        totals = await store.rule_totals(row.id, first_day)
    answer = advice_answer(row, policy, totals, days, first_day)
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(answer), indent=2).decode())
        return 0
    print(f"advice for key {row.name} (id {row.id}): {answer.message}")
    print(f"requests allowed in the last {days} days: {answer.requests}")
    if answer.suggested_roles is not None:
        print(f"suggested roles: {', '.join(answer.suggested_roles) or '(none)'}")
    print(f"roles held: {', '.join(row.roles)}")
    print(f"{'COUNT':>8}  RULE USED")
    for used in answer.used_rules:
        print(f"{used.count:>8}  {used.role}: {','.join(used.methods)} {used.path}")
    for unused in answer.unused_rules:
        print(f"{'never':>8}  {unused.role}: {','.join(unused.methods)} {unused.path}")
    return 0


def add_advice_command(keys_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `keys advice` to the `keys` commands."""
    advice = keys_commands.add_parser(
        "advice",
        help="least-privilege advice: the rules and roles a key used and never used, and the "
        "smallest role set that still allows what it did (nothing changes)",
    )
    advice.add_argument("key", metavar="ID|NAME")
    advice.add_argument("--days", type=_days, help=f"the window in days (default {DEFAULT_DAYS})")
    advice.set_defaults(func=keys_advice)
