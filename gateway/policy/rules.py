"""Route policy: the YAML model, its validating loader and the compiled matcher (no aiohttp)."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.policy.skeleton import needs_skeleton, path_skeleton
from gateway.problems import ProblemsError, safe_load
from gateway.ratelimit.limiters import PERIOD_SECONDS, RateLimit

ALL_METHODS = "*"
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
ONE_SEGMENT = "*"
ANY_SEGMENTS = "**"
_ROLE_FIELDS = frozenset({"description", "allow", "include", "rate_limit"})
_RATE_LIMIT_FIELDS = frozenset({"requests", "per", "burst"})
_TOP_FIELDS = frozenset({"roles", "protected"})
# keygate's own admin API paths: never reachable with a key, whatever the policy file says.
BUILTIN_PROTECTED = (
    "/api/v1/keys/**",
    "/api/v1/audit/**",
    "/api/v1/policy/**",
    "/api/v1/session/**",
    "/api/v1/changes/**",
)
# Characters no request path the policy sees holds as meant: a rule holding one never matches.
_NEVER_IN_PATH = "?#;"
# A cap on distinct role sets whose compiled matcher is memoised (one entry per set).
MATCHER_CACHE_LIMIT = 4096


# A rule's stable name: (role, its methods as written, its path pattern as written).
RuleIdent = tuple[str, str, str]


# Every rule ident this process has loaded, numbered once (a reload's unchanged rules keep
# their number): as many as the distinct rules the policy files ever held.
_IDENT_NUMBERS: dict[RuleIdent, int] = {}
_IDENTS: list[RuleIdent] = []


def rule_number(ident: RuleIdent) -> int:
    """Return the process-wide number of a rule ident (given the first time it is seen)."""
    number = _IDENT_NUMBERS.get(ident)
    if number is None:
        number = _IDENT_NUMBERS[ident] = len(_IDENTS)
        _IDENTS.append(ident)
    return number


def rule_ident(number: int) -> RuleIdent:
    """Return the rule ident a Rule.number stands for."""
    return _IDENTS[number]


def ident_methods(ident: RuleIdent) -> list[str]:
    """Return the methods a rule's ident names, as written (`*` for every method)."""
    return ident[1].split(",")


class PolicyError(ProblemsError):
    """A policy file failed validation; `problems` lists every problem with its location."""

    what = "policy"


@dataclass(frozen=True, slots=True)
class Rule:
    """One `METHODS PATH` allow rule, with the role and index it came from.

    `ident` names the rule stably across reloads: (role, methods as written, path as
    written), never its index; usage per rule is counted under it.
    """

    methods: frozenset[str] | None  # None means every method
    segments: tuple[str, ...]
    role: str
    index: int
    text: str
    ident: RuleIdent = field(init=False, compare=False, repr=False)
    # The ident's number in this process (rule_ident turns it back): an int is the cheapest
    # dict key for the proxy's per-request count.
    number: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = self.text.split()
        method_text, path = (parts[0], parts[1]) if len(parts) == 2 else ("*", self.text)
        ident = (self.role, method_text, path)
        object.__setattr__(self, "ident", ident)
        object.__setattr__(self, "number", rule_number(ident))

    def allows_method(self, method: str) -> bool:
        """Return True when the rule's methods cover `method` (GET covers HEAD)."""
        return self.methods is None or method in self.methods

    def matches_path(self, segments: tuple[str, ...]) -> bool:
        """Return True when the rule's path pattern matches the request path segments."""
        return _pattern_matches(self.segments, segments, case_insensitive=False)


