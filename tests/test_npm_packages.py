"""The tests' Node package installs: one `npm ci` per lock file, even from parallel workers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support import npm_packages

# A stand-in for npm that takes a while, counts its runs and installs the marker package.
FAKE_NPM = """#!/bin/sh
echo run >> "$COUNT_FILE"
sleep 0.3
mkdir -p node_modules/marker && echo '{}' > node_modules/marker/package.json
"""


def _source(tmp_path: Path, lock: str) -> Path:
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    (source / "package.json").write_text("{}", encoding="ascii")
    (source / "package-lock.json").write_text(lock, encoding="ascii")
    return source


def test_parallel_installs_run_npm_once_and_a_new_lock_file_installs_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM, encoding="ascii")
    npm.chmod(0o755)
    (bin_dir / "node").symlink_to("/bin/true")
    count = tmp_path / "count"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("COUNT_FILE", str(count))
    monkeypatch.setenv(npm_packages.CACHE_ENV_VAR, str(tmp_path / "cache"))
    source = _source(tmp_path, '{"v": 1}')
    results: list[Path] = []
    workers = [
        threading.Thread(
            target=lambda: results.append(npm_packages.npm_ci(source, "pkg", "marker", 10))
        )
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert len(results) == 3 and len(set(results)) == 1
    assert count.read_text().splitlines() == ["run"]  # one install, the others waited for it
    assert (results[0] / "package-lock.json").read_text() == '{"v": 1}'
    # Another lock file's content is another directory, installed on its own.
    changed = _source(tmp_path, '{"v": 2}')
    assert npm_packages.npm_ci(changed, "pkg", "marker", 10) != results[0]
    assert count.read_text().splitlines() == ["run", "run"]


def test_without_node_or_npm_the_install_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(npm_packages.PackagesMissing, match="node or npm is not on PATH"):
        npm_packages.npm_ci(_source(tmp_path, "{}"), "pkg", "marker", 10)
