"""The request decision (flow steps 1-6), shared by the proxy, the forward-auth endpoints and
`policy explain` (no aiohttp).

`caller_of` turns the credential found in a request's headers into the calling key (steps 2
and 4); `decide` then checks, in this order, the request-target (step 1), the caller
(refused, anonymous or a key: step 3), protected paths (5), the policy (6) and every method
override the request carries, and returns the refusal the proxy answers, or None to forward.
`admit` is `decide` plus the key's rate limit and its use count: what the proxy and the
forward-auth endpoints run for every request. Anything that answers "would keygate let this
through" calls `decide`, so it cannot drift from what the proxy does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.keys.table import CachedKey, KeyTable
from gateway.policy.rules import Policy, Rule
from gateway.proxy import auth
from gateway.proxy.credentials import Credential, target_carries_key
from gateway.proxy.hygiene import query_method_overrides
from gateway.proxy.refusals import (
    BAD_OVERRIDE,
    E_BAD_TARGET,
    FORBIDDEN,
    KEY_EXPIRED,
    KEY_MISPLACED,
    KEY_MISSING,
    KEY_REVOKED,
    KEY_ROLLED,
    KEY_UNKNOWN,
    OVERRIDE_FORBIDDEN,
    PROTECTED,
    Refusal,
)
from gateway.proxy.target import TargetError, decoded_path
from gateway.ratelimit.limiters import Decision, Limiter, LocalLimiter, RateLimit

# Who is calling: the authenticated key, the refusal of its credential, or None (no credential).
Caller = CachedKey | Refusal | None
# What `explain` calls each refusal (the others by their error code, e.g. `key_revoked`).
_REASONS = {
    PROTECTED: "protected",
    FORBIDDEN: "no_rule",
    OVERRIDE_FORBIDDEN: "override_forbidden",
}
ALLOWED = "allowed"
# Every reason `explain` gives a role set or a stored key (the admin API's document lists
# them): the target's refusals, the key look-up's (authenticate_digest), the policy's.
EXPLAIN_REASONS: tuple[str, ...] = (
    ALLOWED,
    *_REASONS.values(),
    *(
        refusal.code
        for refusal in (
            BAD_OVERRIDE,
            KEY_MISPLACED,
            KEY_UNKNOWN,
            KEY_REVOKED,
            KEY_EXPIRED,
            KEY_ROLLED,
        )
    ),
    E_BAD_TARGET,
)


def caller_of(table: KeyTable, credential: Credential | Refusal | None, now: float) -> Caller:
    """Return the key a request's credential names, or the refusal of it (None: anonymous)."""
    if credential is None or isinstance(credential, Refusal):
        return credential
    return auth.authenticate(table, credential.key, now)


def decide(
    policy: Policy,
    method: str,
    raw_target: str,
    caller: Caller,
    overrides: Sequence[str] = (),
    *,
    deny_anonymous: bool = False,
) -> Refusal | None:
    """Return the proxy's refusal of METHOD RAW_TARGET from `caller`, or None to forward it.

    `overrides` are the values of the request's method-override headers (the `_method`
    parameters are read from the target here): each is decided as a method of its own.
    """
    verdict = verdict_of(
        policy, method, raw_target, caller, overrides, deny_anonymous=deny_anonymous
    )
    return verdict if isinstance(verdict, Refusal) else None


def verdict_of(
    policy: Policy,
    method: str,
    raw_target: str,
    caller: Caller,
    overrides: Sequence[str] = (),
    *,
    deny_anonymous: bool = False,
) -> Refusal | Rule | None:
    """Decide as `decide` does, naming the rule that allowed a key caller's METHOD (its use
    is counted under it): a refusal, that rule, or None (an anonymous caller let through)."""
    try:
        path = decoded_path(raw_target)
    except TargetError as error:
        return Refusal(400, E_BAD_TARGET, str(error))
    if target_carries_key(raw_target):  # the backend logs its URLs: never a key there
        return KEY_MISPLACED
    if caller is None:
        return KEY_MISSING if deny_anonymous else None
    if isinstance(caller, Refusal):
        return caller
    rule = auth.allowing_rule(policy, caller, method, path)
    if isinstance(rule, Refusal):
        return rule
    for value in overrides:
        refusal = _override_refusal(policy, caller, path, value)
        if refusal is not None:
            return refusal
    if "?" in raw_target:  # no allocation for the usual target without a query
        for value in query_method_overrides(raw_target):
            refusal = _override_refusal(policy, caller, path, value)
            if refusal is not None:
                return refusal
    return rule


