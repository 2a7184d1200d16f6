"""Errors of the upstream client, each carrying the answer the proxy gives for it.

Like h11's `ProtocolError.error_status_hint`, every class says its own HTTP status, error
code and message (class attributes), so the proxy renders `error.status, error.code,
error.message` in one place instead of matching types.
"""

from __future__ import annotations

from typing import ClassVar

E_UPSTREAM_DOWN = "upstream_unavailable"
E_UPSTREAM_TIMEOUT = "upstream_timeout"
E_UPSTREAM_HEAD_TOO_LARGE = "upstream_head_too_large"  # 502: over max_line_size/max_headers
E_UPSTREAM_BAD_RESPONSE = "upstream_bad_response"  # 502: not valid HTTP, or not relayable
E_CLIENT_BODY_TIMEOUT = "client_body_timeout"  # 408: the request body went idle


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange (the proxy answers 502)."""

    # The answer when the exchange failed before the upstream's head arrived.
    status: ClassVar[int] = 502
    code: ClassVar[str] = E_UPSTREAM_DOWN
    message: ClassVar[str] = "the upstream could not be reached"
    # The answer when it failed after the head, before any byte was relayed (same status).
    mid_answer_code: ClassVar[str] = E_UPSTREAM_DOWN
    mid_answer_message: ClassVar[str] = "the upstream failed mid-answer"
    # True when the client's side failed (logged at info, not as the upstream's fault).
    client_side: ClassVar[bool] = False
    # True when the client's connection is closed once the answer is out (its body stalled).
    closes_client: ClassVar[bool] = False


class UpstreamTimeout(UpstreamError):
    """A pool slot, connecting, the response head or an upstream body stalled too long (504)."""

    status = 504
    code = E_UPSTREAM_TIMEOUT
    message = "the upstream did not answer in time"
    mid_answer_code = E_UPSTREAM_TIMEOUT
    mid_answer_message = "the upstream timed out"


class UpstreamClosed(UpstreamError):
    """The connection closed or reset before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not a valid HTTP/1.x response (a remote error)."""

    code = E_UPSTREAM_BAD_RESPONSE
    message = "the upstream's answer is invalid"


class UpstreamLimitError(UpstreamProtocolError):
    """The upstream's response head is over a configured limit (line length, field count)."""

    code = E_UPSTREAM_HEAD_TOO_LARGE
    message = "the upstream's head is too large"


class LocalProtocolError(ValueError):
    """keygate was asked to send something that is not valid HTTP/1.1 (CR/LF in a header).

    No answer of its own: header hygiene refuses such values first, so this is a bug (500).
    """


class RequestBodyError(UpstreamError):
    """Reading the request body from the client failed while sending it upstream."""

    message = "the request could not be forwarded"
    client_side = True


class ClientBodyTimeout(RequestBodyError):
    """The client's request body went idle for longer than its bound (the proxy answers 408)."""

    status = 408
    code = E_CLIENT_BODY_TIMEOUT
    message = "the request body stalled"
    closes_client = True
