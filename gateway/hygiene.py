"""Header hygiene: what the proxy drops, keeps and sets on the way up and down (no aiohttp)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from gateway.credentials import fold_header_name

# Hop-by-hop headers (RFC 9110 section 7.6.1) plus those never forwarded as sent.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Framing headers a client may not drop by naming them in `Connection`.
FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
# Forwarding metadata keygate sets itself; client-sent copies are identity spoofing.
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")
# Folded header names remembered (least recently used out): bounded against hostile variety.
FOLDED_NAMES_LIMIT = 4096

folded = functools.lru_cache(maxsize=FOLDED_NAMES_LIMIT)(fold_header_name)


def connection_named(connection: str) -> set[str]:
    """Return the folded header names a `Connection` value names, minus framing headers."""
    return {fold_header_name(token.strip()) for token in connection.split(",")} - FRAMING


class HeaderHygiene:
    """The header rules of one configuration: identity headers out, exactly one acting user in."""

    def __init__(
        self,
        acting_user_header: str,
        strip_headers: Iterable[str],
        static_headers: tuple[tuple[str, str], ...],
    ) -> None:
        self._acting_header = acting_user_header
        self._static_headers = list(static_headers)  # names unique (settings checks)
        identity = {
            fold_header_name(name)
            for name in (
                acting_user_header,
                *strip_headers,
                *FORWARDING_HEADERS,
                *(name for name, _ in static_headers),
            )
        }
        self._always_drop = frozenset(HOP_BY_HOP | identity | {"host", "expect", "x-api-key"})

    def upstream_headers(
        self,
        headers: Iterable[tuple[str, str]],
        *,
        connection: str | None,
        host: str | None,
        acting_user: str | None,
        drop_authorization: bool,
        peer: str | None,
        scheme: str,
    ) -> list[tuple[str, str]]:
        """Copy the client's headers minus hop-by-hop, credential and identity headers.

        Then set the acting user (for a key caller), X-Forwarded-For/-Proto/-Host and the
        configured service headers; everything set here is dropped first, so no name repeats.
        """
        drop = self._always_drop
        if connection:
            drop = drop | connection_named(connection)
        if drop_authorization:
            drop = drop | {"authorization"}
        out = [(name, value) for name, value in headers if folded(name) not in drop]
        if acting_user is not None:
            out.append((self._acting_header, acting_user))
        if peer:
            out.append(("X-Forwarded-For", peer))
        out.append(("X-Forwarded-Proto", scheme))
        if host:
            out.append(("X-Forwarded-Host", host))
        out += self._static_headers
        return out


def response_headers(
    headers: Iterable[tuple[str, str]], connection: str | None
) -> Iterator[tuple[str, str]]:
    """Yield the upstream's response headers minus hop-by-hop and `Connection`-named ones."""
    drop = HOP_BY_HOP
    if connection:
        drop = drop | connection_named(connection)
    for name, value in headers:
        if name.lower() not in drop:
            yield name, value
