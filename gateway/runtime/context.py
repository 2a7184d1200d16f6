"""The per-process runtime: settings, store, key table, policy and usage counter, wired together."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from gateway.keys.feed import FeedFollower, catch_up, load_table
from gateway.keys.snapshot import SnapshotWriter
from gateway.keys.table import KeyTable
from gateway.keys.usage import UsageCounter
from gateway.policy.reload import PolicyHolder
from gateway.policy.rules import Policy
from gateway.ratelimit.limiters import Limiter, LocalLimiter
from gateway.runtime.metrics import ProxyMetrics
from gateway.settings import Settings
from gateway.store.base import KeyStore, StoreUnavailableError

log = logging.getLogger("keygate.admin")


@dataclass
class Runtime:
    """Everything a gateway process shares between its proxy and admin listeners."""

    settings: Settings
    store: KeyStore
    policy: Policy
    table: KeyTable = field(default_factory=KeyTable)
    usage: UsageCounter = field(default_factory=UsageCounter)
    metrics: ProxyMetrics = field(default_factory=ProxyMetrics)
    follower: FeedFollower | None = None
    # Per-key rate limits: counted here, or in Redis (set by the app when configured).
    limiter: Limiter = field(default_factory=LocalLimiter)
    # Where the policy came from and how its reloads went (None: not loaded from a file).
    policy_source: PolicyHolder | None = None
    # Set when shutdown starts: /readyz answers 503 from then on.
    draining: bool = False
    # Feed sequence of the last key-table snapshot this process wrote (None: none).
    snapshot_seq: int | None = None

    def reload_policy(self, reason: str) -> bool:
        """Reload the policy file; a good one is in force at once, a broken one changes nothing.

        One reference assignment: a request in flight keeps the policy object it started with.
        """
        holder = self.policy_source
        if holder is None:
            return False
        if not holder.reload(reason):
            return False
        self.policy = holder.policy
        return True

    async def load_table(self, snapshot: Path | None = None) -> int | None:
        """Load every key from the store into the in-memory table.

        With `snapshot`, the rows also go to that snapshot file; return the sequence it
        was written at (None: not written).
        """
        if snapshot is None:
            await load_table(self.store, self.table)
            return None
        writer = SnapshotWriter(snapshot, self.store.location)
        try:
            await load_table(self.store, self.table, writer.add)
        except BaseException:
            writer.abandon()
            raise
        return self.table.seq if writer.commit(self.table.seq) else None

    async def apply_own_writes(self) -> None:
        """Bring the table up to date with the store before an admin call returns.

        Called after a write committed: a failure here never fails the call (its answer
        must say the write was made). One warning line, and the feed follower catches the
        table up on its next poll (woken now).
        """
        try:
            await catch_up(self.store, self.table)
        except StoreUnavailableError as error:
            log.warning("key table could not catch up after a committed write: %s", error)
            self._wake_follower()
        except Exception:
            log.exception("key table could not catch up after a committed write")
            self._wake_follower()

    def _wake_follower(self) -> None:
        if self.follower is not None:
            self.follower.wake()
