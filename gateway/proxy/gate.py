"""One request's admission on the proxy listener, for the proxy and the forward-auth endpoints.

The credential from the request's own headers, the key it names, the headers screened (a
working key anywhere else is refused; method-override headers found), then the shared
decision with rate limit and use count (`decision.admit`). The proxy forwards what is
admitted; the forward-auth endpoints answer the front proxy instead, for the original method
and target it reports. One sequence for both, so the two modes cannot decide differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import hdrs
from multidict import CIMultiDictProxy

from gateway.clock import now
from gateway.keys import sunset
from gateway.keys.keyformat import display_prefix, looks_like_key
from gateway.keys.table import CachedKey
from gateway.proxy import refusals
from gateway.proxy.credentials import API_KEY_HEADER, AUTHORIZATION, Credential, extract_credential
from gateway.proxy.decision import Limited, admit, caller_of
from gateway.proxy.hygiene import HeaderHygiene, KeyInHeaderError
from gateway.proxy.notes import RequestNotes
from gateway.proxy.refusals import Refusal
from gateway.runtime.context import Runtime

Headers = list[tuple[str, str]]
# What admission yields: the refusal (or rate-limit refusal) to answer, else None with the
# admitted key (None: an anonymous caller let through) and, for the proxy, the upstream headers.
Outcome = Refusal | Limited | None
_NO_HEADERS: Headers = []  # never changed: refused requests and forward-auth answers get it


class AskingRequest(Protocol):
    """What admission reads of a request: aiohttp's, or the decision listener's adapter."""

    @property
    def method(self) -> str:
        """The request's own method."""
        ...

    @property
    def raw_path(self) -> str:
        """The request's own target, as sent."""
        ...

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The request's headers."""
        ...

    @property
    def remote(self) -> str | None:
        """The connection's peer address (the socket's)."""
        ...

    @property
    def scheme(self) -> str:
        """http or https."""
        ...


def unknown_key_label(key: str) -> str:
    """Return how the access log names a key keygate does not know: its display prefix only."""
    return "?" + display_prefix(key) + "..." if looks_like_key(key) else "?"


class Gate:
    """Admits requests: credential, key, headers, decision, rate limit, use count."""

    def __init__(self, runtime: Runtime, hygiene: HeaderHygiene) -> None:
        self._runtime = runtime
        self._hygiene = hygiene
        self._deny_anonymous = runtime.settings.anonymous == "deny"
        expiry = runtime.settings.expiry
        self._sunset = sunset.SunsetHeaders(expiry.warn_days, expiry.sunset_headers)

    def expiry_notice(self, record: CachedKey | None) -> sunset.Headers:
        """Deprecation/Sunset for an admitted key within its expiry warning window, else none."""
        if record is None or record.expires_at is None:
            return sunset.NONE  # most keys: no clock read
        return self._sunset.for_key(record.expires_at, now())

    async def admit(
        self,
        request: AskingRequest,
        notes: RequestNotes,
        method: str,
        target: str,
        *,
        forwarding: bool,
    ) -> tuple[Outcome, CachedKey | None, Headers]:
        """Admit METHOD TARGET carried by `request`'s headers: (outcome, key, upstream headers).

        `forwarding`: the proxy's own request, whose upstream headers are built here (with
        the acting user signed over METHOD TARGET); otherwise (forward-auth) the headers are
        only screened, and the list returned is empty.
        """
        client = request.headers
        credential = extract_credential(
            client.getall(API_KEY_HEADER, ()), client.getall(AUTHORIZATION, ())
        )
        runtime = self._runtime
        moment = now()
        record = caller_of(runtime.table, credential, moment)
        overrides: Sequence[str] = ()
        headers = _NO_HEADERS
        if isinstance(record, CachedKey):
            notes.key_name = record.name
            # Built before deciding: the one pass over the headers also finds method overrides.
            in_authorization = isinstance(credential, Credential) and credential.in_authorization
            try:
                headers, overrides = self._read_headers(
                    request, notes, method, target, record.name, in_authorization, forwarding
                )
            except KeyInHeaderError:
                return refusals.KEY_MISPLACED, None, _NO_HEADERS
        elif isinstance(credential, Credential):
            notes.key_name = unknown_key_label(credential.key)
        outcome = await admit(
            runtime.policy,  # one policy for the whole request, even across a reload
            method,
            target,
            record,
            overrides,
            runtime.limiter,
            runtime.usage,
            moment,
            deny_anonymous=self._deny_anonymous,
            address=request.remote,
        )
        if outcome is not None:
            return outcome, None, _NO_HEADERS
        if isinstance(record, CachedKey):
            return None, record, headers
        # No credential, and anonymous callers may pass: their headers are read only now.
        try:
            headers, _ = self._read_headers(request, notes, method, target, None, False, forwarding)
        except KeyInHeaderError:
            return refusals.KEY_MISPLACED, None, _NO_HEADERS
        return None, None, headers

    def _read_headers(
        self,
        request: AskingRequest,
        notes: RequestNotes,
        method: str,
        target: str,
        acting_user: str | None,
        drop_authorization: bool,
        forwarding: bool,
    ) -> tuple[Headers, list[str]]:
        """Return the headers to send upstream (forwarding) and the method-override values."""
        client_headers = request.headers
        if not forwarding:
            overrides = self._hygiene.screen(
                client_headers.items(),
                connection=client_headers.get(hdrs.CONNECTION),
                key_caller=acting_user is not None,
                drop_authorization=drop_authorization,
            )
            return _NO_HEADERS, overrides
        return self._hygiene.upstream_headers(
            client_headers.items(),
            method=method,
            target=target,
            request_id=notes.request_id,
            connection=client_headers.get(hdrs.CONNECTION),
            host=client_headers.get(hdrs.HOST),
            acting_user=acting_user,
            drop_authorization=drop_authorization,
            peer=request.remote,
            scheme=request.scheme,
        )
