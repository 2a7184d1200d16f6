"""The Deprecation and Sunset headers a key's answers carry within its expiry warning window.

RFC 9745's Deprecation (`@<unix seconds>`: the key counts as deprecated from the start of the
window, `expiry.warn_days` before it expires) and RFC 8594's Sunset (the HTTP-date it stops
working), so the calling software's own logs show the expiry before requests start failing.
"""

from __future__ import annotations

import functools
from email.utils import formatdate

DEPRECATION = "Deprecation"
SUNSET = "Sunset"
# Distinct expiry times whose header pairs are kept made (least recently used out): a few
# keys near expiry at a time; the pair is made once per expiry, not per request.
FORMATTED_LIMIT = 1024

Headers = tuple[tuple[str, str], ...]
NONE: Headers = ()


@functools.lru_cache(maxsize=FORMATTED_LIMIT)
def _pair(expires_at: float, window: float) -> Headers:
    return (
        (DEPRECATION, f"@{int(expires_at - window)}"),
        (SUNSET, formatdate(expires_at, usegmt=True)),
    )


class SunsetHeaders:
    """Which headers an answer for a key with expiry `expires_at` carries at a moment."""

    def __init__(self, warn_days: int, enabled: bool) -> None:
        self.window = warn_days * 86_400.0
        self.enabled = enabled

    def for_key(self, expires_at: float | None, now: float) -> Headers:
        """Deprecation and Sunset within the warning window before `expires_at`, else none."""
        if expires_at is None or not self.enabled or now < expires_at - self.window:
            return NONE
        return _pair(expires_at, self.window)