@dataclass(frozen=True, slots=True)
class Limited:
    """A key caller refused for its rate limit: the limit and the limiter's decision."""

    limit: RateLimit
    decision: Decision


class UseCounter(Protocol):
    """Where an admitted key's use is counted (gateway.keys.usage.UsageCounter)."""

    def record(
        self, key_id: int, now: float, address: str | None = None, rule: Rule | None = None
    ) -> None:
        """Note one use of a key at `now`, from the client `address`, allowed by `rule`."""
        ...

    def refused(self, key_id: int, now: float, *, limited: bool, address: str | None) -> None:
        """Note a key's request refused by the policy (403) or its rate limit (429)."""
        ...


async def admit(
    policy: Policy,
    method: str,
    raw_target: str,
    caller: Caller,
    overrides: Sequence[str],
    limiter: Limiter,
    uses: UseCounter,
    moment: float,
    *,
    deny_anonymous: bool,
    address: str | None = None,
) -> Refusal | Limited | None:
    """Decide a request (`decide`), then count a key caller against its rate limit and, when
    admitted, count its use at `moment`. None: let it through (to the upstream, or for a
    forward-auth answer, to the front proxy's upstream). A key caller's policy refusal (403)
    and rate-limit refusal are counted too, with the client `address`."""
    verdict = verdict_of(
        policy, method, raw_target, caller, overrides, deny_anonymous=deny_anonymous
    )
    if isinstance(verdict, Refusal):
        if verdict.status == 403 and isinstance(caller, CachedKey):
            uses.refused(caller.id, moment, limited=False, address=address)
        return verdict
    if not isinstance(caller, CachedKey):
        return None
    limit = caller.rate_limit or policy.rate_limit_for(caller.roles)
    if limit is not None:
        decision = (
            limiter.admit_now(caller.id, limit)
            if isinstance(limiter, LocalLimiter)
            else await limiter.check(caller.id, limit)
        )
        if decision is not None and not decision.allowed:
            uses.refused(caller.id, moment, limited=True, address=address)
            return Limited(limit, decision)
    uses.record(caller.id, moment, address, verdict)
    return None


def _override_refusal(policy: Policy, caller: CachedKey, path: str, value: str) -> Refusal | None:
    """Decide a method override: Jersey, Spring and ASP.NET run the request as that method."""
    method = value.strip().upper()
    if not method.isascii() or not method.isalpha():
        return BAD_OVERRIDE
    if auth.authorize(policy, caller, method, path) is not None:
        return OVERRIDE_FORBIDDEN
    return None


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision with what an administrator needs to read it."""

    refusal: Refusal | None  # exactly what the proxy would answer; None: forwarded
    path: str | None  # the decoded path the policy saw; None when the target was refused
    rule: Rule | None  # the allow rule that let the request through (None when refused)

    @property
    def reason(self) -> str:
        """`allowed`, `protected`, `no_rule`, `override_forbidden` or the refusal's code."""
        if self.refusal is None:
            return ALLOWED
        return _REASONS.get(self.refusal, self.refusal.code)


def explain(
    policy: Policy,
    method: str,
    raw_target: str,
    caller: Caller,
    overrides: Sequence[str] = (),
) -> Explanation:
    """Decide as the proxy does (`verdict_of`), and name the rule that allowed the request."""
    verdict = verdict_of(policy, method, raw_target, caller, overrides)
    refusal = verdict if isinstance(verdict, Refusal) else None
    rule = verdict if isinstance(verdict, Rule) else None
    try:
        path = decoded_path(raw_target)
    except TargetError:
        return Explanation(refusal, None, None)
    return Explanation(refusal, path, rule)


def roles_caller(roles: Sequence[str]) -> CachedKey:
    """Return a caller holding `roles` and nothing else (explaining a role set, not a key)."""
    return CachedKey(0, "", frozenset(roles), False, None)
