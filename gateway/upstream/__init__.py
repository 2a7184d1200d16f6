"""The upstream HTTP/1.1 client: pure framing rules, connection protocol, pool, client.

May import: settings (the upstream's config), clock. Imports no store; framing imports no
aiohttp and no asyncio.
"""

from __future__ import annotations

import ssl

from gateway.settings import Upstream, UpstreamTLS
from gateway.upstream.client import BodySource, UpstreamClient
from gateway.upstream.connection import READ_HIGH_WATER, UpstreamConnection, UpstreamResponse
from gateway.upstream.errors import (
    ClientBodyTimeout,
    LocalProtocolError,
    RequestBodyError,
    UpstreamClosed,
    UpstreamError,
    UpstreamLimitError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from gateway.upstream.pool import CLOSE_WAIT, Pool

__all__ = [
    "CLOSE_WAIT",
    "READ_HIGH_WATER",
    "BodySource",
    "ClientBodyTimeout",
    "LocalProtocolError",
    "Pool",
    "RequestBodyError",
    "UpstreamClient",
    "UpstreamClosed",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamLimitError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "create_upstream_client",
    "tls_context",
]


def tls_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """A verifying client context: the system's CAs or `ca_file`, plus a client certificate."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file is not None:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def create_upstream_client(upstream: Upstream) -> UpstreamClient:
    """Return the keep-alive upstream client (connection pool) the proxy forwards through."""
    https = upstream.url.lower().startswith("https:")
    return UpstreamClient(
        upstream.url,
        pool_size=upstream.pool_size,
        connect_timeout=upstream.connect_timeout,
        timeout=upstream.timeout,
        pool_timeout=upstream.pool_timeout,
        idle_timeout=upstream.idle_timeout,
        client_body_timeout=upstream.client_body_timeout,
        read_timeout=upstream.read_timeout,
        max_line_size=upstream.max_line_size,
        max_headers=upstream.max_headers,
        ssl_context=tls_context(upstream.tls) if https else None,
        server_hostname=upstream.tls.server_name if https else None,
    )
