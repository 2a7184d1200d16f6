"""Command line for webhooks: `keygate notify test` (a sample event) and `notify status`."""

from __future__ import annotations

import argparse
import json
from typing import Any

import aiohttp

from gateway import clock
from gateway.cli.common import CliError, add_config_option, load_config, open_store
from gateway.events import webhooks as notify
from gateway.events.outbox import EVENT_ACTIONS, event_id, sample_event
from gateway.store.base import AbandonedEvent, ReceiverState

STATUS_DEFAULT_LIMIT = 50  # abandoned events `notify status` lists unless --limit says otherwise
STATUS_MAX_LIMIT = 10_000  # the most abandoned events one `notify status` lists
NOT_CONFIGURED = "(no longer configured)"
M_LIMIT = f"--limit must be an integer from 1 to {STATUS_MAX_LIMIT}"


async def notify_test(args: argparse.Namespace) -> int:
    """Send one sample event to every configured webhook, once each; report each outcome."""
    settings = load_config(args)
    hooks = tuple(notify.Webhook(h.url, h.secret) for h in settings.notify.webhooks)
    if not hooks:
        raise CliError("no webhooks configured (notify.webhooks in the config)")
    item = sample_event(clock.now())
    body = notify.encode(item)
    failed = 0
    timeout = aiohttp.ClientTimeout(total=notify.DELIVERY_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for hook in hooks:
            problem = await notify.deliver_once(session, hook, body, item["id"])
            print(f"{hook.shown}: {'delivered' if problem is None else problem}")
            failed += problem is not None
    if failed:
        raise CliError(f"{failed} of {len(hooks)} webhook(s) did not accept the test event")
    return 0


def _receiver_json(state: ReceiverState, shown: str, pending: int) -> dict[str, Any]:
    """Return one receiver's delivery state as `notify status --json` shows it."""
    return {
        "receiver": state.receiver,
        "url": shown,
        "acknowledged_through": state.cursor,
        "pending": pending,
        "attempts": state.attempts,
        "first_attempt": clock.iso(state.first_attempt),
        "next_attempt": clock.iso(state.next_attempt),
        "last_error": state.last_error,
    }


def _abandoned_json(event: AbandonedEvent, shown: str) -> dict[str, Any]:
    """Return one abandoned event as `notify status --json` shows it."""
    return {
        "receiver": event.receiver,
        "url": shown,
        "event_id": event_id(event.audit_id),
        "type": event.type,
        "attempts": event.attempts,
        "first_attempt": clock.iso(event.first_attempt),
        "abandoned_at": clock.iso(event.abandoned_at),
        "last_error": event.last_error,
    }


async def notify_status(args: argparse.Namespace) -> int:
    """Show each receiver's delivery state and the events abandoned, newest first."""
    settings = load_config(args)
    shown = {notify.receiver_id(h.url): notify.redact_url(h.url) for h in settings.notify.webhooks}
    async with open_store(settings) as store:
        states = await store.list_receivers()
        pending = [await store.count_audit_after(s.cursor, EVENT_ACTIONS) for s in states]
        abandoned = await store.list_abandoned(args.limit)
    receivers = [
        _receiver_json(state, shown.get(state.receiver, NOT_CONFIGURED), count)
        for state, count in zip(states, pending, strict=True)
    ]
    known = {state.receiver for state in states}
    receivers += [
        {"receiver": rid, "url": url, "acknowledged_through": None, "pending": None}
        for rid, url in shown.items()
        if rid not in known
    ]
    dropped = [_abandoned_json(e, shown.get(e.receiver, NOT_CONFIGURED)) for e in abandoned]
    if args.json:
        print(json.dumps({"receivers": receivers, "abandoned": dropped}, indent=2))
        return 0
    print(f"{'RECEIVER':<16}  {'ACKED':>8}  {'PENDING':>7}  {'TRIES':>5}  {'NEXT TRY':<20}  URL")
    for item in receivers:
        acked = "-" if item["acknowledged_through"] is None else item["acknowledged_through"]
        waiting = "-" if item["pending"] is None else item["pending"]
        tries = item.get("attempts") or "-"
        next_try = (item.get("next_attempt") or "-")[:19]
        print(
            f"{item['receiver']:<16}  {acked:>8}  {waiting:>7}  {tries:>5}  {next_try:<20}  ",
            end="",
        )
        print(
            item["url"]
            + (f"  (last error: {item['last_error']})" if item.get("last_error") else "")
        )
    print(f"{len(dropped)} abandoned event(s)")
    for item in dropped:
        at = (item["abandoned_at"] or "")[:19]
        print(
            f"{at}  {item['event_id']:<12} {item['type']:<22} {item['attempts']:>4} tries"
            f"  {item['url']}  {item['last_error']}"
        )
    return 0


def _limit(text: str) -> int:
    """Parse --limit: a whole number from 1 to STATUS_MAX_LIMIT."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= STATUS_MAX_LIMIT:
        raise argparse.ArgumentTypeError(M_LIMIT)
    return int(text)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `notify ...` to the keygate CLI."""
    parser = commands.add_parser("notify", help="webhook notifications")
    sub = parser.add_subparsers(dest="notify_command", required=True)
    test = sub.add_parser("test", help="send a sample signed event to every webhook")
    add_config_option(test)
    test.set_defaults(func=notify_test)
    status = sub.add_parser("status", help="delivery state per webhook and abandoned events")
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--limit",
        type=_limit,
        default=STATUS_DEFAULT_LIMIT,
        help=f"abandoned events to list (default {STATUS_DEFAULT_LIMIT})",
    )
    status.set_defaults(func=notify_status)
