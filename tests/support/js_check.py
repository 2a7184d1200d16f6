"""The admin page's scripts checked without a browser (acorn, eslint-scope, globals from npm).

tests/support/jscheck/check.mjs parses every module of gateway/admin/web/ and reports syntax
errors, names used but never declared, imported or a browser global ("X is not defined" in
a code path no browser test reaches), and imports of names a module does not export. Its
packages are installed with `npm ci` from tests/support/jscheck/package-lock.json into the
cache (`$KEYGATE_TEST_NODE_CACHE`, else ~/.cache/keygate/), once per lock file. Without Node
or npm the test skips with a hint; under CI=true it fails. `python tests/support/js_check.py
install` installs ahead of a run (.ci/run does).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

try:
    from support import npm_packages
except ImportError:  # run as a script (.ci/run): this directory is on sys.path
    import npm_packages  # type: ignore[no-redef]


# Only the standard library at import: .ci/run runs `install` with the system Python.
CHECK_DIR = Path(__file__).resolve().parent / "jscheck"
SCRIPT = CHECK_DIR / "check.mjs"
INSTALL_TIMEOUT = 120.0  # seconds for `npm ci` (a cold npm cache fetches 5 small packages)
CHECK_TIMEOUT = 60.0  # seconds for one run of the check over the page's modules
INSTALL_HINT = (
    "the page's script check needs Node.js and npm (`sudo apt-get install nodejs npm`), then "
    "`python tests/support/js_check.py install` (npm ci of tests/support/jscheck/ into "
    "~/.cache/keygate/); run pytest again"
)


def install() -> Path:
    """Install the checker's packages (npm ci) into the cache unless there; return the dir."""
    return npm_packages.npm_ci(CHECK_DIR, "jscheck", "eslint-scope", INSTALL_TIMEOUT)


def checker_or_skip() -> Path:
    """Return the installed checker's directory; skip with a hint, or fail under CI=true."""
    # Looked up when called, so a test may replace this module's install.
    return npm_packages.installed_or_skip(lambda: install(), INSTALL_HINT)


def check(installed: Path, files: Sequence[Path]) -> tuple[int, list[str], str]:
    """Run the check over `files`; return its exit status, its problems (one a line) and
    what it wrote to stderr (a crash of the checker itself)."""
    script = installed / "check.mjs"
    shutil.copyfile(SCRIPT, script)  # next to node_modules: node resolves the packages there
    done = subprocess.run(
        ["node", str(script), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
        check=False,
    )
    problems = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, problems, done.stderr.strip()


if __name__ == "__main__":
    npm_packages.install_command(install, "the script check", INSTALL_HINT)
