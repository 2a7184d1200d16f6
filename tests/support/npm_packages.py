"""Node packages the tests run (the OpenID provider, the page's script check), installed once.

`npm ci` of a package.json and package-lock.json into a cache directory per lock file's
content (`$KEYGATE_TEST_NODE_CACHE`, else ~/.cache/keygate/), under a file lock so parallel
test workers never install into the same directory at once. Only the standard library:
.ci/run runs the installs with the system Python.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

CACHE_ENV_VAR = "KEYGATE_TEST_NODE_CACHE"
LOCK_NAME = ".install.lock"


class PackagesMissing(Exception):
    """Node, npm or the packages cannot be had on this machine."""


def cache_dir(source: Path, name: str) -> Path:
    """Return where `source`'s node_modules live: `name`-<digest of its lock file>."""
    digest = hashlib.sha256((source / "package-lock.json").read_bytes()).hexdigest()[:16]
    root = os.environ.get(CACHE_ENV_VAR) or str(Path.home() / ".cache" / "keygate")
    return Path(root) / f"{name}-{digest}"


def npm_ci(source: Path, name: str, marker_package: str, timeout: float) -> Path:
    """Install `source`'s locked packages into the cache unless `marker_package` is there
    already; return the directory. Raises PackagesMissing when that cannot be done."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        raise PackagesMissing("node or npm is not on PATH")
    target = cache_dir(source, name)
    marker = target / "node_modules" / marker_package / "package.json"
    if marker.is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with open(target / LOCK_NAME, "w", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker installing: wait for it
        if marker.is_file():
            return target
        for file_name in ("package.json", "package-lock.json"):
            shutil.copyfile(source / file_name, target / file_name)
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            raise PackagesMissing(f"npm ci took over {timeout} s") from error
        if done.returncode != 0:
            raise PackagesMissing(f"npm ci failed: {done.stderr.strip()[-500:]}")
    return target


def installed_or_skip(install: Callable[[], Path], hint: str) -> Path:
    """Return what `install` installed; when it cannot, skip the test with `hint`, or fail
    it under CI=true (CI must never pass by skipping)."""
    import pytest  # only when used from a test

    try:
        return install()
    except (PackagesMissing, OSError) as error:
        message = f"{hint} ({error})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)


def install_command(install: Callable[[], Path], what: str, hint: str) -> None:
    """Run a tool's `python tests/support/<tool>.py install` (.ci/run installs ahead of a run):
    install, say where, or exit non-zero with the reason and `hint`."""
    script = Path(sys.argv[0]).name
    if sys.argv[1:] != ["install"]:
        sys.exit(f"usage: python tests/support/{script} install")
    try:
        print(f"{what} installed in {install()}")
    except PackagesMissing as missing:
        sys.exit(f"{missing}: {hint}")
