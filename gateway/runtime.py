"""The per-process runtime: settings, store, key table, policy and usage counter, wired together."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.clock import now
from gateway.feed import FeedFollower, catch_up, load_table
from gateway.keytable import KeyTable
from gateway.metrics import ProxyMetrics
from gateway.policy import Policy
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
    limiter: Limiter = field(default_factory=lambda: LocalLimiter(now))

    async def load_table(self) -> None:
        """Load every key from the store into the in-memory table."""
        await load_table(self.store, self.table)

    async def apply_own_writes(self) -> None:
        """Bring the table up to date with the store before an admin call returns."""
        await catch_up(self.store, self.table)
