"""The proxy listener's handler: runs the request flow and relays the upstream's answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from aiohttp import hdrs, web

from gateway.clock import now
from gateway.keys import sunset
from gateway.proxy import refusals
from gateway.proxy.access_log import redact_keys
from gateway.proxy.decision import Limited
from gateway.proxy.error_answers import (
    E_BAD_REQUEST_ID,
    E_INTERNAL,
    E_UPSTREAM_BAD_RESPONSE,
    error_response,
    refusal_response,
)
from gateway.proxy.forward_auth import ForwardAuth
from gateway.proxy.gate import Gate
from gateway.proxy.hygiene import (
    REQUEST_ID_HEADER,
    HeaderHygiene,
    offers_a_key,
    request_id,
    response_headers,
)
from gateway.proxy.notes import CLIENT_ABANDONED, CUT_AT_SHUTDOWN, Ending, RequestNotes
from gateway.proxy.web_internals import (
    JsonErrorRequestHandler,
    Latin1Head,
    Latin1WholeHead,
    RelayedResponse,
    RelayedWholeResponse,
    log_access_now,
)
from gateway.ratelimit.limiters import headers as rate_limit_headers
from gateway.runtime.appkeys import NOTES
from gateway.runtime.context import Runtime
from gateway.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
)

log = logging.getLogger("keygate.proxy")

# Responses up to this many bytes (with a Content-Length) are read whole and sent in one write.
SMALL_BODY_LIMIT = 256 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _client_gone(request: web.BaseRequest) -> bool:
    """Return True when the client's connection is closed or closing."""
    transport = request.transport
    return transport is None or transport.is_closing()


