"""An asyncio event loop on virtual time: timers fire as soon as the loop has nothing else to do.

Tests of timeouts (upstream waits, idle connections, pool waits) otherwise sleep through
every timeout they check. On this loop `loop.time()` runs ahead of the real clock: when no
socket is ready and no callback is due, the loop first waits QUIET_SECONDS of real time for
I/O (loopback bytes and thread hand-offs arrive well within it), then jumps to its next
timer instead of sleeping. Real sockets, real servers and real timers still run; only the
idle waits between them are skipped. A test reads elapsed time from `loop.time()`, which
makes its lower bounds exact. `@on_virtual_time` runs an async test on this loop.

Code that reads `time.monotonic()` or the wall clock does not see the jumps: only code
whose deadlines are loop timers (the upstream client, the pool) belongs on this loop.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, Final

# Real seconds the loop waits for I/O before jumping to its next timer.
QUIET_SECONDS: Final = 0.002


class _VirtualSelector(selectors.DefaultSelector):
    """The default selector, but an idle wait for a timer becomes a jump of the loop's clock."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0.0  # seconds of virtual time jumped so far

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """Return ready events; with none after QUIET_SECONDS, jump to `timeout` and return []."""
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        quiet = QUIET_SECONDS if timeout is None else min(timeout, QUIET_SECONDS)
        ready = super().select(quiet)
        if ready:
            return ready
        if timeout is None:  # no timer at all: only I/O can wake the loop
            return super().select(None)
        self.skipped += timeout - quiet
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock jumps over idle waits (see the module docstring)."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        """Return the real monotonic time plus every idle wait skipped so far."""
        return super().time() + self._virtual.skipped


def on_virtual_time(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the async test `test` to completion on a fresh VirtualTimeLoop (a sync test)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(test(*args, **kwargs))

    return run
