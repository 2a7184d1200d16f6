"""Validation errors that list every problem at once, and reading the YAML files they check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# libyaml's C loader where PyYAML was built with it: the same safe YAML, parsed several times
# faster than the pure-Python loader (every start and policy reload reads two files).
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """Parse YAML text with the safe loader (libyaml's where available)."""
    return yaml.load(text, Loader=_SAFE_LOADER)


class ProblemsError(Exception):
    """A file failed validation; `problems` lists every problem with its location."""

    what = "file"  # subclasses name what was invalid ("policy", "config")

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"invalid {self.what}:\n  " + "\n  ".join(problems))
        self.problems = problems


def read_yaml(path: Path, error: type[ProblemsError]) -> Any:
    """Return a file's parsed YAML, or raise `error` saying why it could not be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as cause:
        raise error([f"{path}: cannot read: {cause.strerror or cause}"]) from cause
    except UnicodeDecodeError as cause:
        raise error([f"{path}: cannot read: not UTF-8 text ({cause.reason})"]) from cause
    try:
        return safe_load(text)
    except yaml.YAMLError as cause:
        raise error([f"{path}: invalid YAML: {cause}"]) from cause
