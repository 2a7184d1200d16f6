"""Command line for webhooks: `keygate notify test` sends a sample signed event to each."""

from __future__ import annotations

import argparse

import aiohttp

from gateway import clock, notify
from gateway.cli_common import CliError, add_config_option, load_config
from gateway.outbox import sample_event


async def notify_test(args: argparse.Namespace) -> int:
    """Send one sample event to every configured webhook, once each; report each outcome."""
    settings = load_config(args)
    hooks = tuple(notify.Webhook(h.url, h.secret) for h in settings.notify.webhooks)
    if not hooks:
        raise CliError("no webhooks configured (notify.webhooks in the config)")
    body = notify.encode(sample_event(clock.now()))
    failed = 0
    timeout = aiohttp.ClientTimeout(total=notify.DELIVERY_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for hook in hooks:
            problem = await notify.deliver_once(session, hook, body)
            print(f"{hook.shown}: {'delivered' if problem is None else problem}")
            failed += problem is not None
    if failed:
        raise CliError(f"{failed} of {len(hooks)} webhook(s) did not accept the test event")
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `notify ...` to the keygate CLI."""
    parser = commands.add_parser("notify", help="webhook notifications")
    sub = parser.add_subparsers(dest="notify_command", required=True)
    test = sub.add_parser("test", help="send a sample signed event to every webhook")
    add_config_option(test)
    test.set_defaults(func=notify_test)
