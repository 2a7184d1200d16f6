"""The one wall clock (unix seconds) and its ISO-8601 rendering, shared by every module."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    """Return the current unix time in seconds."""
    return time.time()


def iso(stamp: float | None) -> str | None:
    """Format unix seconds as ISO-8601 UTC with a `Z` (or None)."""
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")
