"""What the proxy notes about one request for its answer and access line (no aiohttp)."""

from __future__ import annotations

import time
from typing import NamedTuple


class Ending(NamedTuple):
    """How a request ended without its answer going out whole: the access line's status and word."""

    status: int  # the status its access line shows (never sent: the client is gone)
    name: str  # the access line's `ended=` value


# The client closed its connection first, mid-upload or mid-download (nginx's 499).
CLIENT_ABANDONED = Ending(499, "client_abandoned")
# The gateway cut the request when shutdown's grace period ran out.
CUT_AT_SHUTDOWN = Ending(503, "shutdown")


class RequestNotes:
    """The request id, the calling key's name, the upstream's answer and whether it was cut.

    One object per request, stored once on the request, written and read as attributes:
    five request-state entries cost five mapping writes and as many lookups on every request.
    """

    __slots__ = (
        "decision",
        "ended",
        "incomplete",
        "key_name",
        "method",
        "received",
        "request_id",
        "started",
        "target",
        "upstream_ms",
        "upstream_status",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        # The key's name (or "?kg_abcdefg..." for a key keygate does not know); None: no key.
        self.key_name: str | None = None
        self.upstream_status: int | None = None
        self.upstream_ms: float | None = None  # milliseconds until the upstream's head arrived
        self.incomplete = False  # the relayed answer was cut short (upstream or client failed)
        # Set when the request ended early (the client left, shutdown): the line says so.
        self.ended: Ending | None = None
        self.received = 0  # request body bytes read from the client when it ended early
        self.started = time.monotonic()  # seconds (monotonic): an ended request's duration
        # A forward-auth decision: its endpoint (`nginx`, `forward`, `envoy`, `unknown`), and
        # the original method and target it decided, once read (its access line shows them).
        self.decision: str | None = None
        self.method: str | None = None
        self.target: str | None = None
