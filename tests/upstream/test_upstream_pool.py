"""The upstream pool's slot accounting and queue order, as a state machine over real sockets.

Hypothesis drives acquires (pooled or fresh), releases (reusable or not), connections lost,
cancellations of waiters (also in the loop turn between a hand-off and the waiter resuming)
and newcomers that arrive while a connection is released. After every step the pool must
account for every slot exactly, never stall a waiter while something is free, and serve
waiters in the order they queued.
"""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support.examples import scaled

from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.errors import UpstreamError
from gateway.upstream.pool import Pool

SETTLE_TURNS = 1000  # most loop turns a step may take to settle (connects on loopback)
SETTLE_PAUSE = 0.005  # seconds each settling turn sleeps after the first 50
EXAMPLES = scaled(40)  # hypothesis examples, 40 under CI (each opens an upstream and a pool)
STEPS = 30  # steps per example


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The upstream: accept, then wait for the client to close."""
    with contextlib.suppress(ConnectionError):
        await reader.read()
    writer.close()


class PoolMachine(RuleBasedStateMachine):
    """A Pool of 1-3 slots against a loopback upstream, stepped one loop turn batch at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(_hold, "127.0.0.1", 0))
        port = self.server.sockets[0].getsockname()[1]
        self.pool: Pool | None = None
        self.port = port
        self.tasks: list[asyncio.Task[UpstreamConnection]] = []
        self.held: dict[int, UpstreamConnection] = {}  # task index -> connection it holds
        self.released: set[int] = set()  # task indexes whose connection went back
        self.queued_at: dict[int, int] = {}  # task index -> step it was first seen waiting
        self.step = 0
        self.order_broken: list[str] = []

    # ------------------------------------------------------------------ helpers

    def _pool(self) -> Pool:
        assert self.pool is not None
        return self.pool

    def _start(self, fresh: bool) -> None:
        self.tasks.append(self.loop.create_task(self._pool().acquire(fresh=fresh)))

    def _settle(self) -> None:
        """Run the loop until every task is done or queued and no slot is mid-opening."""
        pool = self._pool()
        for turn in range(SETTLE_TURNS):
            # Loop turns first; then short sleeps, so a loaded machine's connects can finish.
            self.loop.run_until_complete(asyncio.sleep(0 if turn < 50 else SETTLE_PAUSE))
            pending = sum(1 for task in self.tasks if not task.done())
            if pending == pool.waiting and pool._opening == 0:
                break
        self.step += 1
        served_now = []
        for index, task in enumerate(self.tasks):
            if task.done() and index not in self.held and index not in self.released:
                if not task.cancelled() and task.exception() is None:
                    self.held[index] = task.result()
                    served_now.append(index)
                elif not task.cancelled():
                    assert isinstance(task.exception(), UpstreamError), task.exception()
        for index in served_now:
            # Nobody who was already queued when this one arrived may still be waiting.
            for other, since in self.queued_at.items():
                if other < index and not self.tasks[other].done():
                    self.order_broken.append(f"{index} served while {other} waits since {since}")
        for index, task in enumerate(self.tasks):
            if not task.done() and index not in self.queued_at:
                self.queued_at[index] = self.step

    def _waiting_indexes(self) -> list[int]:
        return [i for i, task in enumerate(self.tasks) if not task.done()]

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: self.pool is None)
    @rule(size=st.integers(1, 3))
    def open_pool(self, size: int) -> None:
        self.pool = Pool(
            "127.0.0.1",
            self.port,
            size=size,
            connect_timeout=5,
            pool_timeout=60,  # never expires here: only cancellations leave the queue
            idle_timeout=60,
        )

    @precondition(lambda self: self.pool is not None)
    @rule(fresh=st.booleans())
    def acquire(self, fresh: bool) -> None:
        self._start(fresh)
        self._settle()

    @precondition(lambda self: self.pool is not None and self.held)
    @rule(data=st.data(), reusable=st.booleans(), newcomer=st.booleans(), cancel=st.booleans())
    def release(self, data: st.DataObject, reusable: bool, newcomer: bool, cancel: bool) -> None:
        """Give a held connection back; maybe a newcomer is ready to run first, maybe the
        first waiter is cancelled before it resumes."""
        index = data.draw(st.sampled_from(sorted(self.held)))
        conn = self.held.pop(index)
        self.released.add(index)
        if newcomer:
            self._start(False)  # ready before the woken waiter: runs first
        waiting = self._waiting_indexes()
        pool = self._pool()
        pool.release(conn, reusable, None)
        if cancel and waiting:
            if not reusable:  # the slot comes back once the close is seen: wait for its hand-off
                for _ in range(SETTLE_TURNS):
                    if pool._opening or self.tasks[waiting[0]].done():
                        break
                    self.loop.call_soon(self.loop.stop)  # exactly one loop iteration
                    self.loop.run_forever()
            self.tasks[waiting[0]].cancel()  # handed over, but not resumed yet (or opening)
        self._settle()

    @precondition(lambda self: self.pool is not None and self.held)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        """A held connection closes under its exchange (then is released as not reusable)."""
        index = data.draw(st.sampled_from(sorted(self.held)))
        conn = self.held[index]
        if conn.transport is not None:
            conn.transport.abort()
        self._settle()

    @precondition(lambda self: self.pool is not None and any(not t.done() for t in self.tasks))
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(self._waiting_indexes()))
        self.tasks[index].cancel()
        self._settle()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def slots_are_exact(self) -> None:
        pool = self.pool
        if pool is None:
            return
        assert pool.live <= pool.size
        assert pool._opening == 0
        held = list(self.held.values())
        assert len({id(conn) for conn in held}) == len(held), "a connection held twice"
        idle = set(pool._idle)
        assert not idle & set(held), "a held connection is also idle"
        open_held = [conn for conn in held if not conn.closed]
        # Every live connection is held by someone or idle: none leaked, none counted twice.
        assert pool._live == set(open_held) | idle

    @invariant()
    def nobody_waits_while_something_is_free(self) -> None:
        pool = self.pool
        if pool is None or pool.waiting == 0:
            return
        assert pool.idle == 0
        assert pool.live == pool.size

    @invariant()
    def waiters_are_served_in_order(self) -> None:
        assert self.order_broken == []

    def teardown(self) -> None:
        try:
            self._drain()
        finally:
            self.server.close()
            self.loop.run_until_complete(self.server.wait_closed())
            self.loop.close()

    def _drain(self) -> None:
        """Cancel every task and give everything back: every slot must return."""
        pool = self.pool
        if pool is None:
            return
        for task in self.tasks:
            task.cancel()
        for conn in self.held.values():
            pool.release(conn, False, None)
        if self.tasks:
            self.loop.run_until_complete(asyncio.wait(self.tasks))
        for _ in range(20):
            self.loop.run_until_complete(asyncio.sleep(0))
        try:
            assert pool.live == pool.idle, "a slot never came back"
        finally:
            self.loop.run_until_complete(pool.close())


PoolMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None
)
test_pool_state_machine = PoolMachine.TestCase
