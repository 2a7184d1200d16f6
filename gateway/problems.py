"""Validation errors that list every problem at once, and reading the YAML files they check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# Where each value sits in a YAML file: its path (mapping keys and list indexes) -> line (1-).
Lines = dict[tuple[str | int, ...], int]
# libyaml's parser when PyYAML was built with it (the wheels are): the same safe loading and
# node marks, several times faster than the pure-Python scanner (every start and policy
# reload reads two files).
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """Parse YAML text with the safe loader (libyaml's where available)."""
    return yaml.load(text, Loader=_SafeLoader)


class ProblemsError(Exception):
    """A file failed validation; `problems` lists every problem with its location."""

    what = "file"  # subclasses name what was invalid ("policy", "config")

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"invalid {self.what}:\n  " + "\n  ".join(problems))
        self.problems = problems


def _read_text(path: Path, error: type[ProblemsError]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as cause:
        raise error([f"{path}: cannot read: {cause.strerror or cause}"]) from cause
    except UnicodeDecodeError as cause:
        raise error([f"{path}: cannot read: not UTF-8 text ({cause.reason})"]) from cause


def read_yaml(path: Path, error: type[ProblemsError]) -> Any:
    """Return a file's parsed YAML, or raise `error` saying why it could not be read."""
    text = _read_text(path, error)
    try:
        return safe_load(text)
    except yaml.YAMLError as cause:
        raise error([f"{path}: invalid YAML: {cause}"]) from cause


def read_yaml_lines(path: Path, error: type[ProblemsError]) -> tuple[Any, Lines]:
    """Return a file's parsed YAML and the line of each key and list item in it."""
    text = _read_text(path, error)
    try:
        loader = _SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as cause:
        raise error([f"{path}: invalid YAML: {cause}"]) from cause
    lines: Lines = {}
    if node is not None:
        _note_lines(node, (), lines)
    return data, lines


def _note_lines(node: yaml.Node, at: tuple[str | int, ...], lines: Lines) -> None:
    """Record the line of every mapping key and list item under `node` (merges flattened)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                where = (*at, str(key_node.value))
                lines.setdefault(where, key_node.start_mark.line + 1)
                _note_lines(value_node, where, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault((*at, index), item.start_mark.line + 1)
            _note_lines(item, (*at, index), lines)
