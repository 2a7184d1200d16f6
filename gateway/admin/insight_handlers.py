"""Admin API: what a key did with its grant (the rules it was allowed by, its last client
addresses, least-privilege advice) and the keys' summary line."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from aiohttp import web

from gateway import clock
from gateway.admin.key_handlers import key_row_of
from gateway.admin.models import (
    AddressSeen,
    KeyAddresses,
    KeyAdvice,
    KeyRules,
    KeySummary,
    RuleCount,
    UnusedRule,
    UsedRule,
    respond,
)
from gateway.admin.parsing import parse_days, query_params
from gateway.keys.usage import ADDRESSES_KEPT, DAY
from gateway.policy import advice as policy_advice
from gateway.policy.rules import Policy, RuleIdent, ident_methods
from gateway.runtime.appkeys import RUNTIME
from gateway.settings.models import USAGE_KEEP_DAYS_LIMIT
from gateway.store.base import KeyRow, RuleTotal

DEFAULT_DAYS = 30  # the window of /rules, /advice and the summary's "unused" by default
DAYS_PARAMS = frozenset({"days"})
SUMMARY_PARAMS = frozenset({"unused_days"})


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def window_start(days: int, now: float) -> int:
    """The first UTC day (unix seconds // 86400) of a window of `days` days ending today."""
    return int(now) // DAY - days + 1


async def key_rules(request: web.Request) -> web.Response:
    """GET /api/v1/keys/{id}/rules?days=N: the policy rules a key was allowed by in the last
    N days (default 30, at most usage.keep_days), with counts, most used first."""
    runtime = request.app[RUNTIME]
    params = query_params(request, DAYS_PARAMS)
    days = parse_days(params, "days", DEFAULT_DAYS, runtime.settings.usage.keep_days, kept=True)
    row = await key_row_of(request)
    first_day = window_start(days, clock.now())
    totals = await runtime.store.rule_totals(row.id, first_day)
    return respond(
        KeyRules(
            key_id=row.id,
            key_name=row.name,
            days=days,
            since=_time(first_day * DAY),
            items=[
                RuleCount(
                    role=total.role,
                    methods=ident_methods((total.role, total.methods, total.path)),
                    path=total.path,
                    count=total.count,
                    last_used_at=_time(total.last_used_at),
                )
                for total in totals
            ],
        )
    )


async def key_addresses(request: web.Request) -> web.Response:
    """GET /api/v1/keys/{id}/addresses: a key's last client addresses (at most
    ADDRESSES_KEPT), newest first."""
    runtime = request.app[RUNTIME]
    query_params(request, frozenset())
    row = await key_row_of(request)
    seen = await runtime.store.seen_addresses(row.id, ADDRESSES_KEPT)
    return respond(
        KeyAddresses(
            key_id=row.id,
            key_name=row.name,
            items=[
                AddressSeen(address=s.address, last_seen_at=_time(s.last_seen_at)) for s in seen
            ],
        )
    )


def _unused_rule(ident: RuleIdent) -> UnusedRule:
    return UnusedRule(role=ident[0], methods=ident_methods(ident), path=ident[2])


async def key_advice(request: web.Request) -> web.Response:
    """GET /api/v1/keys/{id}/advice?days=N: least-privilege advice from the last N days
    (default 30, at most usage.keep_days): the rules and roles used and never used, and the
    smallest role set of the current policy that still allows what the key did. Advice
    only: nothing changes."""
    runtime = request.app[RUNTIME]
    params = query_params(request, DAYS_PARAMS)
    days = parse_days(params, "days", DEFAULT_DAYS, runtime.settings.usage.keep_days, kept=True)
    row = await key_row_of(request)
    first_day = window_start(days, clock.now())
    totals = await runtime.store.rule_totals(row.id, first_day)
    return respond(advice_answer(row, runtime.policy, totals, days, first_day))


def advice_answer(
    row: KeyRow, policy: Policy, totals: Sequence[RuleTotal], days: int, first_day: int
) -> KeyAdvice:
    """Return the advice answer of a key from its rule totals since `first_day` (the admin
    API's and `keygate keys advice --json`'s)."""
    used = [
        policy_advice.UsedRule((total.role, total.methods, total.path), total.count)
        for total in totals
    ]
    advice = policy_advice.advise(policy, row.roles, used)
    return KeyAdvice(
        key_id=row.id,
        key_name=row.name,
        days=days,
        since=_time(first_day * DAY),
        requests=advice.requests,
        used_rules=[
            UsedRule(
                role=rule.ident[0],
                methods=ident_methods(rule.ident),
                path=rule.ident[2],
                count=rule.count,
            )
            for rule in advice.used_rules
        ],
        unused_rules=[_unused_rule(ident) for ident in advice.unused_rules],
        used_roles=advice.used_roles,
        unused_roles=advice.unused_roles,
        suggested_roles=advice.suggested_roles,
        unused=advice.unused,
        message=policy_advice.advice_message(advice, days),
    )


async def keys_summary(request: web.Request) -> web.Response:
    """GET /api/v1/keys/summary?unused_days=N: the keys counted by state (total, active,
    revoked, expired, expiring within expiry.warn_days, unused for N days; default 30)."""
    runtime = request.app[RUNTIME]
    params = query_params(request, SUMMARY_PARAMS)
    days = parse_days(params, "unused_days", DEFAULT_DAYS, USAGE_KEEP_DAYS_LIMIT, kept=False)
    now = clock.now()
    summary = await runtime.store.key_summary(
        now, runtime.settings.expiry.warn_days * DAY, now - days * DAY
    )
    return respond(
        KeySummary(
            total=summary.total,
            active=summary.active,
            revoked=summary.revoked,
            expired=summary.expired,
            expiring=summary.expiring,
            unused=summary.unused,
            unused_days=days,
        )
    )
