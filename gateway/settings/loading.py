"""Loading the config: parsed YAML checked against the models, every problem with its line.

The walk follows the models' declared types (gateway/settings/models.py): each leaf is
checked by msgspec against its annotated type (strict: 2.9, true and "3" are not integers),
so every unknown key and every bad value is reported, not just the first. A bad value is
left out, so the model's default stands in and the cross-field checks still run; then one
`msgspec.convert` builds the frozen Settings.
"""

from __future__ import annotations

import difflib
import functools
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import msgspec
from msgspec import Meta, Struct

from gateway.problems import Lines, ProblemsError, read_yaml_lines
from gateway.settings.checks import CHECKS, Location
from gateway.settings.models import (
    MIN_SIGNING_KEY_BYTES,
    Section,
    Settings,
    SigningKey,
)
from gateway.settings.secrets import SecretInvalid, SecretUnreadable, read_secret

# Which secrets a load must resolve: all of them (serve, policy check), or only the store's
# (CLI commands that read and write the store and nothing else).
SecretsNeeded = Literal["all", "store"]
MAX_SHOWN_TEXT = 40  # characters of a wrong string value quoted back in a problem

M_HEADER_SPEC = "must be {env: VARIABLE} or {value: text}"
M_SIGNING_SPEC = "must be {id: NAME, env: VARIABLE} or {id: NAME, file: PATH}"

_DROP: Any = object()  # a value with a problem: left out, so the model's default stands in
_DEFER: Any = object()  # a secret a store-only load leaves unresolved


class ConfigError(ProblemsError):
    """The config failed validation; `problems` lists every problem with its location."""

    what = "config"


def located(at: Location) -> str:
    """`upstream.headers.X-T`, `identity.signing_keys[0].id`: a location as written."""
    text = ""
    for part in at:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def shown(value: Any) -> str:
    """A wrong value as the problem quotes it back (long strings not quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= MAX_SHOWN_TEXT else "a long string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _unwrap(annotation: Any) -> tuple[Any, Meta | None]:
    """Split `Annotated[T, Meta(...)]` into T and its Meta."""
    if get_origin(annotation) is Annotated:
        inner, *extras = get_args(annotation)
        metas = [extra for extra in extras if isinstance(extra, Meta)]
        return inner, metas[0] if metas else None
    return annotation, None


def expected(annotation: Any) -> str:
    """What a type wants, in words: "an integer 0-65535", "one of 'text', 'json'"."""
    inner, meta = _unwrap(annotation)
    if meta is not None and meta.description:
        return meta.description
    origin = get_origin(inner)
    if origin in (Union, types.UnionType):
        return " or ".join(expected(arg) for arg in get_args(inner))
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(inner))
    if origin in (tuple, list):
        return "a list"
    if origin is dict or (isinstance(inner, type) and issubclass(inner, Struct)):
        return "a mapping"
    words = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        bytes: "text",
        Path: "a file path",
        type(None): "null",
    }
    return words.get(inner, getattr(inner, "__name__", str(inner)))


@functools.cache
def _fields(model: type[Section]) -> tuple[msgspec.structs.FieldInfo, ...]:
    """A model's YAML fields (its type hints are evaluated once per process, not per load)."""
    return tuple(f for f in msgspec.structs.fields(model) if f.name not in model.FILLED)


def _absent_when_null(annotation: Any) -> bool:
    """null for a section, list or mapping means "not set" (an all-commented section)."""
    inner, _ = _unwrap(annotation)
    origin = get_origin(inner)
    return origin in (tuple, list, dict) or (isinstance(inner, type) and issubclass(inner, Struct))


