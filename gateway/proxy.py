"""The proxy listener: runs the request flow and forwards to the upstream with header hygiene."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from aiohttp import hdrs, web

from gateway import auth
from gateway.cache import now
from gateway.runtime import Runtime
from gateway.target import TargetError, decoded_path
from gateway.upstream import (
    ClientBodyTimeout,
    RequestBodyError,
    UpstreamClient,
    UpstreamError,
    UpstreamLimitError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger("keygate.proxy")

# Hop-by-hop headers (RFC 9110 §7.6.1) plus those never forwarded as sent.
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
_FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
# Forwarding metadata keygate sets itself; client-sent copies are identity spoofing.
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")
# Responses up to this many bytes (with a Content-Length) are read whole and sent in one write.
SMALL_BODY_LIMIT = 256 * 1024
E_UPSTREAM_DOWN = "upstream_unavailable"
E_UPSTREAM_TIMEOUT = "upstream_timeout"
E_UPSTREAM_HEAD_TOO_LARGE = "upstream_head_too_large"  # 502: over max_line_size/max_headers
E_UPSTREAM_BAD_RESPONSE = "upstream_bad_response"  # 502: not valid HTTP, or not relayable
E_CLIENT_BODY_TIMEOUT = "client_body_timeout"  # 408: the request body went idle
E_BAD_TARGET = "bad_target"
E_INTERNAL = "internal_error"
E_BAD_REQUEST = "bad_request"
KEY_NAME = web.RequestKey("key_name", str)
_JSON_TYPE = "application/json"
# Normalised header names are cached; the cache is bounded against hostile header variety.
_NORMALISED_CACHE_LIMIT = 4096


def normalise(name: str) -> str:
    """Fold a header name for comparison: lower case, `_` read as `-`."""
    return name.lower().replace("_", "-")


def error_response(status: int, code: str, message: str, challenge: bool = False) -> web.Response:
    """Return a JSON error response `{"error", "message"}`."""
    response = web.Response(
        status=status,
        body=json.dumps({"error": code, "message": message}).encode(),
        content_type=_JSON_TYPE,
    )
    if challenge:
        response.headers["WWW-Authenticate"] = auth.WWW_AUTHENTICATE_VALUE
    return response


def refusal_response(refusal: auth.Refusal) -> web.Response:
    """Render an auth refusal as its JSON error response."""
    return error_response(refusal.status, refusal.code, refusal.message, refusal.challenge)


class RelayedResponse(web.StreamResponse):
    """A streamed response carrying the upstream's head: no Content-Type added.

    aiohttp defaults a body's missing Content-Type to application/octet-stream; a proxy must
    not invent one (RFC 9110 section 8.3 lets the recipient sniff or assume instead).
    """

    # The upstream's transfer codings other than chunked (set per response when any).
    transfer_codings: tuple[str, ...] = ()

    async def _prepare_headers(self) -> None:
        untyped = hdrs.CONTENT_TYPE not in self.headers
        await super()._prepare_headers()
        if untyped:
            self.headers.popall(hdrs.CONTENT_TYPE, None)
        if self.transfer_codings and hdrs.TRANSFER_ENCODING in self.headers:
            # The upstream's codings (gzip ...) stay applied to the body keygate re-chunks:
            # relayed in front of chunked, never silently dropped (RFC 9112 section 6.1).
            codings = ", ".join((*self.transfer_codings, "chunked"))
            self.headers[hdrs.TRANSFER_ENCODING] = codings


class RelayedWholeResponse(RelayedResponse):
    """A relayed response whose body is at hand: head and body go out in one write.

    aiohttp's StreamResponse sends its head as soon as it is prepared; `web.Response` opts
    out with this class attribute so the head waits for the body. Streams keep the default,
    so a client sees the head of a slow stream at once.
    """

    _send_headers_immediately = False


class Latin1Head(RelayedResponse):
    """A relayed response whose head holds non-ASCII bytes, written back byte for byte.

    Header strings hold the upstream's bytes as latin-1 (see UpstreamResponse). aiohttp
    serialises heads as UTF-8, byte-exact only for ASCII: it would re-encode (or, for lone
    surrogates, drop) other bytes. So such a head is written here, straight to the
    transport, before any body byte. Only these rare heads pay for it.
    """

    async def _write_headers(self) -> None:
        request = self._req
        assert request is not None
        version = request.version
        lines = [f"HTTP/{version.major}.{version.minor} {self.status} {self.reason}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client connection closed")
        transport.write(head)
        request.writer.output_size += len(head)


class Latin1WholeHead(Latin1Head, RelayedWholeResponse):
    """A whole relayed response with a non-ASCII head."""


class Proxy:
    """The proxy request handler: hygiene, credential, key, policy, forward, account."""

    def __init__(self, runtime: Runtime, client: UpstreamClient) -> None:
        settings = runtime.settings
        self._runtime = runtime
        self._client = client
        self._acting_header = settings.acting_user_header
        self._deny_anonymous = settings.anonymous == "deny"
        self._static_headers = settings.upstream.headers  # names unique (settings checks)
        identity = {
            normalise(name)
            for name in (
                settings.acting_user_header,
                *settings.strip_headers,
                *FORWARDING_HEADERS,
                *(name for name, _ in settings.upstream.headers),
            )
        }
        self._always_drop = frozenset(HOP_BY_HOP | identity | {"host", "expect", "x-api-key"})
        self._normalised: dict[str, str] = {}

    def _norm(self, name: str) -> str:
        folded = self._normalised.get(name)
        if folded is None:
            if len(self._normalised) >= _NORMALISED_CACHE_LIMIT:
                self._normalised.clear()
            folded = self._normalised[name] = normalise(name)
        return folded

    def _refuse(self, refusal: auth.Refusal) -> web.Response:
        """Count and render an auth refusal."""
        self._runtime.metrics.refused(refusal.code)
        return refusal_response(refusal)

    def _error(self, status: int, code: str, message: str) -> web.Response:
        """Count and render an error keygate answers itself (hygiene, upstream failures)."""
        self._runtime.metrics.refused(code)
        return error_response(status, code, message)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request (the listener's handler): no unexpected error leaves as a bare 500."""
        try:
            return await self.handle(request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unexpected error handling %s", request.method)
            return error_response(500, E_INTERNAL, "internal error")

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Run the request flow of DESIGN for one request."""
        try:
            path = decoded_path(request.raw_path)
        except TargetError as error:
            return self._error(400, E_BAD_TARGET, str(error))
        headers = request.headers
        credential = auth.extract_credential(
            headers.getall(auth.API_KEY_HEADER, ()), headers.getall(auth.AUTHORIZATION, ())
        )
        if isinstance(credential, auth.Refusal):
            return self._refuse(credential)
        runtime = self._runtime
        acting_user: str | None = None
        drop_authorization = False
        if credential is None:
            if self._deny_anonymous:
                return self._refuse(auth.KEY_MISSING)
        else:
            moment = now()
            record = auth.authenticate(runtime.table, credential.key, moment)
            if isinstance(record, auth.Refusal):
                return self._refuse(record)
            refusal = auth.authorize(runtime.policy, record, request.method, path)
            if refusal is not None:
                return self._refuse(refusal)
            runtime.usage.record(record.id, moment)
            acting_user = record.name
            drop_authorization = credential.in_authorization
            request[KEY_NAME] = acting_user
        return await self._forward(request, acting_user, drop_authorization)

    def _upstream_headers(
        self, request: web.BaseRequest, acting_user: str | None, drop_authorization: bool
    ) -> list[tuple[str, str]]:
        """Copy the client's headers minus hop-by-hop, credential and identity headers."""
        drop = self._always_drop
        headers = request.headers
        connection = headers.get("Connection")
        if connection:
            named = {normalise(token.strip()) for token in connection.split(",")} - _FRAMING
            drop = drop | named
        if drop_authorization:
            drop = drop | {"authorization"}
        norm = self._norm
        # Everything keygate sets itself is in `drop`, so appending never duplicates a name.
        out = [(name, value) for name, value in headers.items() if norm(name) not in drop]
        if acting_user is not None:
            out.append((self._acting_header, acting_user))
        peer = request.remote
        if peer:
            out.append(("X-Forwarded-For", peer))
        out.append(("X-Forwarded-Proto", request.scheme))
        host = headers.get("Host")
        if host:
            out.append(("X-Forwarded-Host", host))
        out += self._static_headers
        return out

    async def _forward(
        self, request: web.BaseRequest, acting_user: str | None, drop_authorization: bool
    ) -> web.StreamResponse:
        """Send the request upstream byte-exact and stream the answer back."""
        if (
            request.version == aiohttp.HttpVersion11
            and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue"
        ):
            # The request passed every check: ask for the body now. aiohttp's low-level server
            # never answers Expect itself, so a waiting client (curl) would stall instead.
            await request.writer.write(_CONTINUE)
            request.writer.output_size = 0
        headers = self._upstream_headers(request, acting_user, drop_authorization)
        body = request.content if request.body_exists else None
        # A body without a Content-Length came chunked: it goes upstream chunked as well.
        chunked = body is not None and hdrs.CONTENT_LENGTH not in request.headers
        try:
            upstream = await self._client.request(
                request.method, request.raw_path, headers, body, chunked=chunked
            )
        except UpstreamError as error:
            answer = self._upstream_failed(error)
            if isinstance(error, ClientBodyTimeout):
                # Close the client's side too, once the 408 is out: aiohttp would otherwise
                # linger reading the rest of a body that is not coming.
                await answer.prepare(request)
                await answer.write_eof()
                if request.transport is not None:
                    request.transport.close()
            return answer
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    def _upstream_failed(self, error: UpstreamError) -> web.Response:
        """Answer for an exchange that failed before the response head could be relayed."""
        if isinstance(error, ClientBodyTimeout):
            log.info("request body timed out: %s", error)
            response = self._error(408, E_CLIENT_BODY_TIMEOUT, "the request body stalled")
            response.force_close()  # the rest of the body will never be read
            return response
        if isinstance(error, UpstreamTimeout):
            return self._error(504, E_UPSTREAM_TIMEOUT, "the upstream did not answer in time")
        if isinstance(error, RequestBodyError):
            # The client's side failed (it left mid-upload, or broke its chunked framing).
            log.info("request body failed: %s", error)
            return self._error(502, E_UPSTREAM_DOWN, "the request could not be forwarded")
        log.warning("upstream request failed: %s: %s", error.__class__.__name__, error)
        if isinstance(error, UpstreamLimitError):
            return self._error(502, E_UPSTREAM_HEAD_TOO_LARGE, "the upstream's head is too large")
        if isinstance(error, UpstreamProtocolError):
            return self._error(502, E_UPSTREAM_BAD_RESPONSE, "the upstream's answer is invalid")
        return self._error(502, E_UPSTREAM_DOWN, "the upstream could not be reached")

    async def _relay(
        self, request: web.BaseRequest, upstream: UpstreamResponse
    ) -> web.StreamResponse:
        """Copy status, headers (minus hop-by-hop) and body from the upstream response."""
        if upstream.transfer_codings and request.version < aiohttp.HttpVersion11:
            # RFC 9112 section 6.1: no transfer coding may be sent to an HTTP/1.0 client.
            log.warning(
                "upstream transfer coding %s for an HTTP/1.0 client", upstream.transfer_codings
            )
            return self._error(
                502, E_UPSTREAM_BAD_RESPONSE, "the upstream's coding cannot be relayed"
            )
        length = upstream.content_length
        whole = length is not None and length <= SMALL_BODY_LIMIT
        if upstream.head_ascii:
            kind: type[RelayedResponse] = RelayedWholeResponse if whole else RelayedResponse
        else:
            kind = Latin1WholeHead if whole else Latin1Head
        response = kind(status=upstream.status, reason=upstream.reason)
        if upstream.transfer_codings:
            response.transfer_codings = upstream.transfer_codings
        drop = HOP_BY_HOP
        connection = upstream.connection
        if connection:
            drop = drop | ({normalise(t.strip()) for t in connection.split(",")} - _FRAMING)
        out = response.headers
        for name, value in upstream.headers:
            if name.lower() not in drop:
                out.add(name, value)
        self._runtime.metrics.forwarded(upstream.status)
        try:
            if whole:
                body = await upstream.read()
                await response.prepare(request)
                await response.write_eof(body)
                return response
            await response.prepare(request)
            while chunk := await upstream.read_chunk():
                await response.write(chunk)
            await response.write_eof()
        except UpstreamError as error:
            if not response.prepared:
                if isinstance(error, UpstreamTimeout):
                    return self._error(504, E_UPSTREAM_TIMEOUT, "the upstream timed out")
                return self._error(502, E_UPSTREAM_DOWN, "the upstream failed mid-answer")
            # Headers already went out: the only honest signal left is to cut the connection.
            log.warning("upstream failed mid-body: %s: %s", error.__class__.__name__, error)
            transport = request.transport
            if transport is not None:
                transport.close()
        except (ConnectionError, aiohttp.ClientConnectionError) as error:
            # The client left mid-answer: not the upstream's fault. The upstream response is
            # incomplete, so releasing it closes that connection instead of pooling it.
            log.debug("client went away mid-body: %s", error.__class__.__name__)
        return response


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
