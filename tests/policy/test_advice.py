"""The least-privilege chooser and the rule the compiled matcher names (pure, no server)."""

from __future__ import annotations

import pytest

from gateway.policy import advice
from gateway.policy.advice import UsedRule, advice_message, advise, choose_roles
from gateway.policy.rules import Policy, policy_from_data


def policy(roles: dict[str, list[str]], includes: dict[str, list[str]] | None = None) -> Policy:
    data = {
        name: {"allow": rules, "include": (includes or {}).get(name, [])}
        for name, rules in roles.items()
    }
    return policy_from_data({"roles": data}, "<test>")


ROLES = {
    "reader": ["GET /items/**", "GET /tags/*"],
    "writer": ["POST,PUT /items/**"],
    "admin": ["* /items/**", "DELETE /tags/*", "GET /admin/**"],
    "auditor": ["GET /items/**", "GET /tags/*", "GET /audit/**"],
}


def used(role: str, methods: str, path: str, count: int = 1) -> UsedRule:
    return UsedRule((role, methods, path), count)


def test_the_matcher_names_the_rule_that_allowed() -> None:
    p = policy(ROLES)
    matcher = p.matcher_for(frozenset({"reader", "writer"}))
    rule = matcher.allowing("GET", "/items/a/b")
    assert rule is not None and rule.ident == ("reader", "GET", "/items/**")
    rule = matcher.allowing("HEAD", "/tags/x")  # GET covers HEAD: the rule as written
    assert rule is not None and rule.ident == ("reader", "GET", "/tags/*")
    rule = matcher.allowing("PUT", "/items")
    assert rule is not None and rule.ident == ("writer", "POST,PUT", "/items/**")
    assert matcher.allowing("DELETE", "/items/a") is None
    assert matcher.allowing("GET", "/tags/x/y") is None
    # Two rules on one pattern: the first in policy order (role name, then position).
    both = p.matcher_for(frozenset({"admin", "reader"}))
    rule = both.allowing("GET", "/items/1")
    assert rule is not None and rule.ident == ("admin", "*", "/items/**")
    # A method outside the known ones only meets `*` rules.
    rule = both.allowing("PURGE", "/items/1")
    assert rule is not None and rule.ident == ("admin", "*", "/items/**")
    assert both.allowing("PURGE", "/tags/1") is None
    # explain names the same rule the proxy counts.
    assert p.explain(["admin", "reader"], "GET", "/items/1").rule == both.allowing(
        "GET", "/items/1"
    )


def test_a_literal_and_a_wildcard_end_are_told_apart() -> None:
    p = policy({"a": ["GET /x/y"], "b": ["GET /x/*", "GET /x/**"]})
    matcher = p.matcher_for(frozenset({"a", "b"}))
    for path, ident in [
        ("/x/y", ("b", "GET", "/x/**")),  # `**` from /x is tried first, as the trie does
        ("/x/z", ("b", "GET", "/x/**")),
        ("/x", ("b", "GET", "/x/**")),
    ]:
        rule = matcher.allowing("GET", path)
        assert rule is not None and rule.ident == ident, path
    only_a = p.matcher_for(frozenset({"a"}))
    rule = only_a.allowing("GET", "/x/y/")
    assert rule is not None and rule.ident == ("a", "GET", "/x/y")


def test_chooser_suggests_the_one_role_used() -> None:
    p = policy(ROLES)
    rules = [used("reader", "GET", "/items/**", 9), used("reader", "GET", "/tags/*", 2)]
    # reader and auditor both cover it: reader is the key's own and has fewer rules.
    assert choose_roles(p, ["reader", "writer", "admin"], rules) == ["reader"]
    # Among equal sizes the key's own roles first, even with more rules.
    assert choose_roles(p, ["auditor", "writer"], rules) == ["auditor"]


