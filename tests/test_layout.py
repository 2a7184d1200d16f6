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
    "gateway.proxy.auth",
    "gateway.clock",
    "gateway.proxy.credentials",
    "gateway.proxy.decision",
    "gateway.keys.feed",
    "gateway.proxy.hygiene",
    "gateway.keys.rules",
    "gateway.keys.keyformat",
    "gateway.keys.table",
    "gateway.policy.rules",
    "gateway.proxy.refusals",
    "gateway.proxy.notes",
    "gateway.settings",
    "gateway.settings.checks",
    "gateway.settings.loading",
    "gateway.settings.models",
    "gateway.settings.secrets",
    "gateway.policy.skeleton",
    "gateway.proxy.target",
    "gateway.upstream.errors",
    "gateway.upstream.framing",
    "gateway.keys.usage",
    "gateway.verify",
    "gateway.ratelimit.limiters",
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


REPO = PACKAGE.parent
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def test_the_import_contracts_hold() -> None:
    """Layers and forbidden imports (pyproject's [tool.importlinter]) are kept."""
    import subprocess
    import sys

    linter = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(linter)], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_package_init_says_what_it_owns_and_may_import() -> None:
    for name, path in modules().items():
        if path.name == "__init__.py" and name != "gateway" and name.count(".") == 1:
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "May import" in docstring or "Imports no" in docstring, name


def test_the_architecture_map_names_every_module_and_only_modules_that_exist() -> None:
    """docs/ARCHITECTURE.md's module table lists each module exactly by its file path."""
    import re

    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = set(re.findall(r"`(gateway/[\w/]+\.py)`", text))
    existing = {
        str(path.relative_to(REPO))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" or path.parent != PACKAGE
    }
    existing = {path for path in existing if not path.endswith("__init__.py")}
    assert sorted(named - existing) == [], "named in ARCHITECTURE.md but missing"
    assert sorted(existing - named) == [], "modules ARCHITECTURE.md does not name"