class _Walk:
    """One check of parsed YAML against the models, collecting located problems."""

    def __init__(
        self,
        where: str,
        lines: Lines,
        env: Mapping[str, str],
        base: Path,
        secrets: SecretsNeeded,
    ) -> None:
        self.where = where
        self.lines = lines
        self.env = env
        self.base = base
        self.secrets = secrets
        self.problems: list[tuple[tuple[int, int], str]] = []  # ((line, rank), the problem)
        self.at_fault: set[Location] = set()
        # Each location in the order the models declare it (unknown keys first): problems are
        # listed in that order, the walk's and the cross-field rules' alike.
        self.order: dict[Location, int] = {}
        self.deferred: list[str] = []

    def rank(self, at: Location) -> int:
        for end in range(len(at), 0, -1):
            rank = self.order.get(at[:end])
            if rank is not None:
                return rank
        return self.order.setdefault(at, len(self.order))

    def line(self, at: Location) -> int | None:
        for end in range(len(at), 0, -1):
            line = self.lines.get(at[:end])
            if line is not None:
                return line
        return None

    def problem(self, at: Location, message: str) -> None:
        """Note a problem with a value at a location."""
        self.at_fault.add(at)
        line = self.line(at)
        where = self.where if line is None else f"{self.where}:{line}"
        self.problems.append(((line or 0, self.rank(at)), f"{where}: {located(at)}: {message}"))

    def sorted_problems(self) -> list[str]:
        """Every problem in file order (by line), else in the order the models declare."""
        return [text for _, text in sorted(self.problems, key=lambda problem: problem[0])]

    def rule_broken(self, at: Location, message: str) -> None:
        """A cross-field rule's problem, unless the value there was already refused (its
        default stood in, so the rule would only repeat that problem in other words)."""
        if at not in self.at_fault:
            self.problem(at, message)

    def check(self, value: Any, annotation: Any, at: Location) -> Any:
        """Return `value` checked against `annotation` (loaded), _DROP or _DEFER."""
        self.order.setdefault(at, len(self.order))
        inner, meta = _unwrap(annotation)
        load = (meta.extra or {}).get("load") if meta is not None else None
        if load is not None:
            return self.load(load, value, inner, at)
        origin = get_origin(inner)
        if origin in (Union, types.UnionType):
            options = [arg for arg in get_args(inner) if arg is not type(None)]
            if value is None and len(options) < len(get_args(inner)):
                return None
            if len(options) == 1:
                return self.check(value, options[0], at)
        elif isinstance(inner, type) and issubclass(inner, Section):
            return self.section(value, inner, at)
        elif origin in (tuple, list) and isinstance(value, list):
            return self.items(value, annotation, at)
        elif origin is dict and isinstance(value, Mapping):
            item_type = get_args(inner)[1]
            checked: dict[str, Any] = {}
            for key, item in value.items():
                if isinstance(key, str):
                    checked[key] = self.check(item, item_type, (*at, key))
                else:  # YAML reads `1:` or `true:` as a number or a boolean, not a name
                    self.problem((*at, str(key)), f"expected a name, got {shown(key)}")
            return {k: v for k, v in checked.items() if v is not _DROP and v is not _DEFER}
        try:
            return msgspec.convert(value, annotation, strict=True)
        except msgspec.ValidationError:
            self.problem(at, f"expected {expected(annotation)}, got {shown(value)}")
            return _DROP

    def items(self, value: list[Any], annotation: Any, at: Location) -> Any:
        inner, meta = _unwrap(annotation)
        item_type = get_args(inner)[0]
        checked = [self.check(item, item_type, (*at, index)) for index, item in enumerate(value)]
        if meta is not None and meta.min_length is not None and len(value) < meta.min_length:
            self.problem(at, f"expected {expected(annotation)}, got {shown(value)}")
            return _DROP
        kept = [item for item in checked if item is not _DROP and item is not _DEFER]
        if meta is not None and meta.min_length is not None and len(kept) < meta.min_length:
            return _DROP  # its items' problems are reported (or deferred): the default stands
        return kept

    def section(self, value: Any, model: type[Section], at: Location) -> Any:
        """Check a mapping against its model: unknown keys, each field, required fields."""
        if not isinstance(value, Mapping):
            self.problem(at, f"expected a mapping, got {shown(value)}")
            return _DROP
        fields = _fields(model)
        known = [f.name for f in fields]
        for key in value:
            if str(key) not in known:
                self.order.setdefault((*at, str(key)), len(self.order))
                self.problem((*at, str(key)), unknown_setting(str(key), known))
        out: dict[str, Any] = {}
        dropped = deferred = False
        for field in fields:
            here = (*at, field.name)
            self.order.setdefault(here, len(self.order))
            if field.name in value and not (
                value[field.name] is None and _absent_when_null(field.type)
            ):
                checked = self.check(value[field.name], field.type, here)
            elif field.required:
                self.problem(here, "is required")
                checked = _DROP
            else:
                default = field.default
                if isinstance(default, Path) and not default.is_absolute():
                    out[field.name] = Path(os.path.abspath(self.base / default))
                continue
            if checked is _DEFER:
                deferred = True
            elif checked is _DROP:
                dropped = dropped or field.required
            else:
                out[field.name] = checked
        if deferred:
            return _DEFER
        if dropped:
            return _DROP
        if model is SigningKey:
            return self.signing_key(out, at)
        return out

    def load(self, load: str, value: Any, inner: Any, at: Location) -> Any:
        """A leaf whose YAML spelling differs from its value: a path, a secret, a header."""
        if load == "path":
            if not isinstance(value, str) or not value:
                self.problem(at, f"expected a file path, got {shown(value)}")
                return _DROP
            return Path(os.path.abspath(self.base / value))
        if load == "text-or-secret" and isinstance(value, str):
            return value
        if load == "header" and isinstance(value, Mapping) and list(value) == ["value"]:
            literal = value["value"]
            if not isinstance(literal, str | int | float) or isinstance(literal, bool):
                self.problem(at, "value must be text (or a number)")
                return _DROP
            if any(ord(c) < 32 or ord(c) == 127 for c in str(literal)):
                self.problem(at, "value contains control characters")
                return _DROP
            return str(literal)
        if load == "header" and not (isinstance(value, Mapping) and list(value) == ["env"]):
            self.problem(at, M_HEADER_SPEC)
            return _DROP
        secret = self.secret(value, at)
        return secret.encode() if inner is bytes and isinstance(secret, str) else secret

    def secret(self, spec: Any, at: Location) -> Any:
        """Read a secret reference with the one secret reader; _DEFER when it may wait."""
        try:
            return read_secret(spec, self.env, self.base, located(at))
        except SecretInvalid as error:
            self.problem(at, str(error))
        except SecretUnreadable as error:
            if self.secrets == "store" and at[0] != "store":
                line = self.line(at)
                where = self.where if line is None else f"{self.where}:{line}"
                self.deferred.append(f"{where}: {located(at)}: {error}")
                return _DEFER
            self.problem(at, str(error))
        return _DROP

    def signing_key(self, out: dict[str, Any], at: Location) -> Any:
        """`{id, env|file}`: read the secret it names; it must be long enough for HMAC."""
        spec = {kind: out[kind] for kind in ("env", "file") if kind in out}
        if len(spec) != 1:
            self.problem(at, M_SIGNING_SPEC)
            return _DROP
        secret = self.secret(spec, at)
        if secret is _DROP or secret is _DEFER:
            return secret
        if len(secret.encode()) < MIN_SIGNING_KEY_BYTES:
            self.problem(at, f"the secret must be at least {MIN_SIGNING_KEY_BYTES} bytes")
            return _DROP
        return {**out, "secret": secret.encode()}


