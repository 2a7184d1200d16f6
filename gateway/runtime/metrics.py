"""Proxy counters kept as plain integers on the hot path, exposed in Prometheus text format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.keys.table import KeyTable

FORWARDED = "forwarded"  # outcome label for requests sent upstream
ALLOWED_DECISION = "decision_allowed"  # outcome label for forward-auth requests answered 200


@dataclass(slots=True)
class WebhookCounts:
    """One webhook receiver's delivery counts in this process (the delivering one)."""

    delivered: int = 0  # events the receiver acknowledged (2xx)
    retried: int = 0  # failed attempts followed by a scheduled retry
    abandoned: int = 0  # events given up after the retry schedule ran out
    pending: int = 0  # events after the receiver's cursor, as last counted


class RateLimitStore(Protocol):
    """What /metrics shows of a shared rate-limit store (the Redis limiter)."""

    @property
    def failures(self) -> int:
        """Checks that failed or timed out."""
        ...

    @property
    def reachable(self) -> bool:
        """False from a failed check until one succeeds again."""
        ...


class ProxyMetrics:
    """Counts proxy outcomes; one list increment per forwarded request, summed at scrape time."""

    def __init__(self) -> None:
        self.refusals: Counter[str] = Counter()  # requests keygate answered itself, by code
        # Forwarded requests by upstream status class (status // 100; llhttp allows 0-999).
        self._by_class = [0] * 10
        # Active keys expiring within expiry.warn_days, as the outbox last counted (worker 0).
        self.keys_expiring: int | None = None
        # Webhook delivery by receiver id (a digest of the URL, never the URL); worker 0.
        self.webhooks: dict[str, WebhookCounts] = {}
        # Requests whose client closed its connection before the answer went out whole.
        self.abandoned = 0
        # The shared rate-limit store, when one is configured.
        self.rate_limit_store: RateLimitStore | None = None
        # Forward-auth requests answered "allowed" (their refusals count by error code).
        self.decisions_allowed = 0

    def refused(self, code: str) -> None:
        """Count one request answered by keygate itself with error `code`."""
        self.refusals[code] += 1

    def forwarded(self, status: int) -> None:
        """Count one request forwarded upstream by the status class it answered with."""
        # A list slot, not a Counter: a Counter increment costs three times as much.
        self._by_class[status // 100] += 1

    @property
    def outcomes(self) -> Counter[str]:
        """Requests by outcome: "forwarded", "decision_allowed" or the error code keygate
        answered with."""
        counts = Counter(self.refusals)
        forwarded = sum(self._by_class)
        if forwarded:
            counts[FORWARDED] = forwarded
        if self.decisions_allowed:
            counts[ALLOWED_DECISION] = self.decisions_allowed
        return counts

    @property
    def upstream_status(self) -> dict[int, int]:
        """Forwarded requests by upstream status class (2 for 2xx, ...), classes seen only."""
        return {status_class: n for status_class, n in enumerate(self._by_class) if n}


class _ProcessCollector(Collector):
    """Builds metric families from one process's counters and key table at each scrape."""

    def __init__(
        self, metrics: ProxyMetrics, table: KeyTable, policy_reloads: Mapping[str, int]
    ) -> None:
        self._metrics = metrics
        self._table = table
        self._policy_reloads = policy_reloads

    def collect(self) -> Iterator[Metric]:
        """Yield requests by outcome, upstream statuses, key count and feed sequence."""
        metrics = self._metrics
        outcomes = CounterMetricFamily(
            "keygate_proxy_requests",
            "Proxied requests by outcome: forwarded, decision_allowed (forward-auth), or the "
            "error code keygate answered",
            labels=["outcome"],
        )
        for outcome, count in sorted(metrics.outcomes.items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        statuses = CounterMetricFamily(
            "keygate_upstream_responses",
            "Forwarded requests by upstream status class",
            labels=["class"],
        )
        for status_class, count in sorted(metrics.upstream_status.items()):
            statuses.add_metric([f"{status_class}xx"], count)
        yield statuses
        yield CounterMetricFamily(
            "keygate_proxy_abandoned",
            "Requests the client abandoned mid-upload or mid-download (access lines: status 499)",
            value=metrics.abandoned,
        )
        yield GaugeMetricFamily(
            "keygate_keys", "Keys in this process's in-memory table", value=len(self._table)
        )
        if metrics.keys_expiring is not None:
            yield GaugeMetricFamily(
                "keygate_keys_expiring",
                "Active keys expiring within expiry.warn_days (counted every check_interval)",
                value=metrics.keys_expiring,
            )
        store = metrics.rate_limit_store
        if store is not None:
            yield CounterMetricFamily(
                "keygate_ratelimit_store_failures",
                "Rate-limit checks the shared store (Redis) failed or answered too late",
                value=store.failures,
            )
            yield GaugeMetricFamily(
                "keygate_ratelimit_store_up",
                "1 while the shared rate-limit store answers, 0 from a failure until it does",
                value=1 if store.reachable else 0,
            )
        yield GaugeMetricFamily(
            "keygate_feed_sequence",
            "Change-feed sequence this process's table reflects",
            value=self._table.seq,
        )
        reloads = CounterMetricFamily(
            "keygate_policy_reloads",
            "Policy reloads by result: ok, failed (the old policy stayed), unchanged",
            labels=["result"],
        )
        for result, count in sorted(self._policy_reloads.items()):
            reloads.add_metric([result], count)
        yield reloads
        yield from _webhook_families(metrics.webhooks)


def _webhook_families(webhooks: Mapping[str, WebhookCounts]) -> Iterator[Metric]:
    """Yield the per-receiver webhook delivery counters and the pending gauge."""
    if not webhooks:
        return
    counters = {
        "delivered": CounterMetricFamily(
            "keygate_webhook_delivered",
            "Events a webhook receiver acknowledged",
            labels=["receiver"],
        ),
        "retried": CounterMetricFamily(
            "keygate_webhook_retried",
            "Failed deliveries with a retry scheduled",
            labels=["receiver"],
        ),
        "abandoned": CounterMetricFamily(
            "keygate_webhook_abandoned",
            "Events given up after the retry schedule (see keygate notify status)",
            labels=["receiver"],
        ),
    }
    pending = GaugeMetricFamily(
        "keygate_webhook_pending",
        "Events not yet acknowledged by a webhook receiver",
        labels=["receiver"],
    )
    for receiver, counts in sorted(webhooks.items()):
        for name, family in counters.items():
            family.add_metric([receiver], getattr(counts, name))
        pending.add_metric([receiver], counts.pending)
    yield from counters.values()
    yield pending


def render(
    metrics: ProxyMetrics, table: KeyTable, policy_reloads: Mapping[str, int] | None = None
) -> bytes:
    """Return this process's metrics in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessCollector(metrics, table, policy_reloads or {}))
    return generate_latest(registry)
