"""OpenID Connect relying party: discovery, authorization URL, code exchange, refresh, logout URL.

Talks to the provider with bounded requests (the configured timeout, `MAX_PROVIDER_BYTES`
per answer) and keeps the discovery document for `DISCOVERY_TTL`. ID tokens are verified
by the shared `TokenVerifier` (PyJWT against the provider's JWKS); this module adds what is
particular to a sign-in: the nonce, `azp`, and the issuer the provider named in its answer.
No token, code or secret is ever logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote_plus, urlencode

import aiohttp
from yarl import URL

from gateway.admin.oidc_flow import Flow, code_challenge

log = logging.getLogger("keygate.admin.oidc")

DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_TTL = 3600.0  # seconds a discovery document is reused before it is fetched again
MAX_PROVIDER_BYTES = 262_144  # bytes of one provider answer read (discovery, token endpoint)
MAX_ERROR_CODE = 64  # characters of a provider's `error` code repeated on the page
AUTH_BASIC = "client_secret_basic"
_ERROR_CODE = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_ERROR_CODE}}}")
AUTH_POST = "client_secret_post"


class ProviderUnavailable(Exception):
    """The provider could not be reached or answered something unusable."""


class ProviderRefused(Exception):
    """The provider refused a grant (its OAuth `error` code, e.g. invalid_grant)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class IdTokenRefused(Exception):
    """An ID token that verified but is not for this sign-in (nonce, azp, missing subject)."""


class IdTokenVerifier(Protocol):
    """What the relying party needs of a token verifier (the shared `TokenVerifier`)."""

    async def verify(self, token: str) -> dict[str, Any]:
        """Return a token's verified claims or raise."""


