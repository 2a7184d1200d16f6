"""Command line: `keygate keys usage ID|NAME`, a key's usage per hour or day."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from gateway import clock
from gateway.cli.common import CliError, load_store_config, open_store
from gateway.keys.usage_series import STEPS, UsageWindowError, usage_series, usage_window
from gateway.store.base import KeyRow, KeyStore

M_TIME = "must be an ISO-8601 time with a time zone, e.g. 2026-01-01T00:00:00Z"
COUNTS = ("forwarded", "denied", "limited", "upstream_errors", "addresses")


def _time(text: str) -> float:
    """Parse --from/--to: an ISO-8601 time with a time zone, as unix seconds."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError(text)
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(M_TIME) from None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


async def resolve_key(store: KeyStore, ref: str) -> KeyRow:
    """Return the key with id or name `ref`, or raise CliError."""
    row = await store.get_key(int(ref)) if ref.isdigit() else await store.get_key_by_name(ref)
    if row is None:
        raise CliError(f"no key with id or name {ref!r}")
    return row


async def keys_usage(args: argparse.Namespace) -> int:
    """Print a key's usage per hour or day (default: the last 24 hours, by hour)."""
    settings = load_store_config(args)
    try:
        window = usage_window(
            args.start, args.end, args.step, clock.now(), settings.usage.keep_days
        )
    except UsageWindowError as error:
        raise CliError(f"--{error.field}: {error}") from None
    async with open_store(settings) as store:
        row = await resolve_key(store, args.key)
        rows = await store.usage_hours(row.id, window.first_hour, window.last_hour)
    points = usage_series(rows, window)
    if args.json:
        data: dict[str, Any] = {
            "key_id": row.id,
            "key_name": row.name,
            "step": window.step,
            "from": _iso(window.start),
            "to": _iso(window.end),
            "points": [
                {
                    "start": _iso(p.start),
                    **{name: getattr(p, name) for name in COUNTS},
                    "addresses_capped": p.addresses_capped,
                }
                for p in points
            ],
        }
        print(json.dumps(data, indent=2))
        return 0
    print(f"usage of key {row.name} (id {row.id}) by {window.step}, UTC")
    print(f"{'START':<17} {'FORWARDED':>9} {'403':>6} {'429':>6} {'5XX':>6} {'ADDRESSES':>9}")
    for p in points:
        capped = "+" if p.addresses_capped else ""
        print(
            f"{_iso(p.start)[:16].replace('T', ' '):<17} {p.forwarded:>9} {p.denied:>6}"
            f" {p.limited:>6} {p.upstream_errors:>6} {str(p.addresses) + capped:>9}"
        )
    totals = [sum(getattr(p, name) for p in points) for name in COUNTS[:4]]
    print(f"{'total':<17} {totals[0]:>9} {totals[1]:>6} {totals[2]:>6} {totals[3]:>6}")
    return 0


def add_usage_command(keys_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `keys usage` to the `keys` commands."""
    usage = keys_commands.add_parser(
        "usage",
        help="a key's usage per hour or day: forwarded, refused (403, 429), upstream 5xx, "
        "distinct client addresses",
    )
    usage.add_argument("key", metavar="ID|NAME")
    usage.add_argument(
        "--from", dest="start", type=_time, help="ISO-8601 time (default: 24 hours before --to)"
    )
    usage.add_argument("--to", dest="end", type=_time, help="ISO-8601 time (default: now)")
    usage.add_argument("--step", choices=STEPS, default="hour")
    usage.set_defaults(func=keys_usage)
