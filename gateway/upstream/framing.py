"""HTTP/1.1 framing and reuse rules of the upstream client: pure functions, no I/O, no aiohttp."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.upstream.errors import LocalProtocolError

# RFC 9110 section 9.2.2: methods whose intended effect of several identical requests is the
# same as of one. Only these may be resent automatically (RFC 9112 section 9.3.1.1).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Seconds taken off the upstream's `Keep-Alive: timeout=` hint, so that keygate closes an idle
# connection before the upstream does rather than racing it; at most half the hint.
KEEP_ALIVE_MARGIN = 1.0
LAST_CHUNK = b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a response head (the defaults live in gateway.settings)."""

    max_line_size: int  # bytes in the status line or in one header field line
    max_headers: int  # header fields in one head (trailers counted separately, the same bound)

    @property
    def max_head_size(self) -> int:
        """Bytes of heads (1xx interim ones included) read before the final head must be done."""
        return (self.max_headers + 2) * (self.max_line_size + 2)


class Framing(enum.Enum):
    """How the end of a response body is found (RFC 9112 section 6.3)."""

    NONE = "none"  # no body: HEAD, 1xx, 204, 304
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # the chunked transfer coding ends it
    UNTIL_CLOSE = "until-close"  # the upstream closing the connection ends it


def is_idempotent(method: str) -> bool:
    """Whether `method` is idempotent (RFC 9110 section 9.2.2), so safe to resend."""
    return method in IDEMPOTENT_METHODS


def request_head(
    method: str, target: str, host: str, headers: Sequence[tuple[str, str]], chunked: bool
) -> bytes:
    """Serialise a request line, Host and `headers` (RFC 9112 sections 3 and 5); refuse CR/LF."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    breaks = len(lines) + 1
    # RFC 9112 section 2.2: a bare CR or LF inside a field would split or smuggle a request.
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise LocalProtocolError("CR or LF inside the request line or a header")
    return text.encode("utf-8", "surrogateescape")


def chunk(data: bytes) -> bytes:
    """Frame `data` as one chunk of a chunked body (RFC 9112 section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def tokens(value: str | None) -> frozenset[str]:
    """The lower-cased members of a comma-separated list field (RFC 9110 section 5.6.1)."""
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(",")) - {""}


def transfer_codings(value: str | None) -> tuple[str, ...]:
    """The transfer codings of a Transfer-Encoding value, in order, lower-cased, params kept."""
    if not value:
        return ()
    return tuple(t.strip().lower() for t in value.split(",") if t.strip())


def response_framing(
    status: int, head_only: bool, codings: Sequence[str], content_length: int | None
) -> Framing:
    """Decide how the response body ends (RFC 9112 section 6.3, rules 1-7 for responses)."""
    # Rule 1: HEAD responses, 1xx, 204 and 304 never have a body, whatever the fields say.
    if head_only or status < 200 or status in (204, 304):
        return Framing.NONE
    # Rule 4: Transfer-Encoding overrides Content-Length; chunked last frames the body,
    # any other final coding means the body runs until the connection closes.
    if codings:
        return Framing.CHUNKED if codings[-1] == "chunked" else Framing.UNTIL_CLOSE
    # Rule 6: a valid Content-Length frames it; rule 8: otherwise it runs until close.
    return Framing.LENGTH if content_length is not None else Framing.UNTIL_CLOSE


def keep_alive(version: str, connection: str | None, framing: Framing) -> bool:
    """Whether the connection persists after this response (RFC 9112 section 9.3).

    `connection` is the joined `Connection` field value. The `close` option ends it; HTTP/1.1
    persists by default. An HTTP/1.0 `keep-alive` may be honoured (section 9.3, last case);
    like h11, keygate does not, so 1.0 answers are never reused. A body delimited by the
    connection closing ends it too (section 6.3 rule 8).
    """
    if version != "1.1" or framing is Framing.UNTIL_CLOSE:
        return False
    # The substring test is a fast path; the token test decides ("closed-x" is not "close").
    return (
        connection is None or "close" not in connection.lower() or "close" not in tokens(connection)
    )


def keep_alive_timeout(value: str | None) -> float | None:
    """The `timeout=` seconds of a `Keep-Alive` field (RFC 2068 section 19.7.1.1), or None."""
    if not value:
        return None
    for param in value.split(","):
        name, _, number = param.partition("=")
        if name.strip().lower() == "timeout":
            try:
                seconds = float(number.strip().strip('"'))
            except ValueError:
                return None
            # `not seconds >= 0` also refuses NaN; infinity means no hint at all.
            return seconds if seconds >= 0 and seconds != float("inf") else None
    return None


def idle_lifetime(idle_timeout: float, hint: float | None) -> float:
    """Seconds an idle connection is kept: the configured bound or the upstream's hint, less."""
    if hint is None:
        return idle_timeout
    return min(idle_timeout, hint - min(KEEP_ALIVE_MARGIN, hint / 2))