@dataclass(frozen=True, slots=True)
class Discovery:
    """The parts of a provider's discovery document a relying party uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None
    token_auth_method: str


@dataclass(frozen=True, slots=True)
class Tokens:
    """A token endpoint's answer: the verified ID token's claims and what comes with it."""

    claims: dict[str, Any]
    id_token: str
    refresh_token: str | None
    expires_at: float | None  # when the ID token stops verifying (its exp)


def _endpoint(document: Mapping[str, Any], name: str, secure: bool) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        raise ProviderUnavailable(f"the discovery document has no {name}")
    url = URL(value)
    if not url.is_absolute() or url.scheme not in ("https", "http") or not url.host:
        raise ProviderUnavailable(f"the discovery document's {name} is not an http(s) URL")
    if secure and url.scheme != "https":
        raise ProviderUnavailable(f"the discovery document's {name} is not https")
    return value


def parse_discovery(document: object, issuer: str) -> Discovery:
    """Check a discovery document (OpenID Connect Discovery 1.0, section 4.3) and keep its parts.

    The document's issuer must be exactly the configured one; with an https issuer every
    endpoint must be https; the code flow with S256 PKCE must be on offer.
    """
    if not isinstance(document, Mapping):
        raise ProviderUnavailable("the discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise ProviderUnavailable("the discovery document names another issuer")
    secure = issuer.startswith("https:")
    methods = document.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise ProviderUnavailable("the provider does not offer PKCE with S256")
    auth_methods = document.get("token_endpoint_auth_methods_supported", [AUTH_BASIC])
    if not isinstance(auth_methods, list):
        auth_methods = [AUTH_BASIC]
    method = AUTH_BASIC if AUTH_BASIC in auth_methods else AUTH_POST
    if method not in auth_methods:
        raise ProviderUnavailable("the provider accepts no client secret at its token endpoint")
    end_session = (
        _endpoint(document, "end_session_endpoint", secure)
        if "end_session_endpoint" in document
        else None
    )
    return Discovery(
        issuer=issuer,
        authorization_endpoint=_endpoint(document, "authorization_endpoint", secure),
        token_endpoint=_endpoint(document, "token_endpoint", secure),
        jwks_uri=_endpoint(document, "jwks_uri", secure),
        end_session_endpoint=end_session,
        token_auth_method=method,
    )


async def read_json(answer: aiohttp.ClientResponse) -> object:
    """Read at most MAX_PROVIDER_BYTES of a provider's answer as JSON."""
    body = await answer.content.read(MAX_PROVIDER_BYTES + 1)
    if len(body) > MAX_PROVIDER_BYTES:
        raise ProviderUnavailable(f"the provider's answer exceeds {MAX_PROVIDER_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProviderUnavailable("the provider's answer is not JSON") from error


def error_code(value: object) -> str:
    """Return a provider's OAuth error code fit to repeat (RFC 6749 section 5.2 characters)."""
    if isinstance(value, str) and _ERROR_CODE.fullmatch(value):
        return value
    return "unknown_error"


class OidcClient:
    """The relying party of one configured provider: one HTTP session, one cached discovery."""

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str | None,
        redirect_url: str,
        scopes: tuple[str, ...],
        timeout: float,
        verifier_for: Callable[[Discovery], IdTokenVerifier],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_url = redirect_url
        self.scopes = scopes
        self.timeout = timeout
        self._verifier_for = verifier_for
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._discovery: tuple[float, Discovery, IdTokenVerifier] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OidcClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            self._session = aiohttp.ClientSession(timeout=timeout, trust_env=False)
        return self._session

    async def _call(self, make: Callable[[], Awaitable[object]], what: str) -> object:
        try:
            return await make()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            log.warning(
                "OpenID provider %s: %s failed: %s", self.issuer, what, type(error).__name__
            )
            raise ProviderUnavailable(f"{what} failed: {type(error).__name__}") from error

    async def discovery(self, *, fresh: bool = False) -> tuple[Discovery, IdTokenVerifier]:
        """Return the provider's discovery document (cached DISCOVERY_TTL) and its verifier.

        `fresh` fetches it again (a sign-in's start: a provider that is down is told on the
        page rather than by the browser's error page); the verifier is kept when its JWKS
        URL is unchanged (its keys stay cached).
        """
        async with self._lock:
            cached = self._discovery
            if not fresh and cached is not None and self._clock() < cached[0]:
                return cached[1], cached[2]

            async def fetch() -> object:
                url = self.issuer.rstrip("/") + DISCOVERY_PATH
                async with self._http().get(url, allow_redirects=False) as answer:
                    if answer.status != 200:
                        raise ProviderUnavailable(f"discovery answered {answer.status}")
                    return await read_json(answer)

            found = parse_discovery(await self._call(fetch, "discovery"), self.issuer)
            if cached is not None and cached[1].jwks_uri == found.jwks_uri:
                verifier = cached[2]
            else:
                verifier = self._verifier_for(found)
            self._discovery = (self._clock() + DISCOVERY_TTL, found, verifier)
            return found, verifier

    def authorization_url(self, discovery: Discovery, flow: Flow) -> str:
        """Return where to send the browser: the code flow with state, nonce and S256 PKCE."""
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_url,
            "scope": " ".join(self.scopes),
            "state": flow.state,
            "nonce": flow.nonce,
            "code_challenge": code_challenge(flow.verifier),
            "code_challenge_method": "S256",
        }
        endpoint = discovery.authorization_endpoint
        joiner = "&" if "?" in endpoint else "?"
        return endpoint + joiner + urlencode(query)

    async def _token_request(self, discovery: Discovery, form: dict[str, str]) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if self._client_secret is None:  # a public client: PKCE alone (RFC 7636)
            form = {**form, "client_id": self.client_id}
        elif discovery.token_auth_method == AUTH_BASIC:
            # RFC 6749 section 2.3.1: both are form-urlencoded before the Basic encoding.
            headers["Authorization"] = aiohttp.encode_basic_auth(
                quote_plus(self.client_id), quote_plus(self._client_secret)
            )
        else:
            form = {**form, "client_id": self.client_id, "client_secret": self._client_secret}

        async def post() -> object:
            async with self._http().post(
                discovery.token_endpoint, data=form, headers=headers, allow_redirects=False
            ) as answer:
                body = await read_json(answer)
                if answer.status == 200:
                    return body
                if answer.status in (400, 401) and isinstance(body, Mapping):
                    raise ProviderRefused(error_code(body.get("error")))
                raise ProviderUnavailable(f"the token endpoint answered {answer.status}")

        answer = await self._call(post, "the token request")
        if not isinstance(answer, dict):
            raise ProviderUnavailable("the token endpoint's answer is not a JSON object")
        return answer

    async def _tokens(
        self, answer: Mapping[str, Any], verifier: IdTokenVerifier, nonce: str | None
    ) -> Tokens:
        id_token = answer.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise ProviderUnavailable("the token endpoint sent no ID token")
        claims = await verifier.verify(id_token)
        check_id_claims(claims, self.client_id, nonce)
        refresh = answer.get("refresh_token")
        exp = claims.get("exp")
        return Tokens(
            claims=claims,
            id_token=id_token,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            expires_at=float(exp) if isinstance(exp, int | float) else None,
        )

    async def exchange(self, code: str, flow: Flow) -> Tokens:
        """Trade an authorization code (with the flow's PKCE verifier) for verified tokens."""
        discovery, verifier = await self.discovery()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_url,
            "code_verifier": flow.verifier,
        }
        return await self._tokens(await self._token_request(discovery, form), verifier, flow.nonce)

    async def refresh(self, refresh_token: str) -> Tokens:
        """Use a refresh token for a fresh ID token (grants re-read); keep the old one if none."""
        discovery, verifier = await self.discovery()
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        tokens = await self._tokens(await self._token_request(discovery, form), verifier, None)
        if tokens.refresh_token is None:  # not rotated: the old one stays valid
            return Tokens(tokens.claims, tokens.id_token, refresh_token, tokens.expires_at)
        return tokens

    def end_session_url(self, discovery: Discovery, after: str) -> str | None:
        """Return the provider's RP-initiated logout URL, or None when it offers none.

        It names the client and where to come back (no ID token in the URL).
        """
        if discovery.end_session_endpoint is None:
            return None
        query = urlencode({"client_id": self.client_id, "post_logout_redirect_uri": after})
        endpoint = discovery.end_session_endpoint
        return endpoint + ("&" if "?" in endpoint else "?") + query


def check_id_claims(claims: Mapping[str, Any], client_id: str, nonce: str | None) -> None:
    """Refuse a verified ID token that is not this sign-in's (OpenID Connect Core 3.1.3.7).

    The nonce must be the flow's; with several audiences `azp` must be us; `sub` is required.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise IdTokenRefused("the ID token has no subject")
    if nonce is not None and claims.get("nonce") != nonce:
        raise IdTokenRefused("the ID token's nonce is not this sign-in's")
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise IdTokenRefused("the ID token was issued to another client (azp)")
