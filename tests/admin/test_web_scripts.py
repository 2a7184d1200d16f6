"""The API Keys page's scripts checked without a browser: every module parses, uses only
names it declares, imports or the browser defines, and imports only what its modules export.

Catches "X is not defined" in a code path no browser test reaches (a dialog's rare branch),
which the browser tests' page-error check cannot see. Node and the checker's npm packages
come from tests/support/js_check.py (installed by .ci/run).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from support.js_check import check, checker_or_skip
from support.processes import REPO_ROOT

WEB = REPO_ROOT / "gateway" / "admin" / "web"


@pytest.fixture(scope="module")
def checker() -> Path:
    """The installed checker (skips with a hint without Node; fails under CI=true)."""
    return checker_or_skip()


def test_the_page_scripts_declare_every_name_they_use_and_import_only_exports(
    checker: Path,
) -> None:
    files = sorted(WEB.glob("*.js"))
    assert {"app.js", "keypage.js", "router.js", "ui.js"} <= {file.name for file in files}
    status, problems, errors = check(checker, files)
    assert (status, problems, errors) == (0, [], "")


def test_the_check_finds_undefined_names_missing_exports_and_syntax_errors(
    checker: Path, tmp_path: Path
) -> None:
    (tmp_path / "lib.js").write_text("export function shown() {}\nexport const kept = 1;\n")
    (tmp_path / "app.js").write_text(
        textwrap.dedent(
            """\
            import { shown, kept, missing } from "./lib.js";
            export function rarely(value) {
              if (value > kept) return dateFormat.format(new Date());
              return shown(document.title, window.location.hash, missing);
            }
            """
        )
    )
    (tmp_path / "broken.js").write_text("export function (\n")
    files = [tmp_path / name for name in ("app.js", "lib.js", "broken.js")]
    status, problems, errors = check(checker, files)
    assert status == 1 and errors == ""
    assert sorted(problems) == [
        "app.js:1:23: ./lib.js does not export 'missing'",
        "app.js:3:28: 'dateFormat' is not defined",
        "broken.js:1:17: syntax error: Unexpected token (1:16)",
    ]