def test_chooser_needs_every_method_of_a_used_rule() -> None:
    p = policy(ROLES)
    # The writer rule as written: POST and PUT on /items/**; `*` on /items/** covers both.
    rules = [used("writer", "POST,PUT", "/items/**"), used("reader", "GET", "/tags/*")]
    assert choose_roles(p, ["reader", "writer", "admin"], rules) == ["reader", "writer"]
    # A `*` rule is only covered by a `*` rule on the same pattern.
    assert choose_roles(p, ["admin"], [used("admin", "*", "/items/**")]) == ["admin"]
    # Same path pattern needed: GET /admin/** is admin's alone.
    assert choose_roles(p, [], [used("admin", "GET", "/admin/**")]) == ["admin"]


def test_chooser_leaves_out_rules_no_role_has_any_more() -> None:
    p = policy(ROLES)
    assert choose_roles(p, ["reader"], [used("gone", "GET", "/old/**")]) == []
    rules = [used("gone", "GET", "/old/**"), used("reader", "GET", "/tags/*")]
    assert choose_roles(p, ["reader"], rules) == ["reader"]


def test_chooser_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Twelve roles each allowing one path; the key used all twelve: the exact search would
    # try 4,095 sets, the limit stops it and the greedy cover answers the same.
    roles = {f"r{n:02}": [f"GET /p{n}"] for n in range(12)}
    p = policy(roles)
    rules = [used(f"r{n:02}", "GET", f"/p{n}") for n in range(12)]
    monkeypatch.setattr(advice, "ADVICE_SEARCH_LIMIT", 50)
    assert choose_roles(p, list(roles), rules) == sorted(roles)


def test_advice_of_a_key_that_used_one_of_three_roles() -> None:
    p = policy(ROLES)
    rules = [used("reader", "GET", "/items/**", 9), used("reader", "GET", "/tags/*", 2)]
    got = advise(p, ("admin", "reader", "writer"), rules)
    assert got.requests == 11 and not got.unused
    assert got.used_roles == ["reader"]
    assert got.unused_roles == ["admin", "writer"]
    assert got.suggested_roles == ["reader"]
    assert got.rules_total == 6
    assert got.unused_rules == [
        ("admin", "*", "/items/**"),
        ("admin", "DELETE", "/tags/*"),
        ("admin", "GET", "/admin/**"),
        ("writer", "POST,PUT", "/items/**"),
    ]
    assert advice_message(got, 30) == (
        "In the last 30 days this key used only role 'reader' (2 of its 6 rules); "
        "roles 'admin', 'writer' were never used."
    )


def test_advice_of_an_unused_key_and_of_included_roles() -> None:
    p = policy(ROLES)
    idle = advise(p, ("reader",), [])
    assert idle.unused and idle.suggested_roles is None and idle.unused_roles == ["reader"]
    assert advice_message(idle, 1) == "In the last 1 day this key made no requests."
    # A role including the used one is not unused: it grants what was used.
    nested = policy({"base": ["GET /a"], "top": ["POST /a"]}, {"top": ["base"]})
    got = advise(nested, ("top",), [used("base", "GET", "/a", 3)])
    assert got.used_roles == ["base"] and got.unused_roles == []
    # 'base' is the key's own too (its role includes it), and has fewer rules.
    assert got.suggested_roles == ["base"]
    assert advice_message(got, 30) == (
        "In the last 30 days this key used role 'base' (1 of its 2 rules); "
        "every role it holds was used."
    )


def test_a_rule_keeps_its_name_across_a_reload_that_moves_it() -> None:
    before = policy({"r": ["GET /a", "POST /b"]})
    after = policy({"r": ["POST /b", "PUT /c", "GET  /a"]})  # moved, spaced differently
    old = before.matcher_for(frozenset({"r"})).allowing("GET", "/a")
    new = after.matcher_for(frozenset({"r"})).allowing("GET", "/a")
    assert old is not None and new is not None
    assert (old.index, new.index) == (0, 2)
    assert old.ident == new.ident == ("r", "GET", "/a")
    assert old.number == new.number  # counted under the same name, whatever its position
    other = after.matcher_for(frozenset({"r"})).allowing("PUT", "/c")
    assert other is not None and other.number != new.number
