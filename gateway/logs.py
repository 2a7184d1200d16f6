"""Log output: text lines for people, or one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

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
    "remote",
)
TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


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
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


def json_access_line(message: str, fields: dict[str, object]) -> str:
    """One access record as the JSON line JsonFormatter would write (for the buffered writer)."""
    now = time.time()
    line: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        + f".{int(now % 1 * 1000):03d}Z",
        "level": "info",
        "logger": "keygate.access",
        "worker": os.getpid(),
        "message": message,
    }
    line.update((name, value) for name, value in fields.items() if value is not None)
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send log records to stderr as text lines or JSON objects, at `level` and above."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    # Like logging.basicConfig: a no-op when the root logger is already set up (tests).
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