def unknown_setting(key: str, known: list[str]) -> str:
    """`unknown setting; did you mean 'pool_size'?`, else the settings that are known."""
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown setting; did you mean {close[0]!r}?"
    return "unknown setting; known: " + ", ".join(known)


def settings_from_data(
    data: Any,
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    secrets: SecretsNeeded = "all",
    lines: Lines | None = None,
) -> Settings:
    """Validate parsed YAML into Settings, raising ConfigError with every problem found.

    `secrets="store"` (CLI commands that only use the store) resolves the store's secrets
    alone: any other that cannot be read is left out of the settings and listed in
    `deferred_secrets` instead of failing the load. `lines` (from read_yaml_lines) puts
    each problem's line after the file name.
    """
    env = os.environ if environ is None else environ
    walk = _Walk(str(path), lines or {}, env, path.parent, secrets)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path}: top level must be a mapping"])
    checked = walk.section(data, Settings, ())
    checked = checked if isinstance(checked, dict) else {}
    settings = msgspec.convert(
        {**checked, "path": path, "deferred_secrets": walk.deferred}, Settings, strict=True
    )
    for check in CHECKS:
        settings = check(settings, walk.rule_broken)
    if walk.problems:
        raise ConfigError(walk.sorted_problems())
    return settings


def load_settings(
    path: Path, environ: Mapping[str, str] | None = None, *, secrets: SecretsNeeded = "all"
) -> Settings:
    """Read and validate a config file; raise ConfigError listing every problem.

    `secrets="store"`: only the store's secrets must resolve (see settings_from_data).
    """
    data, lines = read_yaml_lines(path, ConfigError)
    return settings_from_data(data, path.resolve(), environ, secrets=secrets, lines=lines)