class Proxy:
    """The proxy request handler: hygiene, credential, key, policy, forward, account."""

    def __init__(self, runtime: Runtime, client: UpstreamClient) -> None:
        settings = runtime.settings
        self._runtime = runtime
        self._client = client
        self._in_flight: dict[int, web.BaseRequest] = {}  # by id(): requests are unhashable
        self._draining = False
        self._idle = asyncio.Event()
        hygiene = HeaderHygiene(
            settings.identity.acting_user_header,
            settings.identity.strip_headers,
            tuple(settings.upstream.headers.items()),
            tuple((key.id, key.secret) for key in settings.identity.signing_keys),
        )
        self._gate = Gate(runtime, hygiene)
        self.forward_auth = ForwardAuth(runtime, self._gate, hygiene)

    def _refuse(self, refusal: refusals.Refusal) -> web.Response:
        """Count and render an auth refusal."""
        self._runtime.metrics.refused(refusal.code)
        return refusal_response(refusal)

    def _error(self, status: int, code: str, message: str) -> web.Response:
        """Count and render an error keygate answers itself (hygiene, upstream failures)."""
        self._runtime.metrics.refused(code)
        return error_response(status, code, message)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request (the listener's handler): no unexpected error leaves as a bare 500."""
        in_flight = self._in_flight
        in_flight[id(request)] = request
        protocol = request.protocol
        if isinstance(protocol, JsonErrorRequestHandler):
            protocol.head_received()
        offered = request.headers.get(REQUEST_ID_HEADER)
        notes = RequestNotes(request_id(offered))
        request[NOTES] = notes
        try:
            response: web.StreamResponse
            if offered is not None and offers_a_key(offered):
                response = self._error(400, E_BAD_REQUEST_ID, "the X-Request-Id holds an API key")
            else:
                response = await self.handle(request, notes)
            if not response.prepared:  # relayed answers got it before their head went out
                response.headers[REQUEST_ID_HEADER] = notes.request_id
            if self._draining:
                response.force_close()  # shutting down: this connection takes no more requests
            return response
        except asyncio.CancelledError:
            # The client left (aiohttp cancels the handler) or shutdown cut the request: aiohttp
            # writes no access line for a handler that never returns, so it is written here.
            ending = CUT_AT_SHUTDOWN if self._draining else CLIENT_ABANDONED
            log_access_now(
                request, self._ended(request, notes, ending), time.monotonic() - notes.started
            )
            raise
        except ConnectionResetError:
            if not _client_gone(request):
                raise
            return self._ended(request, notes, CLIENT_ABANDONED)  # aiohttp logs it, once
        except Exception:
            if request.writer.output_size == 0:
                log.exception("unexpected error handling %s", request.method)
                return error_response(500, E_INTERNAL, "internal error")
            return self._cut(request, notes)
        finally:
            del in_flight[id(request)]
            if isinstance(protocol, JsonErrorRequestHandler):
                protocol.await_head()  # the clock for the next head on this connection
            if self._draining and not in_flight:
                self._idle.set()

    def _ended(
        self, request: web.BaseRequest, notes: RequestNotes, ending: Ending
    ) -> web.StreamResponse:
        """Note (and count, once) how a request ended early; return its never-sent answer."""
        if notes.ended is None:
            notes.ended = ending
            notes.received = request.content.total_bytes
            if ending is CLIENT_ABANDONED:
                self._runtime.metrics.abandoned += 1
        return web.StreamResponse(status=ending.status)

    def _cut(self, request: web.BaseRequest, notes: RequestNotes) -> web.StreamResponse:
        """End a request whose answer already began: close the connection, never a second head.

        A fresh 500 here would go out after the relayed head, read by the client as body. As
        for an upstream failing mid-body, closing the connection is the only honest signal.
        """
        log.exception(
            "unexpected error after the answer to %s began; closing the connection",
            request.method,
        )
        notes.incomplete = True
        protocol = request.protocol
        if protocol is not None:
            protocol.force_close()  # the transport goes: aiohttp can write nothing more
        # Only for the access line (status as relayed): it can never be sent.
        return web.StreamResponse(status=notes.upstream_status or 500)

    async def drain(self, grace_period: float) -> int:
        """Let requests in flight finish (bodies still flow both ways) for up to `grace_period`
        seconds; log the ones still running then, and return how many there were."""
        self._draining = True
        if self._in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_period)
        for request in list(self._in_flight.values()):
            log.warning(
                "shutdown: cutting %s %s after the grace period; %d response bytes sent",
                request.method,
                redact_keys(request.raw_path),
                request.writer.output_size if request.writer is not None else 0,
            )
        return len(self._in_flight)

    async def handle(self, request: web.BaseRequest, notes: RequestNotes) -> web.StreamResponse:
        """Run the request flow for one request (the decision, rate limit, forward)."""
        raw_path = request.raw_path
        forward_auth = self.forward_auth
        if forward_auth.claims(raw_path):  # never forwarded: keygate answers it itself
            return await forward_auth.answer(request, notes)
        gate = self._gate
        outcome, key, headers = await gate.admit(
            request, notes, request.method, raw_path, forwarding=True
        )
        if outcome is None:
            response = await self._forward(request, notes, headers, gate.expiry_notice(key))
            if key is not None and response.status >= 500:  # the upstream's, or its failure's
                self._runtime.usage.upstream_error(key.id, now())
            return response
        if isinstance(outcome, Limited):
            response = self._refuse(refusals.RATE_LIMITED)
            response.headers.extend(rate_limit_headers(outcome.limit, outcome.decision))
            return response
        return self._refuse(outcome)

    async def _forward(
        self,
        request: web.BaseRequest,
        notes: RequestNotes,
        headers: list[tuple[str, str]],
        notice: sunset.Headers,
    ) -> web.StreamResponse:
        """Send the request upstream byte-exact and stream the answer back."""
        client_headers = request.headers
        if (
            request.version == aiohttp.HttpVersion11
            and client_headers.get(hdrs.EXPECT, "").lower() == "100-continue"
        ):
            # The request passed every check: ask for the body now. aiohttp's low-level server
            # never answers Expect itself, so a waiting client (curl) would stall instead.
            await request.writer.write(_CONTINUE)
            request.writer.output_size = 0
        body = request.content if request.body_exists else None
        # A body without a Content-Length came chunked: it goes upstream chunked as well.
        chunked = body is not None and hdrs.CONTENT_LENGTH not in client_headers
        sent = time.monotonic()
        try:
            upstream = await self._client.request(
                request.method, request.raw_path, headers, body, chunked=chunked
            )
        except UpstreamError as error:
            if error.client_side and _client_gone(request):
                return self._ended(request, notes, CLIENT_ABANDONED)  # it left mid-upload
            answer = self._upstream_failed(error)
            if error.closes_client:
                # Close the client's side too, once the 408 is out: aiohttp would otherwise
                # linger reading the rest of a body that is not coming.
                await answer.prepare(request)
                await answer.write_eof()
                if request.transport is not None:
                    request.transport.close()
            return answer
        notes.upstream_ms = round((time.monotonic() - sent) * 1000, 2)
        notes.upstream_status = upstream.status
        try:
            return await self._relay(request, notes, upstream, notice)
        finally:
            upstream.release()

    def _upstream_failed(self, error: UpstreamError) -> web.Response:
        """Answer for an exchange that failed before the response head could be relayed."""
        if error.client_side:
            # The client's side failed (it left mid-upload, stalled, or broke its framing).
            log.info("request body failed: %s: %s", error.__class__.__name__, error)
        else:
            log.warning("upstream request failed: %s: %s", error.__class__.__name__, error)
        response = self._error(error.status, error.code, error.message)
        if error.closes_client:
            response.force_close()  # the rest of the body will never be read
        return response

    async def _relay(
        self,
        request: web.BaseRequest,
        notes: RequestNotes,
        upstream: UpstreamResponse,
        notice: sunset.Headers,
    ) -> web.StreamResponse:
        """Copy status, headers (minus hop-by-hop) and body from the upstream response.

        `notice`: the key's Deprecation/Sunset headers (gateway.keys.sunset), if any.
        """
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
        out = response.headers
        out.extend(response_headers(upstream.headers, upstream.connection))
        out[REQUEST_ID_HEADER] = notes.request_id
        if notice:
            for name, value in notice:  # keygate's, in place of any the upstream sent
                out[name] = value
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
                return self._error(error.status, error.mid_answer_code, error.mid_answer_message)
            # Headers already went out: the only honest signal left is to cut the connection.
            log.warning("upstream failed mid-body: %s: %s", error.__class__.__name__, error)
            notes.incomplete = True
            transport = request.transport
            if transport is not None:
                transport.close()
        except (ConnectionError, aiohttp.ClientConnectionError) as error:
            # The client left mid-answer: not the upstream's fault. The upstream response is
            # incomplete, so releasing it closes that connection instead of pooling it.
            log.debug("client went away mid-body: %s", error.__class__.__name__)
            self._ended(request, notes, CLIENT_ABANDONED)  # its line: 499, bytes sent so far
        return response
