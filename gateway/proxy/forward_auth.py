"""The forward-auth endpoints: keygate decides for a front proxy (nginx, ingress-nginx, Envoy,
Traefik, Caddy) that moves the bytes itself.

`{prefix}nginx`, `{prefix}forward` and `{prefix}envoy<original path>` on the proxy listener
read the original request as each front proxy sends it (gateway.proxy.front), then admit it
through the proxy's own gate (gateway.proxy.gate: credential, key, headers, decision, rate
limit, use count). Allowed: 200, empty, with the acting user (signed over the original
method and target when signing is configured) and the key's id for the front proxy to copy
upstream. Refused: keygate's JSON error with `X-Keygate-Reason`. Only peers in
`forward_auth.trusted_proxies` are answered; nothing under the prefix is ever forwarded.
"""

from __future__ import annotations

from aiohttp import web

from gateway.keys.table import CachedKey
from gateway.proxy.error_answers import SERVER_NAME, error_response
from gateway.proxy.front import (
    ENVOY,
    FORWARD,
    NGINX,
    BadForwardAuthRequest,
    Routes,
    TrustedPeers,
    original_request,
)
from gateway.proxy.gate import AskingRequest, Gate
from gateway.proxy.hygiene import HeaderHygiene
from gateway.proxy.notes import RequestNotes
from gateway.proxy.refusals import RATE_LIMITED, Refusal
from gateway.proxy.web_internals import BodilessAnswer, header_lines
from gateway.ratelimit.limiters import headers as rate_limit_headers
from gateway.runtime.context import Runtime

# The refusal's error code, on every refused answer: front proxies relay headers more
# readily than bodies (nginx `auth_request_set $reason $upstream_http_x_keygate_reason`).
REASON_HEADER = "X-Keygate-Reason"
# The allowed key's id (a number; never its secret), for the front proxy to pass upstream.
KEY_ID_HEADER = "X-Keygate-Key-Id"
E_UNTRUSTED = "forward_auth_untrusted"
E_BAD_REQUEST = "forward_auth_bad_request"
E_NOT_FOUND = "forward_auth_not_found"
UNKNOWN = "unknown"  # the access line's decision= for a target in the prefix naming no endpoint


def peer_address(request: AskingRequest) -> str | None:
    """The address of the connection's peer (the socket's, never a header's), or None.

    aiohttp reads the peer once per connection; `remote` is that address (a Unix socket's
    path is no IP address, and is trusted by no network).
    """
    return request.remote


class ForwardAuth:
    """Answers forward-auth requests on the proxy listener."""

    def __init__(self, runtime: Runtime, gate: Gate, hygiene: HeaderHygiene) -> None:
        settings = runtime.settings.forward_auth
        self._runtime = runtime
        self._gate = gate
        self._hygiene = hygiene
        self._routes = Routes(settings.prefix)
        self._peers = TrustedPeers(settings.trusted_proxies)
        self._cache_control = settings.cache_control
        # The allowed answer's lines that never change, made once.
        self._allowed_head = header_lines(
            (("Cache-Control", settings.cache_control), ("Server", SERVER_NAME))
        )
        prefix = settings.prefix
        self._not_found = (
            f"no forward-auth endpoint has this path; they are {prefix}{NGINX}, "
            f"{prefix}{FORWARD} and {prefix}{ENVOY}/<original path>"
        )
        self.claims = self._routes.claims  # the proxy asks this of every request target

    async def answer(self, request: AskingRequest, notes: RequestNotes) -> web.StreamResponse:
        """Answer a request whose target `claims` claimed: the decision, or why there is none."""
        endpoint, envoy_path = self._routes.endpoint(request.raw_path)
        notes.decision = endpoint or UNKNOWN
        address = peer_address(request)
        if not self._peers.trusts(address):
            message = f"{address or 'this peer'} is not in forward_auth.trusted_proxies"
            return self._error(403, E_UNTRUSTED, message)
        if endpoint is None:
            return self._error(404, E_NOT_FOUND, self._not_found)
        try:
            method, target = original_request(endpoint, request.headers, request.method, envoy_path)
        except BadForwardAuthRequest as error:
            return self._error(400, E_BAD_REQUEST, str(error))
        notes.method, notes.target = method, target
        outcome, record, _ = await self._gate.admit(
            request, notes, method, target, forwarding=False
        )
        if outcome is None:
            self._runtime.metrics.decisions_allowed += 1
            return self._allowed(record, method, target)
        if isinstance(outcome, Refusal):
            return self._refused(endpoint, outcome)
        response = self._refused(endpoint, RATE_LIMITED)
        response.headers.extend(rate_limit_headers(outcome.limit, outcome.decision))
        return response

    def _allowed(self, record: CachedKey | None, method: str, target: str) -> web.StreamResponse:
        """200, empty: the key's name as acting user (signed) and its id; anonymous: nothing."""
        if record is None:
            return BodilessAnswer(200, self._allowed_head, "")
        headers: list[tuple[str, str]] = []
        self._hygiene.add_identity(headers, method, target, record.name)
        headers.append((KEY_ID_HEADER, str(record.id)))
        headers.extend(self._gate.expiry_notice(record))  # a front proxy may pass them on
        return BodilessAnswer(200, self._allowed_head, header_lines(headers))

    def _refused(self, endpoint: str, refusal: Refusal) -> web.Response:
        """A refusal of the decision: 401 or 403 for nginx (which answers 500 for any other
        status but 2xx), the proxy's own status for the others."""
        status = refusal.status
        if endpoint == NGINX and status != 401:
            status = 403
        self._runtime.metrics.refused(refusal.code)
        response = error_response(status, refusal.code, refusal.message, refusal.challenge)
        headers = response.headers
        headers[REASON_HEADER] = refusal.code
        headers["Cache-Control"] = self._cache_control
        return response

    def _error(self, status: int, code: str, message: str) -> web.Response:
        """An answer about the forward-auth request itself (untrusted, malformed, no endpoint):
        the same status for every front proxy (nginx makes a 400 a 500: a setup mistake)."""
        self._runtime.metrics.refused(code)
        response = error_response(status, code, message)
        response.headers[REASON_HEADER] = code
        response.headers["Cache-Control"] = self._cache_control
        return response
