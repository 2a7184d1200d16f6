"""What the proxy notes about one request for its answer and access line (no aiohttp)."""

from __future__ import annotations


class RequestNotes:
    """The request id, the calling key's name, the upstream's answer and whether it was cut.

    One object per request, stored once on the request, written and read as attributes:
    five request-state entries cost five mapping writes and as many lookups on every request.
    """

    __slots__ = ("incomplete", "key_name", "request_id", "upstream_ms", "upstream_status")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        # The key's name (or "?kg_abcdefg..." for a key keygate does not know); None: no key.
        self.key_name: str | None = None
        self.upstream_status: int | None = None
        self.upstream_ms: float | None = None  # milliseconds until the upstream's head arrived
        self.incomplete = False  # the relayed answer was cut short (upstream or client failed)
