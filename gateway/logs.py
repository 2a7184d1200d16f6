"""Log output: text lines for people, or one JSON object per line for collectors.

Whatever the format, every line leaves with any key in it cut to its display prefix
(`KeyCuttingFormatter`): access lines of both listeners, errors, tracebacks, third-party
loggers' lines, whatever a client put in a URL or header that ends up logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from gateway.keys import cut_keys
from gateway.request_notes import RequestNotes

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


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send log records to stderr as text lines or JSON objects, at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    # Like logging.basicConfig: a no-op when the root logger is already set up (tests).
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