@dataclass(frozen=True, slots=True)
class Role:
    """A named role: its description, own rules and included roles."""

    name: str
    description: str
    rules: tuple[Rule, ...]
    includes: tuple[str, ...]
    rate_limit: RateLimit | None = None  # the default limit of keys holding this role


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy check and what decided it."""

    allowed: bool
    reason: str  # "allowed", "protected", "no_rule"
    rule: Rule | None = None


def _pattern_matches(
    pattern: tuple[str, ...], segments: tuple[str, ...], *, case_insensitive: bool
) -> bool:
    """Match a segment pattern (`*` one segment, trailing `**` any number) against a path."""
    for position, part in enumerate(pattern):
        if part == ANY_SEGMENTS:
            return True
        if position >= len(segments):
            return False
        if part == ONE_SEGMENT:
            continue
        actual = segments[position]
        if case_insensitive:
            if part != actual.casefold():  # patterns are folded when the policy loads
                return False
        elif part != actual:
            return False
    return len(pattern) == len(segments)


def split_path(path: str) -> tuple[str, ...]:
    """Split a decoded absolute path into segments, ignoring one trailing slash."""
    parts = path.split("/")[1:]
    if parts and parts[-1] == "":
        parts.pop()
    return tuple(parts)


class _Node:
    """A trie node of a compiled matcher: literal children, a `*` child, terminal methods."""

    __slots__ = ("any_tail", "children", "star", "tail_rules", "terminal", "terminal_rules")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.terminal: set[str] | None = None  # methods allowed when the path ends here
        self.any_tail: set[str] | None = None  # methods allowed for `**` from here on
        self.terminal_rules: list[Rule] = []  # the rules ending here, in policy order
        self.tail_rules: list[Rule] = []  # the `**` rules from here, in policy order

    def child(self, segment: str) -> _Node:
        """Return (creating it) the child for a literal or `*` segment."""
        if segment == ONE_SEGMENT:
            if self.star is None:
                self.star = _Node()
            return self.star
        node = self.children.get(segment)
        if node is None:
            node = self.children[segment] = _Node()
        return node


_EVERY = "*"


def _add_methods(target: set[str] | None, methods: frozenset[str] | None) -> set[str]:
    """Merge rule methods into a node's method set (`*` stands for every method)."""
    merged = set() if target is None else target
    merged.update((_EVERY,) if methods is None else methods)
    return merged


class CompiledMatcher:
    """The rules of one role set as a trie, compiled per method into one anchored regex.

    The trie shares common prefixes, so the regex tries literal segments before `*` exactly
    as a trie walk would, but the whole match runs in C: no path splitting per request.
    Each way a path can end (a rule's pattern) is a capturing group, so the match names the
    rule that allowed the request with no extra work: at that pattern, the first rule in
    policy order (role name, then position in the role) whose methods cover the method.
    """

    __slots__ = ("_by_method", "_root")

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._root = _Node()
        # method -> (regex, the rule of each capturing group by its number; 0 unused)
        self._by_method: dict[str, tuple[re.Pattern[str], tuple[Rule | None, ...]]] = {}
        for rule in rules:
            node = self._root
            for segment in rule.segments:
                if segment == ANY_SEGMENTS:
                    node.any_tail = _add_methods(node.any_tail, rule.methods)
                    node.tail_rules.append(rule)
                    break
                node = node.child(segment)
            else:
                node.terminal = _add_methods(node.terminal, rule.methods)
                node.terminal_rules.append(rule)

    def allows(self, method: str, path: str) -> bool:
        """Return True when some rule allows `method` on the decoded `path`."""
        return self.allowing(method, path) is not None

    def allowing(self, method: str, path: str) -> Rule | None:
        """Return the rule that allows `method` on the decoded `path`, or None (hot path)."""
        entry = self._by_method.get(method)
        if entry is None:
            # Any other method token can only match `*` rules: one shared entry, so hostile
            # method names can't grow this cache or force a compile per request.
            key = method if method in KNOWN_METHODS else _OTHER_METHOD
            entry = self._by_method.get(key)
            if entry is None:
                leaves: list[Rule | None] = [None]
                source = _node_regex(self._root, key, leaves)
                regex = re.compile(source if source is not None else "(?!)", re.DOTALL)
                entry = self._by_method[key] = (regex, tuple(leaves))
        found = entry[0].match(path)
        if found is None:
            return None
        return entry[1][found.lastindex or 0]


_OTHER_METHOD = "\x00other"  # stands for every method token outside KNOWN_METHODS


def _has(methods: set[str] | None, method: str) -> bool:
    return methods is not None and (method in methods or _EVERY in methods)


def _first_allowing(rules: list[Rule], method: str) -> Rule:
    """Return the first rule whose methods cover `method` (one exists: the node has it)."""
    return next(rule for rule in rules if rule.allows_method(method))


