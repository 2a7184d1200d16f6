"""Loading and reloading the policy file: atomic swaps, what is loaded, and a file watch.

A reload reads the file once, validates all of it and only then swaps the runtime's policy,
a single reference assignment: requests in flight keep the policy object they started with.
A broken file leaves the old policy in force and logs every problem with its location.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.clock import now
from gateway.policy.rules import Policy, PolicyError, policy_from_text

log = logging.getLogger("keygate.policy")

WATCH_INTERVAL = 1.0  # seconds between checks of the policy file when watching it


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """A validated policy and where and when it came from."""

    policy: Policy
    source: str  # the path as configured (a symlink is not resolved)
    sha256: str  # of the file's bytes
    loaded_at: float


def load_policy_file(path: Path) -> LoadedPolicy:
    """Read, hash and validate a policy file; raise PolicyError listing every problem."""
    try:
        raw = path.read_bytes()
    except OSError as cause:
        raise PolicyError([f"{path}: cannot read: {cause.strerror or cause}"]) from cause
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as cause:
        raise PolicyError([f"{path}: cannot read: not UTF-8 text ({cause.reason})"]) from cause
    policy = policy_from_text(text, str(path))
    return LoadedPolicy(policy, str(path), hashlib.sha256(raw).hexdigest(), now())


class PolicyHolder:
    """The policy in force in one process, its provenance and the reload counts."""

    def __init__(self, path: Path, loaded: LoadedPolicy) -> None:
        self.path = path
        self.loaded = loaded
        self.reloads: Counter[str] = Counter()  # "ok", "failed", "unchanged"
        self.last_problems: tuple[str, ...] = ()

    @property
    def policy(self) -> Policy:
        """The policy in force."""
        return self.loaded.policy

    def reload(self, reason: str) -> bool:
        """Reload the file; keep the old policy (and log why) when it is broken."""
        try:
            fresh = load_policy_file(self.path)
        except PolicyError as error:
            self.reloads["failed"] += 1
            self.last_problems = tuple(error.problems)
            log.error(
                "policy reload (%s) failed; the old policy stays in force:\n  %s",
                reason,
                "\n  ".join(error.problems),
            )
            return False
        self.last_problems = ()
        if fresh.sha256 == self.loaded.sha256:
            self.reloads["unchanged"] += 1
            log.info("policy reload (%s): %s unchanged", reason, self.path)
            return True
        self.loaded = fresh
        self.reloads["ok"] += 1
        log.info(
            "policy reloaded (%s) from %s: %d roles, sha256 %s",
            reason,
            self.path,
            len(fresh.policy.roles),
            fresh.sha256[:12],
        )
        return True

    async def watch(
        self, reload: Callable[[str], object], interval: float = WATCH_INTERVAL
    ) -> None:
        """Call `reload` whenever the file (or the one a symlink points to) changes."""
        last = _identity(self.path)
        while True:
            await asyncio.sleep(interval)
            current = _identity(self.path)
            if current != last:
                last = current
                reload("file changed")


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """The followed file's device, inode, size and modification time (None when missing)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
