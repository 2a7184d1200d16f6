"""Behaviour of the route policy: the shipped 1Integrate policy, rule language, loader errors."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway.policy.rules import (
    KNOWN_METHODS,
    Policy,
    PolicyError,
    load_policy,
    policy_from_data,
    split_path,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = Path(gateway.__file__).resolve().parent / "examples" / "policy.yaml"
CONFIG_POLICY = REPO / "config" / "policy.yaml"
REST = "/1Integrate/rest"
METHODS = sorted(KNOWN_METHODS)


@pytest.fixture(scope="module")
def shipped() -> Policy:
    return load_policy(EXAMPLE)


def one_role(*rules: str, protected: Iterable[str] = ()) -> Policy:
    """A policy with a single role `r` holding `rules`."""
    return policy_from_data(
        {"roles": {"r": {"allow": list(rules)}}, "protected": list(protected)}, "t"
    )


def allowed(policy: Policy, roles: Iterable[str], method: str, path: str) -> bool:
    """Ask both the slow explain() and the compiled matcher; they must agree."""
    role_set = frozenset(roles)
    slow = policy.explain(role_set, method, path).allowed
    fast = not policy.is_protected_path(path) and policy.matcher_for(role_set).allows(method, path)
    assert slow == fast, (sorted(role_set), method, path)
    return slow


# --------------------------------------------------------------------- shipped policy


def test_example_policy_is_shipped_twice_identically() -> None:
    assert EXAMPLE.read_text(encoding="utf-8") == CONFIG_POLICY.read_text(encoding="utf-8")
    assert set(load_policy(CONFIG_POLICY).roles) == set(load_policy(EXAMPLE).roles)


def test_1int_user_reads_sessions_but_cannot_write_rules(shipped: Policy) -> None:
    user = ["1int-user"]
    assert allowed(shipped, user, "GET", f"{REST}/sessions")
    assert allowed(shipped, user, "GET", f"{REST}/sessions/folder/s1")
    assert allowed(shipped, user, "HEAD", f"{REST}/sessions/folder/s1")
    assert allowed(shipped, user, "GET", f"{REST}/rules/r1")
    assert allowed(shipped, user, "PUT", f"{REST}/sessions/s1")  # run control is a PUT
    assert not allowed(shipped, user, "PUT", f"{REST}/rules/r1")
    assert not allowed(shipped, user, "POST", f"{REST}/rules")
    assert not allowed(shipped, user, "DELETE", f"{REST}/sessions/s1")
    assert not allowed(shipped, user, "GET", f"{REST}/token")


def test_1int_admin_writes_rules(shipped: Policy) -> None:
    admin = ["1int-admin"]
    assert allowed(shipped, admin, "PUT", f"{REST}/rules/folder/r1")
    assert allowed(shipped, admin, "DELETE", f"{REST}/datastores/d1")
    assert allowed(shipped, admin, "GET", f"{REST}/sessions/s1")  # via 1int-user
    assert not allowed(shipped, admin, "PATCH", f"{REST}/rules/r1")
    decision = shipped.explain(admin, "PUT", f"{REST}/rules/r1")
    assert decision.rule is not None
    assert decision.rule.role == "1int-rules-write"


@pytest.mark.parametrize(
    "path",
    [
        f"{REST}/apikeys",
        f"{REST}/apikeys/",
        f"{REST}/apikeys/7",
        f"{REST}/apikeys/7/revoke",
        "/1integrate/REST/ApiKeys/x",
        "/1INTEGRATE/REST/APIKEYS",
        "/api/v1/keys",
        "/api/v1/keys/3",
        "/API/V1/Keys/3/revoke",
        "/api/v1/audit",
        "/api/v1/policy/check",
    ],
)
def test_nobody_reaches_key_management(shipped: Policy, path: str) -> None:
    assert shipped.is_protected_path(path)
    assert shipped.is_protected(split_path(path))
    every_role = frozenset(shipped.roles)
    for method in METHODS:
        decision = shipped.explain(every_role, method, path)
        assert not decision.allowed
        assert decision.reason == "protected"


@pytest.mark.parametrize(
    "path",
    [
        f"{REST}/apikeysx",
        f"{REST}/apikey",
        f"{REST}/sessions/apikeys",
        "/1Integrate/apikeys",
        "/api/v1/keysets",
        "/api/v2/keys",
    ],
)
def test_neighbours_of_protected_paths_are_not_protected(shipped: Policy, path: str) -> None:
    assert not shipped.is_protected_path(path)
    assert not shipped.is_protected(split_path(path))


def test_builtin_protection_holds_even_for_an_allow_everything_role() -> None:
    policy = one_role("* /**")
    assert allowed(policy, ["r"], "DELETE", "/anything/at/all")
    for path in ("/api/v1/keys", "/api/v1/keys/1", "/Api/V1/KEYS/1/", "/api/v1/audit/x"):
        assert policy.explain(["r"], "GET", path).reason == "protected"
        assert policy.is_protected_path(path)


# --------------------------------------------------------------------- rule language


def test_star_matches_exactly_one_segment() -> None:
    policy = one_role("GET /a/*/c")
    assert allowed(policy, ["r"], "GET", "/a/b/c")
    assert allowed(policy, ["r"], "GET", "/a/anything-else/c")
    assert not allowed(policy, ["r"], "GET", "/a/c")
    assert not allowed(policy, ["r"], "GET", "/a/b/x/c")
    assert not allowed(policy, ["r"], "GET", "/a/b/c/d")
    assert not allowed(policy, ["r"], "GET", "/a/b")


def test_double_star_matches_any_number_of_segments_including_none() -> None:
    policy = one_role("GET /a/**")
    for path in ("/a", "/a/", "/a/b", "/a/b/c/d/e"):
        assert allowed(policy, ["r"], "GET", path), path
    for path in ("/", "/ab", "/b/a", "/A/b"):
        assert not allowed(policy, ["r"], "GET", path), path
    everything = one_role("GET /**")
    for path in ("/", "/x", "/x/y/z"):
        assert allowed(everything, ["r"], "GET", path)


def test_literal_rules_are_exact_and_case_sensitive() -> None:
    policy = one_role("GET /a/b")
    assert allowed(policy, ["r"], "GET", "/a/b")
    assert not allowed(policy, ["r"], "GET", "/a/b/c")
    assert not allowed(policy, ["r"], "GET", "/a")
    assert not allowed(policy, ["r"], "GET", "/A/b")


def test_trailing_slash_is_ignored_on_both_sides() -> None:
    assert allowed(one_role("GET /a/b"), ["r"], "GET", "/a/b/")
    assert allowed(one_role("GET /a/b/"), ["r"], "GET", "/a/b")
    root = one_role("GET /")
    assert allowed(root, ["r"], "GET", "/")
    assert not allowed(root, ["r"], "GET", "/a")


def test_get_implies_head_but_not_the_reverse() -> None:
    get = one_role("GET /a")
    assert allowed(get, ["r"], "HEAD", "/a")
    head = one_role("HEAD /a")
    assert allowed(head, ["r"], "HEAD", "/a")
    assert not allowed(head, ["r"], "GET", "/a")


def test_comma_method_lists() -> None:
    policy = one_role("PUT,POST /a")
    assert allowed(policy, ["r"], "PUT", "/a")
    assert allowed(policy, ["r"], "POST", "/a")
    for method in ("GET", "HEAD", "DELETE", "PATCH"):
        assert not allowed(policy, ["r"], method, "/a")


def test_star_method_allows_every_method() -> None:
    policy = one_role("* /a")
    for method in (*METHODS, "PROPFIND"):
        assert allowed(policy, ["r"], method, "/a")
    assert not allowed(policy, ["r"], "GET", "/b")


def test_include_chains_and_union_of_roles() -> None:
    policy = policy_from_data(
        {
            "roles": {
                "top": {"include": ["middle"], "allow": ["GET /top"]},
                "middle": {"include": ["bottom"]},
                "bottom": {"allow": ["GET /bottom/**"]},
                "other": {"allow": ["POST /other"]},
            }
        },
        "t",
    )
    assert policy.effective_roles(["top"]) == {"top", "middle", "bottom"}
    assert allowed(policy, ["top"], "GET", "/bottom/x")
    assert allowed(policy, ["middle"], "GET", "/bottom/x")
    assert not allowed(policy, ["middle"], "GET", "/top")
    assert not allowed(policy, ["bottom"], "POST", "/other")
    assert not allowed(policy, ["top"], "POST", "/other")
    assert allowed(policy, ["top", "other"], "POST", "/other")
    assert allowed(policy, ["top", "other"], "GET", "/top")


def test_unknown_roles_grant_nothing_and_default_is_deny() -> None:
    policy = one_role("GET /a")
    assert policy.effective_roles(["ghost"]) == frozenset()
    assert not allowed(policy, ["ghost"], "GET", "/a")
    assert not allowed(policy, [], "GET", "/a")
    assert allowed(policy, ["ghost", "r"], "GET", "/a")
    decision = policy.explain(["r"], "GET", "/nothing")
    assert decision == type(decision)(False, "no_rule", None)


def test_explain_names_the_deciding_rule() -> None:
    policy = one_role("POST /x", "GET /a/**", "GET /b")
    decision = policy.explain(["r"], "GET", "/a/1")
    assert decision.allowed
    assert decision.reason == "allowed"
    assert decision.rule is not None
    assert (decision.rule.role, decision.rule.index, decision.rule.text) == ("r", 1, "GET /a/**")


def test_matcher_is_memoised_per_role_set() -> None:
    policy = one_role("GET /a")
    first = policy.matcher_for(frozenset({"r"}))
    assert policy.matcher_for(frozenset({"r"})) is first
    assert policy.matcher_for(frozenset()) is not first


# --------------------------------------------------------------------- broken policies


BROKEN = """\
roles:
  bad-method:
    allow:
      - FETCH /a
      - get /b
  no-slash:
    allow:
      - GET a/b
  double-star-inside:
    allow:
      - GET /a/**/b
  partial-wildcard:
    allow:
      - GET /a*
  includes-ghost:
    include: [ghost]
  cycle-a:
    include: [cycle-b]
  cycle-b:
    include: [cycle-a]
  odd-key:
    permit: [GET /a]
  allow-not-list:
    allow: GET /a
  good:
    allow:
      - GET /fine
      - GET /fine/*/too
      - DELETE /x y
extra: true
protected:
  - apikeys
"""


def test_broken_policy_reports_every_problem_with_its_location(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    problems = caught.value.problems
    assert all(problem.startswith(f"{path}: ") for problem in problems)

    def one(*fragments: str) -> None:
        matching = [p for p in problems if all(f in p for f in fragments)]
        assert len(matching) == 1, (fragments, problems)

    one("'bad-method', allow[0]", "FETCH")
    one("'bad-method', allow[1]", "'get'")
    one("'no-slash', allow[0]", "must start with '/'")
    one("'double-star-inside', allow[0]", "'**'")
    one("'partial-wildcard', allow[0]", "whole segments")
    one("'includes-ghost'", "unknown role 'ghost'")
    one("role 'cycle-a' includes itself: 'cycle-a' -> 'cycle-b' -> 'cycle-a'")
    one("role 'cycle-b' includes itself: 'cycle-b' -> 'cycle-a' -> 'cycle-b'")
    one("'odd-key'", "unknown key 'permit'")
    one("'allow-not-list'", "allow must be a list")
    one("'good', allow[2]", "METHODS PATH")
    one("unknown top-level key 'extra'")
    one("protected[0]", "must start with '/'")
    assert len(problems) == 13
    assert str(caught.value).count("\n") == 13  # the message lists them all


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "'roles' must be a non-empty mapping"),
        ({"roles": {}}, "'roles' must be a non-empty mapping"),
        ({"roles": ["a"]}, "'roles' must be a non-empty mapping"),
        ([], "top level must be a mapping"),
        ({"roles": {"r": "GET /a"}}, "role 'r' must be a mapping"),
        ({"roles": {"r": {"allow": [7]}}}, "allow[0]: rule must be a string"),
        ({"roles": {"r": {"include": "other"}}}, "include must be a list"),
        ({"roles": {"r": {"include": ["r"]}}}, "includes itself"),
        ({"roles": {"r": {"description": 3}}}, "description must be a string"),
        ({"roles": {"r": {"allow": ["GET,  /a"]}}}, "unknown method ''"),
        ({"roles": {"r": {"allow": ["GET //a"]}}}, "empty segment"),
        ({"roles": {"r": {"allow": ["GET /a/../b"]}}}, "plain decoded segments"),
        ({"roles": {"r": {"allow": ["GET /a%2fb"]}}}, "plain decoded segments"),
        ({"roles": {"r": {}}, "protected": "/a"}, "'protected' must be a list"),
        ({"roles": {"r": {}}, "protected": [1]}, "protected[0]: must be a path string"),
    ],
)
def test_each_kind_of_problem_is_refused(data: Any, fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_from_data(data, "where.yaml")
    assert any(fragment in problem for problem in caught.value.problems), caught.value.problems
    assert all(problem.startswith("where.yaml: ") for problem in caught.value.problems)


def test_invalid_yaml_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("roles:\n  r: [unclosed\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{path}: invalid YAML")


def test_missing_or_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.yaml", tmp_path):
        with pytest.raises(PolicyError) as caught:
            load_policy(path)
        assert caught.value.problems[0].startswith(f"{path}: cannot read")


def test_file_that_is_not_utf8_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"roles:\n  r\xff: {}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.problems[0].startswith(f"{path}: cannot read")


# --------------------------------------------------------------------- property tests

SEGMENTS = ("a", "b", "c", "dd")
SEED = 20240601


def random_pattern(rng: random.Random) -> str:
    parts = [rng.choice((*SEGMENTS, "*", "*")) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.4:
        parts.append("**")
    return "/" + "/".join(parts)


def random_methods(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return "*"
    return ",".join(rng.sample(("GET", "HEAD", "PUT", "POST", "DELETE"), rng.randint(1, 3)))


def random_path(rng: random.Random) -> str:
    path = "/" + "/".join(rng.choice(SEGMENTS) for _ in range(rng.randint(0, 5)))
    if path != "/" and rng.random() < 0.2:
        path += "/"
    return path


def reference_allows(rules: list[str], method: str, path: str) -> bool:
    """An independent, obviously-correct reading of the rule language."""
    segments = [part for part in path.split("/") if part]

    def match(pattern: list[str], rest: list[str]) -> bool:
        if not pattern:
            return not rest
        if pattern[0] == "**":
            return True
        if not rest:
            return False
        return pattern[0] in ("*", rest[0]) and match(pattern[1:], rest[1:])

    for rule in rules:
        methods_text, pattern_text = rule.split()
        methods = set(methods_text.split(","))
        if "GET" in methods:
            methods.add("HEAD")
        if methods_text != "*" and method not in methods:
            continue
        if match([part for part in pattern_text.split("/") if part], segments):
            return True
    return False


def test_compiled_matcher_agrees_with_explain_and_a_reference() -> None:
    rng = random.Random(SEED)
    outcomes = {True: 0, False: 0}
    for _ in range(150):
        roles: dict[str, dict[str, list[str]]] = {}
        for index in range(rng.randint(1, 3)):
            rules = [
                f"{random_methods(rng)} {random_pattern(rng)}" for _ in range(rng.randint(1, 6))
            ]
            roles[f"role{index}"] = {"allow": rules}
        policy = policy_from_data({"roles": roles}, "random")
        for _ in range(25):
            chosen = frozenset(rng.sample(sorted(roles), rng.randint(0, len(roles))))
            method = rng.choice(("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"))
            path = random_path(rng)
            expected = reference_allows(
                [rule for name in chosen for rule in roles[name]["allow"]], method, path
            )
            fast = policy.matcher_for(chosen).allows(method, path)
            slow = policy.explain(chosen, method, path)
            assert fast == slow.allowed == expected, (roles, sorted(chosen), method, path)
            if slow.allowed:
                assert slow.rule is not None
                assert slow.rule.role in chosen
            outcomes[expected] += 1
    assert sum(outcomes.values()) == 3750
    assert min(outcomes.values()) > 700  # both answers are well exercised


def test_protected_prefix_test_agrees_with_segment_match() -> None:
    rng = random.Random(SEED + 1)
    outcomes = {True: 0, False: 0}
    for _ in range(200):
        protected = [random_pattern(rng) for _ in range(rng.randint(1, 3))]
        policy = policy_from_data({"roles": {"r": {}}, "protected": protected}, "random")
        for _ in range(20):
            path = random_path(rng)
            path = "".join(c.upper() if rng.random() < 0.3 else c for c in path)
            fast = policy.is_protected_path(path)
            assert fast == policy.is_protected(split_path(path)), (protected, path)
            # Case-insensitive: the reference reading on the lower-cased path agrees.
            folded = [p.casefold() for p in protected]
            assert fast == reference_allows([f"* {p}" for p in folded], "GET", path.casefold())
            outcomes[fast] += 1
    assert min(outcomes.values()) > 800


def test_unknown_method_tokens_match_only_star_rules_and_share_one_cache_entry() -> None:
    policy = one_role("GET /a/**", "* /b/**")
    matcher = policy.matcher_for(frozenset({"r"}))
    assert not matcher.allows("FOO", "/a/x")
    assert matcher.allows("FOO", "/b/x")
    for index in range(100):
        matcher.allows(f"M{index}", "/b/x")
    assert len(matcher._by_method) <= 2  # "FOO" and 100 others share one compiled entry


def test_a_decoded_newline_cannot_end_a_literal_rule_early() -> None:
    policy = one_role("GET /a/b")
    matcher = policy.matcher_for(frozenset({"r"}))
    assert matcher.allows("GET", "/a/b")
    assert matcher.allows("GET", "/a/b/")
    assert not matcher.allows("GET", "/a/b\n")
    assert not matcher.allows("GET", "/a/b\n/c")