def _node_regex(node: _Node, method: str, leaves: list[Rule | None]) -> str | None:
    """Return the regex for the rest of a path below `node`, or None when nothing matches.

    A path ends with at most one `/` (as split_path ignores it); `*` is one non-empty
    segment; `**` is zero or more segments. `\\Z` (not `$`) so a decoded newline can't end it.
    Every end is one capturing group (numbered in text order, as `leaves` grows): the
    group that matched names the rule that allowed the path.
    """
    alternatives = []
    if _has(node.any_tail, method):
        leaves.append(_first_allowing(node.tail_rules, method))
        alternatives.append(r"((?:/.*)?\Z)")
    if _has(node.terminal, method):
        leaves.append(_first_allowing(node.terminal_rules, method))
        alternatives.append(r"(/?\Z)")
    for segment, child in node.children.items():
        below = _node_regex(child, method, leaves)
        if below is not None:
            alternatives.append("/" + re.escape(segment) + below)
    if node.star is not None:
        below = _node_regex(node.star, method, leaves)
        if below is not None:
            alternatives.append("/[^/]+" + below)
    if not alternatives:
        return None
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _compile_protected(
    patterns: tuple[tuple[str, ...], ...],
) -> tuple[re.Pattern[str] | None, tuple[tuple[str, ...], ...]]:
    """Split folded protected patterns into one prefix regex and the rest (inner wildcards)."""
    alternatives: list[str] = []
    segmented: list[tuple[str, ...]] = []
    for pattern in patterns:
        literal = [part for part in pattern if part not in (ONE_SEGMENT, ANY_SEGMENTS)]
        prefix = re.escape("/" + "/".join(literal)) if literal else ""
        if len(literal) == len(pattern):
            alternatives.append(prefix + r"/?\Z")
        elif len(literal) == len(pattern) - 1 and pattern[-1] == ANY_SEGMENTS:
            alternatives.append(prefix + r"(?:/|\Z)")
        else:
            segmented.append(pattern)
    regex = re.compile("|".join(f"(?:{a})" for a in alternatives)) if alternatives else None
    return regex, tuple(segmented)


