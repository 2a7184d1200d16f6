"""Log output: text lines for people, or one JSON object per line for collectors.

Whatever the format, every line leaves with any key in it cut to its display prefix
(`KeyCuttingFormatter`): access lines of both listeners, errors, tracebacks, third-party
loggers' lines, whatever a client put in a URL or header that ends up logged.

Lines go to stderr, or with `log.file` to that file (`LogFile`), opened for appending so the
processes sharing it never overwrite each other's lines, and reopened on SIGUSR1
(`reopen_logs`) so `logrotate` can move it away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from gateway.keys.keyformat import cut_keys

if TYPE_CHECKING:  # the proxy sits above this module: its notes type is for mypy only
    from gateway.proxy.notes import RequestNotes

# Record attributes the access log sets (logger.info(..., extra=...)), copied into JSON lines.
ACCESS_FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "bytes",
    "duration_ms",
    "key",
    "upstream_status",
    "upstream_ms",
    "incomplete",
    "ended",
    "received",
    "remote",
    "decision",
)
TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
# One encoder for every line: json.dumps with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# A string as JSON, quoted, non-ASCII kept (the encoder's own escaping, in C).
_quote = json.encoder.encode_basestring


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, worker and request fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as one line of JSON (exceptions included as text)."""
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "worker": record.process,
            "message": record.getMessage(),
        }
        for name in ACCESS_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)


def json_access_line(
    head: str,
    message: str,
    fields: tuple[str | None, str, str, int, int, float],
    notes: RequestNotes | None,
    remote: str | None,
) -> str:
    """One access record, byte for byte the JSON line JsonFormatter writes for the same record.

    `head` is the record's opening through `"worker":PID,` (AccessWriter.json_head, made once
    per millisecond); `fields` are request_id, method, path, status, bytes and duration_ms.
    Written out field by field: a dict and a JSON encoder cost four times a text line.
    """
    request_id, method, path, status, size, duration_ms = fields
    line = f'{head}"message":{_quote(message)}'
    if request_id is not None:
        line += f',"request_id":{_quote(request_id)}'
    line += (
        f',"method":{_quote(method)},"path":{_quote(path)},"status":{status:d},'
        f'"bytes":{size:d},"duration_ms":{duration_ms!r}'
    )
    if notes is not None:
        if notes.key_name is not None:
            line += f',"key":{_quote(notes.key_name)}'
        if notes.upstream_status is not None:
            line += f',"upstream_status":{notes.upstream_status:d}'
        if notes.upstream_ms is not None:
            line += f',"upstream_ms":{notes.upstream_ms!r}'
        if notes.incomplete:
            line += ',"incomplete":true'
        ended = notes.ended
        if ended is not None:
            line += f',"ended":{_quote(ended.name)},"received":{notes.received:d}'
    if remote is not None:
        line += f',"remote":{_quote(remote)}'
    if notes is not None and notes.decision is not None:
        line += f',"decision":{_quote(notes.decision)}'
    return line + "}"


def json_head(when: str, worker: int) -> str:
    """Return an access record's opening: time, level, logger and worker, ready for the rest."""
    return f'{{"time":"{when}","level":"info","logger":"keygate.access","worker":{worker:d},'


class KeyCuttingFormatter(logging.Formatter):
    """Formats with another formatter, then cuts every key in the whole line (traceback too)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        """Return the inner formatter's line with every key cut to its display prefix."""
        return cut_keys(self._inner.format(record))


def formatter_for(log_format: str) -> logging.Formatter:
    """Return the formatter of `log.format` ("text" or "json"), cutting keys from every line."""
    inner = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    return KeyCuttingFormatter(inner)


class LogFile:
    """The `log.file` a process writes every line to; reopened by path on request.

    Opened in append mode (O_APPEND): every write lands at the file's end, whichever process
    wrote last. A reopen asked for while a line is being written (a signal handler
    interrupting it, another thread) happens before the next write instead.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stale = False
        self._stream = self._open()

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8")

    @contextlib.contextmanager
    def writing(self) -> Iterator[TextIO]:
        """Hold the current stream for one write (reopened first if a reopen is due)."""
        with self._lock:
            if self._stale:
                self._swap()
            yield self._stream

    def reopen(self) -> None:
        """Reopen the file by its path now, or before the next write if one is under way."""
        self._stale = True
        if self._lock.acquire(blocking=False):
            try:
                if self._stale:
                    self._swap()
            finally:
                self._lock.release()

    def _swap(self) -> None:
        self._stale = False
        try:
            fresh = self._open()
        except OSError as error:  # keep writing to the old file rather than losing lines
            self._stream.write(f"keygate: cannot reopen log file {self.path}: {error}\n")
            return
        old, self._stream = self._stream, fresh
        with contextlib.suppress(OSError):
            old.close()


class LogFileHandler(logging.Handler):
    """Writes each record to a LogFile, one line at a time."""

    def __init__(self, log_file: LogFile) -> None:
        super().__init__()
        self.log_file = log_file

    def emit(self, record: logging.LogRecord) -> None:
        """Write one formatted record and its newline, flushed."""
        try:
            line = self.format(record) + "\n"
            with self.log_file.writing() as stream:
                stream.write(line)
                stream.flush()
        except Exception:
            self.handleError(record)


# The process's log file when `log.file` is set (None: stderr), and what must run before
# it is reopened (the access writer's flush).
active_file: LogFile | None = None
_before_reopen: list[Callable[[], None]] = []


def before_reopen(hook: Callable[[], None]) -> None:
    """Run `hook` before every reopen of the log file (write out what is buffered)."""
    if hook not in _before_reopen:
        _before_reopen.append(hook)


def reopen_logs() -> None:
    """Reopen the log file by its path (SIGUSR1, after logrotate moved it); no-op on stderr.

    Called from the event loop (a worker's signal handler): buffered lines are written first.
    """
    if active_file is None:
        return
    for hook in _before_reopen:
        hook()
    active_file.reopen()


def reopen_on_signal(_signum: int, _frame: object) -> None:
    """A plain SIGUSR1 handler (the supervisor, a worker starting): reopen, nothing flushed.

    It may interrupt any line of this process, a write included: the reopen then waits for
    the next write (LogFile.reopen), and buffers are left alone (they go to the new file).
    """
    if active_file is not None:
        active_file.reopen()


def hold_reopen_signal() -> None:
    """Block SIGUSR1 until `accept_reopen_signal`: a process spawned meanwhile inherits the
    block, so a SIGUSR1 reaching it before it has a handler waits instead of killing it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def accept_reopen_signal() -> None:
    """Unblock SIGUSR1 (a signal that arrived while blocked is handled now)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


def configure_logging(level: str, log_format: str = "text", file: Path | None = None) -> None:
    """Send log records to stderr or `file` as text lines or JSON objects, at `level` and up."""
    global active_file
    # Like logging.basicConfig: a no-op when the root logger is already set up (tests).
    if logging.getLogger().handlers:
        return
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        active_file = LogFile(file)
        handler = LogFileHandler(active_file)
    handler.setFormatter(formatter_for(log_format))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
