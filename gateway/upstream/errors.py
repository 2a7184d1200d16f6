"""Errors of the upstream client: local and remote protocol errors, timeouts, the client's body."""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange (the proxy answers 502)."""


class UpstreamTimeout(UpstreamError):
    """A pool slot, connecting, the response head or an upstream body stalled too long (504)."""


class UpstreamClosed(UpstreamError):
    """The connection closed or reset before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not a valid HTTP/1.x response (a remote error)."""


class UpstreamLimitError(UpstreamProtocolError):
    """The upstream's response head is over a configured limit (line length, field count)."""


class LocalProtocolError(ValueError):
    """keygate was asked to send something that is not valid HTTP/1.1 (CR/LF in a header)."""


class RequestBodyError(UpstreamError):
    """Reading the request body from the client failed while sending it upstream."""


class ClientBodyTimeout(RequestBodyError):
    """The client's request body went idle for longer than its bound (the proxy answers 408)."""