@dataclass
class Policy:
    """A loaded policy: roles with resolved includes, protected paths, memoised matchers."""

    roles: dict[str, Role]
    protected: tuple[tuple[str, ...], ...]
    source: str = "<policy>"
    _expanded: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    _matchers: Callable[[frozenset[str]], CompiledMatcher] = field(
        init=False, repr=False, compare=False
    )
    _limits: Callable[[frozenset[str]], RateLimit | None] = field(
        init=False, repr=False, compare=False
    )
    _protected_folded: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    _protected_regex: re.Pattern[str] | None = field(default=None, repr=False)
    _protected_segments: tuple[tuple[str, ...], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self._expanded = {name: self._expand(name, ()) for name in self.roles}
        builtin = tuple(split_path(pattern) for pattern in BUILTIN_PROTECTED)
        self._protected_folded = tuple(
            tuple(part.casefold() for part in pattern) for pattern in (*self.protected, *builtin)
        )
        self._protected_regex, self._protected_segments = _compile_protected(self._protected_folded)
        self._matchers = functools.lru_cache(maxsize=MATCHER_CACHE_LIMIT)(self._compile_matcher)
        self._limits = functools.lru_cache(maxsize=MATCHER_CACHE_LIMIT)(self._rate_limit_of)

    def _expand(self, name: str, trail: tuple[str, ...]) -> frozenset[str]:
        names = {name}
        for included in self.roles[name].includes:
            if included in self.roles and included not in trail:
                names |= self._expand(included, (*trail, name))
        return frozenset(names)

    def effective_roles(self, roles: Iterable[str]) -> frozenset[str]:
        """Return the roles plus every role they include; unknown roles grant nothing."""
        result: set[str] = set()
        for role in roles:
            result |= self._expanded.get(role, frozenset())
        return frozenset(result)

    def rules_for(self, roles: Iterable[str]) -> list[Rule]:
        """Return every allow rule granted by the roles (includes resolved)."""
        effective = self.effective_roles(roles)
        return [rule for name in sorted(effective) for rule in self.roles[name].rules]

    def matcher_for(self, roles: frozenset[str]) -> CompiledMatcher:
        """Return the compiled matcher of a role set, built once and memoised."""
        return self._matchers(roles)

    def _compile_matcher(self, roles: frozenset[str]) -> CompiledMatcher:
        return CompiledMatcher(self.rules_for(roles))

    def rate_limit_for(self, roles: frozenset[str]) -> RateLimit | None:
        """Return the default rate limit of a key holding `roles` (memoised per role set).

        The most generous limit among the roles (and those they include) that set one:
        a role without a limit does not lift the others'. None when no role sets one.
        """
        return self._limits(roles)

    def _rate_limit_of(self, roles: frozenset[str]) -> RateLimit | None:
        limits = [
            limit
            for name in self.effective_roles(roles)
            if (limit := self.roles[name].rate_limit) is not None
        ]
        if not limits:
            return None
        return max(limits, key=lambda limit: (1 / limit.interval, limit.burst))

    def is_protected_path(self, path: str) -> bool:
        """Return True for key-management paths, given the decoded path (hot path).

        The case-folded path and, when it can differ, its skeleton (gateway.policy.skeleton) are
        both matched. Patterns that are a literal prefix (optionally ending in `**`) are one
        compiled regex; patterns with inner wildcards use segment matching.
        """
        if self._matches_protected(path.casefold()):
            return True
        return needs_skeleton(path) and self._matches_protected(path_skeleton(path))

    def _matches_protected(self, folded: str) -> bool:
        if self._protected_regex is not None and self._protected_regex.match(folded):
            return True
        if self._protected_segments:
            segments = split_path(folded)
            for pattern in self._protected_segments:
                if _pattern_matches(pattern, segments, case_insensitive=True):
                    return True
        return False

    def is_protected(self, segments: tuple[str, ...]) -> bool:
        """Return True for key-management paths; matched case-insensitively to deny more."""
        for pattern in self._protected_folded:
            if _pattern_matches(pattern, segments, case_insensitive=True):
                return True
        return False

    def explain(self, roles: Iterable[str], method: str, path: str) -> Decision:
        """Return the decision for METHOD PATH with the rule that decided it (slow, for admins)."""
        if self.is_protected_path(path):
            return Decision(False, "protected")
        # The compiled matcher's rule: the one the proxy credits the request's use to.
        rule = self.matcher_for(frozenset(roles)).allowing(method, path)
        if rule is not None:
            return Decision(True, "allowed", rule)
        return Decision(False, "no_rule")


def parse_rule(text: Any, role: str, index: int, where: str, problems: list[str]) -> Rule | None:
    """Parse one `METHODS PATH` rule, appending located problems instead of raising."""
    location = f"{where}: role {role!r}, allow[{index}]"
    if not isinstance(text, str):
        problems.append(f"{location}: rule must be a string 'METHODS PATH'")
        return None
    parts = text.split()
    if len(parts) != 2:
        problems.append(f"{location}: {text!r} must be 'METHODS PATH' (e.g. 'GET /a/**')")
        return None
    method_text, path = parts
    valid, methods = _parse_methods(method_text, location, problems)
    segments = _parse_pattern(path, location, problems)
    if not valid or segments is None:
        return None
    return Rule(methods, segments, role, index, text)


def _parse_methods(
    text: str, location: str, problems: list[str]
) -> tuple[bool, frozenset[str] | None]:
    """Parse `*`, `GET` or `GET,PUT` into (valid, methods); None means all; GET implies HEAD."""
    if text == ALL_METHODS:
        return True, None
    methods = set()
    for method in text.split(","):
        if method.upper() not in KNOWN_METHODS or method != method.upper():
            problems.append(f"{location}: unknown method {method!r} (use upper case, e.g. GET)")
            return False, None
        methods.add(method)
    if "GET" in methods:
        methods.add("HEAD")
    return True, frozenset(methods)


def _parse_pattern(path: str, location: str, problems: list[str]) -> tuple[str, ...] | None:
    """Parse a path pattern into segments, checking `*` and `**` placement."""
    if not path.startswith("/"):
        problems.append(f"{location}: path {path!r} must start with '/'")
        return None
    segments = split_path(path)
    for position, segment in enumerate(segments):
        if segment == "":
            problems.append(f"{location}: path {path!r} has an empty segment")
            return None
        if segment == ANY_SEGMENTS and position != len(segments) - 1:
            problems.append(f"{location}: '**' may only be the last segment in {path!r}")
            return None
        if segment not in (ONE_SEGMENT, ANY_SEGMENTS) and "*" in segment:
            problems.append(f"{location}: wildcards must be whole segments in {path!r}")
            return None
        if segment in (".", "..") or "%" in segment:
            problems.append(f"{location}: {path!r} must use plain decoded segments")
            return None
    for char in _NEVER_IN_PATH:
        if char in path:
            problems.append(
                f"{location}: {path!r} holds {char!r}, so it can never match: rules match the "
                "path alone ('?' starts the query, '#' the fragment; ';' parameters are refused)"
            )
            return None
    return segments


def policy_from_data(data: Any, where: str) -> Policy:
    """Build a Policy from parsed YAML, collecting every problem before raising PolicyError."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise PolicyError([f"{where}: top level must be a mapping with 'roles' and 'protected'"])
    for unknown in sorted(set(map(str, data)) - _TOP_FIELDS):
        problems.append(f"{where}: unknown top-level key {unknown!r}")
    roles_data = data.get("roles")
    roles: dict[str, Role] = {}
    if not isinstance(roles_data, Mapping) or not roles_data:
        problems.append(f"{where}: 'roles' must be a non-empty mapping of role name to role")
        roles_data = {}
    for name, body in roles_data.items():
        role = _parse_role(name, body, where, problems)
        if role is not None:
            roles[role.name] = role
    for role in roles.values():
        for included in role.includes:
            if included not in roles_data:
                problems.append(
                    f"{where}: role {role.name!r} includes unknown role {included!r}"
                    + nearest_hint(included, roles_data)
                )
    problems.extend(_cycle_problems(roles, where))
    protected = _parse_protected(data.get("protected", []), where, problems)
    if problems:
        raise PolicyError(problems)
    return Policy(roles=roles, protected=protected, source=where)


def _parse_role(name: Any, body: Any, where: str, problems: list[str]) -> Role | None:
    """Parse one role mapping, appending located problems."""
    if not isinstance(name, str) or not name:
        problems.append(f"{where}: role name {name!r} must be a non-empty string")
        return None
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        problems.append(f"{where}: role {name!r} must be a mapping")
        return None
    for unknown in sorted(set(map(str, body)) - _ROLE_FIELDS):
        problems.append(f"{where}: role {name!r}: unknown key {unknown!r}")
    description = body.get("description", "")
    if not isinstance(description, str):
        problems.append(f"{where}: role {name!r}: description must be a string")
        description = ""
    allow = body.get("allow", [])
    if not isinstance(allow, list):
        problems.append(f"{where}: role {name!r}: allow must be a list of rules")
        allow = []
    rules = [parse_rule(text, name, index, where, problems) for index, text in enumerate(allow)]
    includes = body.get("include", [])
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        problems.append(f"{where}: role {name!r}: include must be a list of role names")
        includes = []
    limit = None
    if body.get("rate_limit") is not None:
        limit = parse_rate_limit(
            body["rate_limit"], f"{where}: role {name!r}: rate_limit", problems
        )
    return Role(name, description, tuple(r for r in rules if r is not None), tuple(includes), limit)


# The most requests (and burst) a rate limit may name: a billion per period.
RATE_LIMIT_MAX = 10**9


# The rate-limit fields' rules in plain words (also the admin API's messages for them).
M_RATE_LIMIT_NUMBER = "must be an integer from 1 to 10^9"
M_RATE_LIMIT_PER = "per must be second, minute or hour"


def parse_rate_limit(data: Any, location: str, problems: list[str]) -> RateLimit | None:
    """Parse `{requests, per: second|minute|hour, burst}`, appending located problems."""
    if not isinstance(data, Mapping):
        problems.append(f"{location}: must be a mapping with requests, per and burst")
        return None
    for unknown in sorted(set(map(str, data)) - _RATE_LIMIT_FIELDS):
        problems.append(f"{location}: unknown key {unknown!r}")
    requests = data.get("requests")
    per = data.get("per", "second")
    burst = data.get("burst", requests)
    valid = True
    for field_name, value in (("requests", requests), ("burst", burst)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 1 <= value <= RATE_LIMIT_MAX
        ):
            problems.append(f"{location}: {field_name} {M_RATE_LIMIT_NUMBER}")
            valid = False
    if per not in PERIOD_SECONDS:
        problems.append(f"{location}: {M_RATE_LIMIT_PER}")
        valid = False
    if not valid or not isinstance(requests, int) or not isinstance(burst, int):
        return None
    return RateLimit(requests, per, burst)


def nearest_hint(name: str, known: Iterable[Any]) -> str:
    """Return ` (did you mean 'x'?)` for the closest known name, or "" when none is close."""
    close = difflib.get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _cycle_problems(roles: Mapping[str, Role], where: str) -> list[str]:
    """Report include cycles (a role that includes itself, directly or not)."""
    problems = []
    for start in roles:
        # Depth-first with the path kept, so the cycle can be named role by role.
        stack: list[tuple[str, tuple[str, ...]]] = [(i, (start,)) for i in roles[start].includes]
        seen: set[str] = set()
        while stack:
            current, trail = stack.pop()
            if current == start:
                cycle = " -> ".join(f"{name!r}" for name in (*trail, start))
                problems.append(f"{where}: role {start!r} includes itself: {cycle}")
                break
            if current in seen or current not in roles:
                continue
            seen.add(current)
            stack.extend((i, (*trail, current)) for i in roles[current].includes)
    return problems


def _parse_protected(data: Any, where: str, problems: list[str]) -> tuple[tuple[str, ...], ...]:
    """Parse the protected path list."""
    if not isinstance(data, list):
        problems.append(f"{where}: 'protected' must be a list of paths")
        return ()
    patterns = []
    for index, path in enumerate(data):
        location = f"{where}: protected[{index}]"
        if not isinstance(path, str):
            problems.append(f"{location}: must be a path string")
            continue
        segments = _parse_pattern(path, location, problems)
        if segments is not None:
            patterns.append(segments)
    return tuple(patterns)


def load_policy(path: Path) -> Policy:
    """Read and validate a policy YAML file; raise PolicyError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as cause:
        raise PolicyError([f"{path}: cannot read: {cause.strerror or cause}"]) from cause
    except UnicodeDecodeError as cause:
        raise PolicyError([f"{path}: cannot read: not UTF-8 text ({cause.reason})"]) from cause
    return policy_from_text(text, str(path))


def policy_from_text(text: str, where: str) -> Policy:
    """Parse and validate policy YAML; every problem names its role, rule and line."""
    try:
        data = safe_load(text)
    except yaml.YAMLError as cause:
        raise PolicyError([f"{where}: invalid YAML: {cause}"]) from cause
    try:
        return policy_from_data(data, where)
    except PolicyError as error:
        raise PolicyError(with_lines(error.problems, text)) from None


_ROLE_PROBLEM = re.compile(r"role '((?:[^'\\]|\\.)*)'(?:, allow\[(\d+)\])?")
_PROTECTED_PROBLEM = re.compile(r": protected\[(\d+)\]")
# The key under which _role_lines files the line of `protected[N]` (no role is named "").
_PROTECTED = ""


def with_lines(problems: Iterable[str], text: str) -> list[str]:
    """Add `(line N)` to problems about a role, one of its rules or a protected path."""
    lines = _role_lines(text)
    located = []
    for problem in problems:
        match = _ROLE_PROBLEM.search(problem)
        line = None
        if match is not None:
            role, index = match.group(1), match.group(2)
            line = lines.get((role, int(index)) if index is not None else (role, None))
            line = line or lines.get((role, None))
        elif (protected := _PROTECTED_PROBLEM.search(problem)) is not None:
            line = lines.get((_PROTECTED, int(protected.group(1))))
        located.append(f"{problem} (line {line})" if line else problem)
    return located


def _role_lines(text: str) -> dict[tuple[str, int | None], int]:
    """Line numbers (1-based) of each role, its allow rules and protected paths in policy YAML."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    found: dict[tuple[str, int | None], int] = {}
    if not isinstance(root, yaml.MappingNode):
        return found
    for key, value in root.value:
        if key.value == "protected" and isinstance(value, yaml.SequenceNode):
            for index, item in enumerate(value.value):
                found[(_PROTECTED, index)] = item.start_mark.line + 1
        if key.value != "roles" or not isinstance(value, yaml.MappingNode):
            continue
        for role_key, role_body in value.value:
            name = str(role_key.value)
            found[(name, None)] = role_key.start_mark.line + 1
            if not isinstance(role_body, yaml.MappingNode):
                continue
            for field_key, field_value in role_body.value:
                if field_key.value == "allow" and isinstance(field_value, yaml.SequenceNode):
                    for index, item in enumerate(field_value.value):
                        found[(name, index)] = item.start_mark.line + 1
    return found
