"""The upstream connection pool: the one owner of slot accounting, idle reuse and expiry."""

from __future__ import annotations

import asyncio
import collections
import ssl

from gateway.upstream import framing
from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.errors import UpstreamClosed, UpstreamTimeout

# Seconds `close()` waits for closing connections to finish (TLS close_notify exchange).
CLOSE_WAIT = 1.0


class Pool:
    """At most `size` connections to one origin, open or opening; idle ones reused newest first.

    A slot is taken when a connection starts opening and given back exactly once: when opening
    fails, or when the open connection's `connection_lost` arrives. Connections are only
    ever added to and removed from `_live` here, so no slot can be returned twice.

    When every slot is taken, acquirers queue. A released connection, or a slot given back,
    goes straight to the first of them (its future holds it), never back to the pool where a
    newcomer could take it first; a waiter that leaves before resuming passes it on. So while
    anyone waits there is no idle connection and no free slot. A connection handed over
    straight from its exchange never sat idle: a `fresh` acquirer takes it too.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        size: int,
        connect_timeout: float,
        pool_timeout: float,
        idle_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.size = size
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._idle_timeout = idle_timeout
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._live: set[UpstreamConnection] = set()
        self._opening = 0
        self._idle: list[UpstreamConnection] = []  # oldest first
        # Queued acquirers, first come first served; each is handed a connection, or None: a
        # slot reserved for it.
        self._waiters: collections.deque[asyncio.Future[UpstreamConnection | None]] = (
            collections.deque()
        )
        self._sweep: asyncio.TimerHandle | None = None
        self._closing = False
        self.opened = 0  # connections ever opened

    @property
    def live(self) -> int:
        """Slots in use: open connections (idle ones included) plus those opening."""
        return len(self._live) + self._opening

    @property
    def idle(self) -> int:
        """Open connections waiting in the pool for reuse."""
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Acquirers queued for a connection (first come, first served)."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    # ---------------------------------------------------------------- acquiring

    async def acquire(self, *, fresh: bool) -> UpstreamConnection:
        """Return an idle connection (newest first), else a new one; `fresh` skips idle ones.

        When every slot is taken the caller queues; connections and slots freed meanwhile
        are handed to the queue in order, so a newcomer never overtakes a waiter.
        """
        deadline: float | None = None
        while True:
            if self._closing:
                raise UpstreamClosed("the upstream client is closed")
            if not fresh:
                conn = self._take_idle()
                if conn is not None:
                    return conn
            if self.live < self.size:
                return await self._open()
            if fresh and self._idle:
                self._idle.pop(0).abort()  # make room: its slot returns with connection_lost
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self._pool_timeout
            handed = await self._wait(loop, deadline)
            if handed is None:  # a slot, reserved for this caller (counted in `_opening`)
                if self._closing:
                    self._opening -= 1
                    raise UpstreamClosed("the upstream client is closed")
                return await self._open(reserved=True)
            if not handed.closed:
                return handed
            # It closed between the hand-off and now: its slot went on to the next in line.

    def _take_idle(self) -> UpstreamConnection | None:
        idle = self._idle
        if not idle:
            return None
        now = idle[-1].loop.time()
        while idle:
            conn = idle.pop()
            if conn.closed or now >= conn.idle_deadline:
                conn.abort()
                continue
            return conn
        return None

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> UpstreamConnection | None:
        """Queue until handed a connection, or None: a free slot reserved for the caller."""
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UpstreamTimeout("no upstream connection became free in time")
        waiter: asyncio.Future[UpstreamConnection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(remaining, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())  # handed over, then cancelled: not lost
            raise
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()

    def _hand_off(self, conn: UpstreamConnection | None) -> bool:
        """Give `conn`, or a free slot when None, to the first waiter still waiting.

        The waiter's future gets it directly, so nothing arriving before the waiter resumes
        can take it. A slot stays counted (in `_opening`) until its waiter opens or passes
        it on. Returns False when nobody waits.
        """
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                if conn is None:
                    self._opening += 1
                waiter.set_result(conn)
                return True
        return False

    def _pass_on(self, handed: UpstreamConnection | None) -> None:
        """A waiter given `handed` (None: a slot) left before using it: the next one gets it."""
        if handed is None:
            self._opening -= 1
            if not self._closing:
                self._hand_off(None)
        else:
            self._reuse(handed)

    async def _open(self, *, reserved: bool = False) -> UpstreamConnection:
        """Open a connection in a free slot (`reserved`: already counted, by `_hand_off`)."""
        loop = asyncio.get_running_loop()
        made: list[UpstreamConnection] = []

        def factory() -> UpstreamConnection:
            conn = UpstreamConnection(loop, self._lost)
            made.append(conn)
            return conn

        if not reserved:
            self._opening += 1
        try:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await loop.create_connection(
                        factory,
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._server_hostname,
                    )
            except TimeoutError:  # an OSError: caught first
                raise UpstreamTimeout("connecting to the upstream timed out") from None
            except OSError as error:  # refused, unreachable, TLS verification failed ...
                raise UpstreamClosed(f"connecting to the upstream failed: {error}") from error
        except BaseException:
            self._opening -= 1
            for conn in made:  # a transport made before the failure: close it, no fd leaks
                conn.discard()
            self._slot_freed()
            raise
        self._opening -= 1
        conn = made[-1]
        if conn.closed:
            self._slot_freed()
            raise UpstreamClosed("the upstream closed the connection while it opened")
        self._live.add(conn)
        self.opened += 1
        return conn

    # ---------------------------------------------------------------- giving back

    def release(self, conn: UpstreamConnection, reusable: bool, hint: float | None) -> None:
        """Take a connection back after an exchange: pooled when `reusable`, else dropped."""
        conn.exchange = None
        if not reusable or conn.closed or self._closing or conn not in self._live:
            conn.abort()  # its slot returns in `_lost`, once the socket is really closed
            return
        conn.resume_reading()
        if hint is not None:  # the upstream's own idle timeout holds until it says otherwise
            conn.keep_alive_hint = hint
        lifetime = self._idle_timeout
        if conn.keep_alive_hint is not None:
            lifetime = framing.idle_lifetime(lifetime, conn.keep_alive_hint)
            if lifetime <= 0:
                conn.abort()
                return
        conn.idle_deadline = conn.loop.time() + lifetime
        self._reuse(conn)

    def _reuse(self, conn: UpstreamConnection) -> None:
        """Hand a reusable connection to the first waiter, else keep it idle."""
        if conn.closed or self._closing or conn not in self._live:
            conn.abort()
            return
        if self._hand_off(conn):
            return
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = conn.loop.call_at(conn.idle_deadline, self._expire_idle)

    def _lost(self, conn: UpstreamConnection) -> None:
        """A connection closed (`connection_lost`): its slot is free."""
        if conn in self._live:
            self._live.remove(conn)
            if conn.exchange is None and conn in self._idle:
                self._idle.remove(conn)
            self._slot_freed()

    def _slot_freed(self) -> None:
        """A slot came back: the first waiter gets it, unless the pool is closing."""
        if not self._closing:
            self._hand_off(None)

    def _expire_idle(self) -> None:
        """Close idle connections past their deadline; run again at the next deadline."""
        self._sweep = None
        idle = self._idle
        if not idle:
            return
        loop = idle[0].loop
        now = loop.time()
        for conn in [c for c in idle if c.idle_deadline <= now]:
            idle.remove(conn)
            conn.abort()
        if idle:
            self._sweep = loop.call_at(min(c.idle_deadline for c in idle), self._expire_idle)

    async def close(self) -> None:
        """Close the idle connections; in-flight ones are dropped when released."""
        self._closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        closing = []
        for conn in idle:
            if conn.transport is not None and not conn.closed:
                closing.append(conn.lost)
                conn.transport.close()
        if closing:
            await asyncio.wait(closing, timeout=CLOSE_WAIT)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamClosed("the upstream client is closed"))
        self._waiters.clear()


def _expire(waiter: asyncio.Future[UpstreamConnection | None]) -> None:
    """A slot wait timed out."""
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("no upstream connection became free in time"))
