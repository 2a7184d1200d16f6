"""A buffered writer for access lines: formatted cheaply, written in batches off the request path.

Logging one line per request through the logging module costs a LogRecord, a formatter and
a write system call each; on a busy proxy that is a tenth of a request's CPU. `keygate serve`
instead hands each access line to this writer, which stamps it (the time text is made once
per millisecond, not per line), keeps it in memory and writes the batch in one call every
FLUSH_INTERVAL or when FLUSH_LINES are waiting, and at shutdown, so no line is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import sys
import time
from typing import Any, TextIO

from gateway.keys.keyformat import cut_keys
from gateway.runtime import logs
from gateway.runtime.logs import LogFile, json_head

FLUSH_INTERVAL = 0.2  # seconds a line may wait before it is written
FLUSH_LINES = 512  # lines that make a batch be written at once
# Bytes one write may carry and stay whole on a pipe shared with other workers (POSIX
# PIPE_BUF: 4096 on Linux); a longer access line is shortened to this, newline included.
ATOMIC_WRITE = select.PIPE_BUF
CUT_MARK = "…(cut)"  # ends a string value or a text line that was shortened to fit


class AccessWriter:
    """Collects access lines and writes them to `stream` (or `log_file`) in batches."""

    def __init__(self, stream: TextIO | None = None, log_file: LogFile | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._log_file = log_file  # when set, lines go to it instead (`log.file`)
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
        lines, self._lines = self._lines, []
        if self._log_file is None:
            _write_lines(self._stream, lines)
            return
        with self._log_file.writing() as stream:  # never while the file is being reopened
            _write_lines(stream, lines)


def _write_lines(stream: TextIO, lines: list[str]) -> None:
    """Write whole lines to `stream`: to its descriptor in atomic chunks when it has one."""
    try:
        fileno = stream.fileno()
    except (OSError, ValueError, AttributeError):  # an in-memory stream: one write
        fileno = -1
    try:
        if fileno < 0:
            stream.write("".join(lines))
            stream.flush()
        else:
            stream.flush()  # whatever the logging module left in its buffer first
            for chunk in atomic_chunks(lines):
                write_all(fileno, chunk)
    except (OSError, ValueError):  # a closed or full stream: nothing better to do
        pass


def atomic_chunks(lines: list[str]) -> list[bytes]:
    """Join `lines` into writes of at most ATOMIC_WRITE bytes, each ending at a line end."""
    batch = "".join(lines).encode("utf-8", "backslashreplace")
    chunks: list[bytes] = []
    start, end = 0, len(batch)
    while end - start > ATOMIC_WRITE:
        cut = batch.rfind(b"\n", start, start + ATOMIC_WRITE)
        if cut < 0:  # one line longer than a whole write: shorten it alone
            line_end = batch.index(b"\n", start)
            line = batch[start : line_end + 1].decode("utf-8", "backslashreplace")
            chunks.append(shortened(line).encode("utf-8", "backslashreplace"))
            start = line_end + 1
            continue
        chunks.append(batch[start : cut + 1])
        start = cut + 1
    if start < end:
        chunks.append(batch[start:])
    return chunks


def shortened(line: str) -> str:
    """Return `line` (newline included) cut to ATOMIC_WRITE bytes, a JSON record kept valid."""
    body = line.rstrip("\n")
    if body.startswith("{"):
        try:
            record: Any = json.loads(body)
        except ValueError:
            record = None
        if isinstance(record, dict):
            return shortened_record(record) + "\n"
    budget = ATOMIC_WRITE - len(CUT_MARK.encode()) - 1
    cut = body.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return f"{cut}{CUT_MARK}\n"


def shortened_record(record: dict[str, Any]) -> str:
    """Halve the record's longest string values until its JSON line fits ATOMIC_WRITE."""
    text = json.dumps(record, ensure_ascii=False)
    while len(text.encode("utf-8")) + 1 > ATOMIC_WRITE:
        strings = [(len(v), k) for k, v in record.items() if isinstance(v, str)]
        if not strings or max(strings)[0] <= len(CUT_MARK):
            return json.dumps({key: record[key] for key in ("time", "pid") if key in record})
        length, key = max(strings)
        record[key] = record[key][: length // 2] + CUT_MARK
        text = json.dumps(record, ensure_ascii=False)
    return text


def write_all(fileno: int, data: bytes) -> None:
    """Write `data` to a descriptor, retrying a partial write (only a non-pipe makes one)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fileno, view) :]


# The writer `keygate serve` installs (None: access lines go through the logging module).
active: AccessWriter | None = None


def install(stream: TextIO | None = None) -> AccessWriter:
    """Send access lines through a buffered writer from now on (to `log.file` when one is
    open, else `stream` or stderr); return it. Its lines are written out before a reopen."""
    global active
    active = AccessWriter(stream, None if stream is not None else logs.active_file)
    logs.before_reopen(flush)
    return active


def flush() -> None:
    """Write what the installed writer holds (at shutdown)."""
    if active is not None:
        active.flush()
