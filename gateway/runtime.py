"""The per-process runtime: settings, store, key table, policy and usage counter, wired together."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.feed import FeedFollower, catch_up, load_table
from gateway.keytable import KeyTable
from gateway.metrics import ProxyMetrics
from gateway.policy import Policy
from gateway.policy_reload import PolicyHolder
from gateway.ratelimit import Limiter, LocalLimiter
from gateway.settings import Settings
from gateway.store.base import KeyStore
from gateway.usage import UsageCounter


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

    async def load_table(self) -> None:
        """Load every key from the store into the in-memory table."""
        await load_table(self.store, self.table)

    async def apply_own_writes(self) -> None:
        """Bring the table up to date with the store before an admin call returns."""
        await catch_up(self.store, self.table)
