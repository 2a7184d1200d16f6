"""Webhook delivery, at least once: one worker per receiver follows the audit log from its cursor.

Each receiver (identified by a digest of its URL, never the URL) has a row in the store: the
audit id it acknowledged through, and the retry state of the event right after it. Its
worker reads the events after the cursor in order, POSTs each and moves the cursor only
after a 2xx, so a restart or a crash resends what was not acknowledged (receivers drop
repeats by the event id). A failed event is retried on a schedule kept in the store (1 s
doubling to 10 min) until `notify.RETRY_GIVE_UP` after its first attempt; then it is
recorded as abandoned, logged once, and the cursor moves past it. One receiver being down
delays only its own events. A lease in the store lets one process at a time deliver to a
receiver (instances sharing a PostgreSQL database take over from one that stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
from collections.abc import Callable

import aiohttp

from gateway import clock
from gateway.events import webhooks as notify
from gateway.events.outbox import EVENT_ACTIONS, audit_event, event_id
from gateway.runtime.metrics import ProxyMetrics, WebhookCounts
from gateway.store.base import (
    AbandonedEvent,
    AuditEvent,
    KeyStore,
    ReceiverState,
    StoreUnavailableError,
)

log = logging.getLogger("keygate.notify")

AUDIT_BATCH = 500  # audit entries a worker reads per round trip (all it holds in memory)
GAP_WAIT = 5.0  # seconds a hole in the audit ids may be a transaction still committing
LEASE_SECONDS = 120.0  # seconds a process holds a receiver; renewed at half of it
# Acknowledgements written to the store together; a crash (never a clean stop) resends at
# most this many events per receiver.
ACK_BATCH = 100
ABANDONED_KEEP = 30 * 86_400.0  # seconds records of abandoned events are kept (30 days)
STOP_WAIT = 2.0  # seconds shutdown waits for POSTs in flight (one cut short is resent)


class ReceiverWorker:
    """Delivers the audit log's events to one receiver, in order, from its cursor."""

    def __init__(
        self,
        store: KeyStore,
        hook: notify.Webhook,
        session: aiohttp.ClientSession,
        counts: WebhookCounts,
        *,
        poll_interval: float,
        owner: str,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self._store = store
        self._hook = hook
        self._id = hook.receiver_id
        self._session = session
        self._counts = counts
        self._poll_interval = poll_interval  # seconds between reads of the audit log when idle
        self._owner = owner
        self._now = now
        self._state: ReceiverState | None = None
        self._lease_until = 0.0
        self._gap_since: float | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    @property
    def state(self) -> ReceiverState | None:
        """The receiver's state as this worker last read or wrote it."""
        return self._state

    def stop(self) -> None:
        """Ask the worker to stop after the POST in flight (if any)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until stopped; store failures are logged once and retried."""
        failing = False
        try:
            while not self._stopping:
                try:
                    wait = await self.step()
                except StoreUnavailableError as error:
                    if not failing:
                        log.warning("webhook %s: delivery paused: %s", self._hook.shown, error)
                    failing, wait = True, self._poll_interval
                except Exception:
                    if not failing:
                        log.exception("webhook %s: delivery failed; retrying", self._hook.shown)
                    failing, wait = True, self._poll_interval
                else:
                    failing = False
                if wait > 0 and not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
        finally:
            await self._release()

    async def step(self) -> float:
        """Deliver what is due now; return the seconds to wait before the next step."""
        now = self._now()
        state = await self._hold_lease(now)
        if state is None:
            return self._poll_interval
        renew = max(self._lease_until - LEASE_SECONDS / 2 - now, 0.0)
        self._counts.pending = await self._store.count_audit_after(state.cursor, EVENT_ACTIONS)
        if state.next_attempt is not None and now < state.next_attempt:
            # Held through the wait: no other process would send before it either.
            if not await self._lease(now, state.next_attempt + LEASE_SECONDS):
                return self._poll_interval
            return state.next_attempt - now
        entries = await self._store.audit_after(state.cursor, AUDIT_BATCH)
        ready = self._contiguous(state.cursor, entries, now)
        passed = state.cursor  # the last entry acknowledged, or passed as not an event
        delivered = 0  # acknowledged in this step, not yet written to the store
        for entry in ready:
            if self._stopping:
                break
            item = audit_event(entry)
            if item is None:
                passed = entry.id
                continue
            problem = await notify.deliver_once(
                self._session, self._hook, notify.encode(item), item["id"]
            )
            if problem is not None:
                if delivered and not await self._advance(passed, delivered):
                    return 0.0
                return min(await self._failed(entry, str(item["type"]), problem), renew)
            passed = entry.id
            delivered += 1
            self._counts.delivered += 1
            self._counts.pending = max(self._counts.pending - 1, 0)
            if delivered >= ACK_BATCH:
                if not await self._advance(passed, delivered):
                    return 0.0
                delivered = 0
        if passed != self._state_now().cursor and not await self._advance(passed, delivered):
            return 0.0
        return 0.0 if len(ready) == AUDIT_BATCH else min(self._poll_interval, renew)

    async def _advance(self, passed: int, delivered: int) -> bool:
        """Move the cursor to `passed`; the retry state ends only if events were delivered.

        Passing entries that are not events leaves the head event (and its retries) as is.
        """
        held = self._state_now()
        if delivered:
            return await self._save(ReceiverState(self._id, passed))
        return await self._save(dataclasses.replace(held, cursor=passed))

    def _state_now(self) -> ReceiverState:
        """Return the state held (a step has read it)."""
        assert self._state is not None
        return self._state

    async def _hold_lease(self, now: float) -> ReceiverState | None:
        """Take or renew this process's lease on the receiver; return its state, or None."""
        if self._state is None:
            self._state = await self._store.open_receiver(self._id)
        if now >= self._lease_until - LEASE_SECONDS / 2:
            held = self._lease_until > now
            if not await self._lease(now, now + LEASE_SECONDS):
                return None
            if not held:
                # Newly taken: another process may have moved the cursor meanwhile.
                self._state = await self._store.open_receiver(self._id)
        return self._state

    async def _lease(self, now: float, until: float) -> bool:
        """Hold the receiver until at least `until` (never shortened); False if another holds it."""
        if until <= self._lease_until:
            return True
        if await self._store.lease_receiver(self._id, self._owner, now, until):
            self._lease_until = until
            return True
        self._lease_until = 0.0
        return False

    async def _save(self, state: ReceiverState) -> bool:
        """Write `state` over the one held; False (state re-read) if another process moved it."""
        held = self._state_now()
        if await self._store.save_receiver(state, held.cursor):
            self._state = state
            return True
        log.warning("webhook %s: another process moved its cursor; re-reading", self._hook.shown)
        self._state = await self._store.open_receiver(self._id)
        return False

    async def _failed(self, entry: AuditEvent, kind: str, problem: str) -> float:
        """Schedule the head event's next attempt, or abandon it; return the seconds to wait."""
        held = self._state_now()
        now = self._now()
        first = held.first_attempt if held.first_attempt is not None else now
        attempts = held.attempts + 1
        error = problem[: notify.ERROR_LIMIT]
        shown = event_id(entry.id)
        if now - first >= notify.RETRY_GIVE_UP:
            record = AbandonedEvent(self._id, entry.id, kind, attempts, first, now, error)
            past = ReceiverState(self._id, entry.id)
            if await self._store.abandon_event(past, held.cursor, record, now - ABANDONED_KEEP):
                self._state = past
                self._counts.abandoned += 1
                self._counts.pending = max(self._counts.pending - 1, 0)
                log.error(
                    "webhook %s: abandoned event %s (%s) after %d attempts over %.0fs: %s",
                    self._hook.shown,
                    shown,
                    kind,
                    attempts,
                    now - first,
                    error,
                )
            else:
                self._state = await self._store.open_receiver(self._id)
            return 0.0
        delay = notify.retry_delay(attempts)
        retry = dataclasses.replace(
            held, attempts=attempts, first_attempt=first, next_attempt=now + delay, last_error=error
        )
        if await self._save(retry):
            self._counts.retried += 1
            level = logging.WARNING if attempts == 1 else logging.INFO
            log.log(
                level,
                "webhook %s: event %s not accepted (%s); attempt %d, next in %.0fs",
                self._hook.shown,
                shown,
                error,
                attempts,
                delay,
            )
        return delay

    def _contiguous(self, cursor: int, entries: list[AuditEvent], now: float) -> list[AuditEvent]:
        """Return the entries that follow the cursor without a hole, or all after GAP_WAIT.

        Ids are taken before commit (PostgreSQL), so a hole may be a transaction about to
        commit (or one rolled back): it is waited for, but only GAP_WAIT seconds.
        """
        count = 0
        for expected, entry in enumerate(entries, start=cursor + 1):
            if entry.id != expected:
                break
            count += 1
        if count == len(entries):
            self._gap_since = None
            return entries
        if count:
            return entries[:count]
        if self._gap_since is None:
            self._gap_since = now
        if now - self._gap_since < GAP_WAIT:
            return []
        self._gap_since = None
        return entries

    async def _release(self) -> None:
        """Give the lease up (a restart or another instance may take over at once)."""
        if self._lease_until <= 0:
            return
        now = self._now()
        with contextlib.suppress(Exception):
            await self._store.lease_receiver(self._id, self._owner, now, now)
        self._lease_until = 0.0


class Delivery:
    """One ReceiverWorker per configured webhook, each with its own HTTP session and task."""

    def __init__(
        self,
        store: KeyStore,
        hooks: tuple[notify.Webhook, ...],
        metrics: ProxyMetrics,
        poll_interval: float,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self._hooks = hooks  # a URL listed twice is one receiver (the first)
        self._store = store
        self._metrics = metrics
        self._poll_interval = poll_interval  # seconds
        self._now = now
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._workers: list[ReceiverWorker] = []
        self._sessions: list[aiohttp.ClientSession] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start one worker per receiver."""
        timeout = aiohttp.ClientTimeout(total=notify.DELIVERY_TIMEOUT)
        seen: set[str] = set()
        for hook in self._hooks:
            if hook.receiver_id in seen:
                continue
            seen.add(hook.receiver_id)
            session = aiohttp.ClientSession(timeout=timeout)
            counts = self._metrics.webhooks.setdefault(hook.receiver_id, WebhookCounts())
            worker = ReceiverWorker(
                self._store,
                hook,
                session,
                counts,
                poll_interval=self._poll_interval,
                owner=self._owner,
                now=self._now,
            )
            self._sessions.append(session)
            self._workers.append(worker)
            self._tasks.append(
                asyncio.create_task(worker.run(), name=f"keygate-webhook-{hook.receiver_id}")
            )

    async def drain(self, timeout: float = STOP_WAIT) -> None:
        """Stop every worker after its POST in flight, waiting at most `timeout` seconds.

        Nothing is lost: a cursor moves only when its receiver acknowledged, so an event cut
        short is sent again on the next start.
        """
        for worker in self._workers:
            worker.stop()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for task in late:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for session in self._sessions:
            await session.close()
        self._tasks.clear()
        self._sessions.clear()
        self._workers.clear()
