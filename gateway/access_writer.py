"""A buffered writer for access lines: formatted cheaply, written in batches off the request path.

Logging one line per request through the logging module costs a LogRecord, a formatter and
a write system call each; on a busy proxy that is a tenth of a request's CPU. `keygate serve`
instead hands each access line to this writer, which stamps it (the time text is made once
per millisecond, not per line), keeps it in memory and writes the batch in one call every
FLUSH_INTERVAL or when FLUSH_LINES are waiting, and at shutdown, so no line is lost.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TextIO

from gateway.keys import cut_keys
from gateway.logs import json_head

FLUSH_INTERVAL = 0.2  # seconds a line may wait before it is written
FLUSH_LINES = 512  # lines that make a batch be written at once


class AccessWriter:
    """Collects access lines and writes them to `stream` in batches."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._pid = os.getpid()
        # Time texts: the date and time made once per second, the line starts once per
        # millisecond (a busy proxy logs many lines in each).
        self._second = self._ms = -1
        self._local = self._utc = ""
        self._text_prefix = self._json_head = ""

    def _tick(self) -> None:
        """Remake the time texts when the millisecond (and the date text when the second) moved."""
        now_ms = int(time.time() * 1000)
        if now_ms == self._ms:
            return
        self._ms = now_ms
        second, ms = divmod(now_ms, 1000)
        if second != self._second:
            self._second = second
            self._local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._text_prefix = f"{self._local},{ms:03d} {self._pid} INFO keygate.access: "
        self._json_head = json_head(f"{self._utc}.{ms:03d}Z", self._pid)

    def text_prefix(self) -> str:
        """Return the start of a text access line now: the other log lines' layout."""
        self._tick()
        return self._text_prefix

    def json_head(self) -> str:
        """Return the opening of a JSON access record now (time in UTC, to the millisecond)."""
        self._tick()
        return self._json_head

    def text(self, message: str) -> None:
        """Queue a text access line (the same layout as the other log lines)."""
        self._tick()
        self.add(f"{self._text_prefix}{message}\n")

    def raw(self, line: str) -> None:
        """Queue a line that is already complete (a JSON access record)."""
        self.add(line + "\n")

    def add(self, line: str) -> None:
        """Queue a whole line, its newline included, any key in it cut to its prefix."""
        lines = self._lines
        lines.append(cut_keys(line))
        if len(lines) >= FLUSH_LINES or self._timer is None:
            self._schedule()

    def _schedule(self) -> None:
        """Write a full batch now; otherwise make sure a flush is due within FLUSH_INTERVAL."""
        if len(self._lines) >= FLUSH_LINES:
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
