"""Least-privilege advice: which of a key's rules and roles it used, and the smallest role set
of the policy that still allows what it did (pure; advice only, nothing changes)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.policy.rules import ALL_METHODS, Policy, Rule, RuleIdent, split_path

# Role sets the chooser tries, at most, before it settles for a greedy cover (the policy's
# roles can be many: the exact search must stay bounded).
ADVICE_SEARCH_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class UsedRule:
    """A rule the key was allowed by in the window, named as written, and how often."""

    ident: RuleIdent
    count: int


@dataclass(frozen=True, slots=True)
class Advice:
    """What a key used of its grant, and a narrower role set that would still allow it."""

    requests: int
    used_rules: list[UsedRule]
    unused_rules: list[RuleIdent]
    used_roles: list[str]
    unused_roles: list[str]
    suggested_roles: list[str] | None  # None: the key made no request in the window
    rules_total: int  # the rules the key's roles grant (includes resolved)

    @property
    def unused(self) -> bool:
        """True when the key made no request at all in the window."""
        return self.requests == 0


# One thing a used rule let the key do: a method (or `*`: every method) on a path pattern.
_Need = tuple[str, tuple[str, ...]]


def _needs(used: Iterable[UsedRule]) -> set[_Need]:
    """Every (method, pattern) the used rules stand for: each method they name, as written."""
    needs: set[_Need] = set()
    for rule in used:
        _role, methods, path = rule.ident
        segments = split_path(path)
        for method in methods.split(","):
            needs.add((method, segments))
    return needs


def _covers(rule: Rule, need: _Need) -> bool:
    """True when `rule` allows the need: the same path pattern, its methods covering the
    method (`*` needs a rule for every method)."""
    method, segments = need
    if rule.segments != segments:
        return False
    if method == ALL_METHODS:
        return rule.methods is None
    return rule.allows_method(method)


def _allowed(policy: Policy, roles: Iterable[str], needs: set[_Need]) -> bool:
    """True when the roles (includes resolved) allow every need."""
    rules = policy.rules_for(roles)
    return all(any(_covers(rule, need) for rule in rules) for need in needs)


def choose_roles(policy: Policy, own: Sequence[str], used: Sequence[UsedRule]) -> list[str]:
    """Return the smallest set of the policy's roles that allows everything `used` did.

    A used rule stands for each method it names on its path pattern as written; a role set
    allows it when one of its rules (includes resolved) has the same path pattern and
    methods covering that method (`*` only by a `*` rule). Among sets of the smallest size:
    the most of the key's own roles first (those it holds and those they include, so a
    role inside a broad one the key holds counts as its own), then the fewest rules, then
    by name. What no role
    of the policy allows any more (a rule since removed) is left out. Past
    ADVICE_SEARCH_LIMIT sets tried, a greedy cover (the role allowing most first) is given.
    """
    needs = _needs(used)
    candidates = sorted(
        name for name in policy.roles if any(_allowed(policy, (name,), {need}) for need in needs)
    )
    needs = {need for need in needs if any(_allowed(policy, (n,), {need}) for n in candidates)}
    if not needs:
        return []
    own_set = policy.effective_roles(own)
    tried = 0
    for size in range(1, len(candidates) + 1):
        best: tuple[int, int, tuple[str, ...]] | None = None
        for combo in itertools.combinations(candidates, size):
            tried += 1
            if tried > ADVICE_SEARCH_LIMIT:
                return _greedy(policy, candidates, needs)
            if _allowed(policy, combo, needs):
                rank = (-len(own_set.intersection(combo)), len(policy.rules_for(combo)), combo)
                if best is None or rank < best:
                    best = rank
        if best is not None:
            return list(best[2])
    return _greedy(policy, candidates, needs)  # not reached: all candidates cover every need


def _greedy(policy: Policy, candidates: list[str], needs: set[_Need]) -> list[str]:
    """Cover the needs role by role, the role allowing the most remaining needs first."""
    chosen: list[str] = []
    left = set(needs)
    while left:
        name = max(
            candidates,
            key=lambda n: (sum(_allowed(policy, (n,), {need}) for need in left), -len(n)),
        )
        covered = {need for need in left if _allowed(policy, (name,), {need})}
        if not covered:
            break
        chosen.append(name)
        left -= covered
    return sorted(chosen)


def advise(policy: Policy, own: Sequence[str], used: Sequence[UsedRule]) -> Advice:
    """Return the advice for a key holding `own` roles that was allowed by `used` rules.

    used_roles: the roles whose rules the key used (the role a rule is written in);
    unused_roles: the key's own roles that grant none of them (includes resolved).
    """
    rules = policy.rules_for(own)
    used_idents = {rule.ident for rule in used}
    used_roles = sorted({rule.ident[0] for rule in used})
    unused_roles = [
        role for role in own if not policy.effective_roles((role,)).intersection(used_roles)
    ]
    seen: set[RuleIdent] = set()
    unused_rules: list[RuleIdent] = []
    for rule in rules:
        if rule.ident not in used_idents and rule.ident not in seen:
            seen.add(rule.ident)
            unused_rules.append(rule.ident)
    requests = sum(rule.count for rule in used)
    return Advice(
        requests=requests,
        used_rules=sorted(used, key=lambda rule: (-rule.count, rule.ident)),
        unused_rules=unused_rules,
        used_roles=used_roles,
        unused_roles=unused_roles,
        suggested_roles=choose_roles(policy, own, used) if requests else None,
        rules_total=len({rule.ident for rule in rules}),
    )


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def advice_message(advice: Advice, days: int) -> str:
    """Return the advice as one plain sentence."""
    window = f"In the last {days} day{'s' if days != 1 else ''}"
    if advice.unused:
        return f"{window} this key made no requests."
    used_in_grant = advice.rules_total - len(advice.unused_rules)
    roles = advice.used_roles
    what = (
        f"role{'s' if len(roles) != 1 else ''} {_quoted(roles)}"
        f" ({used_in_grant} of its {advice.rules_total} rules)"
    )
    if advice.unused_roles:
        never = advice.unused_roles
        plural = len(never) != 1
        return (
            f"{window} this key used only {what}; role{'s' if plural else ''} {_quoted(never)}"
            f" {'were' if plural else 'was'} never used."
        )
    return f"{window} this key used {what}; every role it holds was used."
