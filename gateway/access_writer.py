"""A buffered writer for access lines: formatted cheaply, written in batches off the request path.

Logging one line per request through the logging module costs a LogRecord, a formatter and
a write system call each; on a busy proxy that is a tenth of a request's CPU. `keygate serve`
instead hands each access line to this writer, which stamps it (the timestamp text is made
once per second), keeps it in memory and writes the batch in one call every FLUSH_INTERVAL
or when FLUSH_LINES are waiting, and at shutdown, so no line is lost.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TextIO

FLUSH_INTERVAL = 0.2  # seconds a line may wait before it is written
FLUSH_LINES = 512  # lines that make a batch be written at once


class AccessWriter:
    """Collects access lines and writes them to `stream` in batches."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._prefix = f" {os.getpid()} INFO keygate.access: "

    def text(self, message: str) -> None:
        """Queue a text access line (the same layout as the other log lines)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._add(f"{self._stamp},{int((now - second) * 1000):03d}{self._prefix}{message}\n")

    def raw(self, line: str) -> None:
        """Queue a line that is already complete (a JSON access record)."""
        self._add(line + "\n")

    def _add(self, line: str) -> None:
        lines = self._lines
        lines.append(line)
        if len(lines) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a test, or shutdown): write now
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write every queued line in one call."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        batch, self._lines = "".join(self._lines), []
        try:
            self._stream.write(batch)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or full stream: nothing better to do
            pass


# The writer `keygate serve` installs (None: access lines go through the logging module).
active: AccessWriter | None = None


def install(stream: TextIO | None = None) -> AccessWriter:
    """Send access lines through a buffered writer from now on; return it."""
    global active
    active = AccessWriter(stream)
    return active


def flush() -> None:
    """Write what the installed writer holds (at shutdown)."""
    if active is not None:
        active.flush()
