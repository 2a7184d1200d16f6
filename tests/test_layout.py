"""The package layout stays readable: no import cycles, pure modules free of aiohttp, docstrings."""

from __future__ import annotations

import ast
import functools
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
# Modules of pure logic: unit-tested without a server, so they must not import aiohttp.
PURE = (
    "gateway.auth",
    "gateway.clock",
    "gateway.credentials",
    "gateway.decision",
    "gateway.feed",
    "gateway.hygiene",
    "gateway.key_rules",
    "gateway.keys",
    "gateway.keytable",
    "gateway.policy",
    "gateway.refusals",
    "gateway.request_notes",
    "gateway.settings",
    "gateway.skeleton",
    "gateway.target",
    "gateway.upstream.errors",
    "gateway.upstream.framing",
    "gateway.usage",
    "gateway.verify",
    "gateway.ratelimit",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """Return (gateway modules, top-level outside packages) one module imports, lazily too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside: set[str] = set()
    outside: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if not target.startswith("gateway"):
                outside.add(target.split(".")[0])
                continue
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                inside.add(target)
    return inside, outside


@functools.cache
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    found = modules()
    known = set(found)
    inside: dict[str, set[str]] = {}
    outside: dict[str, set[str]] = {}
    for name, path in found.items():
        inside[name], outside[name] = imported(name, path, known)
    return inside, outside


def test_no_import_cycles() -> None:
    inside, _ = graph()
    # A package's __init__ importing its own submodules is not a cycle worth reporting
    # (as ../shared/tools/import_cycles.py counts them).
    edges = {
        name: {t for t in targets if t != "gateway" and not t.startswith(name + ".")}
        for name, targets in inside.items()
    }
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_aiohttp(name: str) -> None:
    _, outside = graph()
    assert "aiohttp" not in outside[name]
    # ...nor any gateway module that does.
    inside, _ = graph()
    reachable, todo = set(), [name]
    while todo:
        for target in inside[todo.pop()]:
            if target not in reachable:
                reachable.add(target)
                todo.append(target)
    assert not {m for m in reachable if "aiohttp" in outside[m]}, name


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_says_what_it_owns(name: str) -> None:
    tree = ast.parse(modules()[name].read_text())
    docstring = ast.get_docstring(tree)
    assert docstring, f"{name} has no module docstring"
