"""The OpenID provider as a way in: its ID tokens give identities, its refresh tokens renew them.

`OidcSignIn` is the `oidc` identity source: a session keeps the ID token and the refresh
token (sealed by the session manager); each request re-verifies the ID token (PyJWT
against the provider's JWKS, through the shared `TokenVerifier`), and one that has
expired, or is older than `REGRANT_INTERVAL`, is refreshed at the provider, so groups
removed there take effect. A refresh the provider refuses ends the session. A script may
present an ID token of this client as a bearer token, or, with `access_token_audience` set,
the provider's JWT access token for that audience (RFC 9068); a client-credentials token
(whose `sub` is its own `client_id`: no user) is in the group `client:<client_id>`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import jwt

from gateway.admin.identity import (
    MAX_TOKEN_CHARS,
    GrantMapping,
    Identity,
    Source,
    TokenInvalid,
    TokenVerifier,
    identity_from_claims,
)
from gateway.admin.oidc import (
    Discovery,
    IdTokenRefused,
    OidcClient,
    ProviderRefused,
    ProviderUnavailable,
    Tokens,
    check_id_claims,
)
from gateway.admin.oidc_flow import UsedStates, flow_key
from gateway.settings.models import OidcSignIn as OidcSettings

log = logging.getLogger("keygate.admin.oidc")

# Seconds after which a session's grants are re-read at the provider (a refresh) even
# while its ID token still verifies: how long a group removed there may still count.
REGRANT_INTERVAL = 300.0
M_PROVIDER_DOWN = "the identity provider cannot be reached ({cause})"
M_REFRESH_REFUSED = "the identity provider no longer accepts this sign-in ({code}); sign in again"
M_NOT_THIS_SIGN_IN = "the ID token is not for this client ({cause})"
# The group a client-credentials access token is in (no user: its grants are the client's).
WORKLOAD_GROUP_PREFIX = "client:"
ID_TOKEN = "id_token"
REFRESH_TOKEN = "refresh_token"


def page_url(redirect_url: str) -> str:
    """Return the page's address (the root of the callback's origin), for logout returns."""
    parts = urlsplit(redirect_url)
    return f"{parts.scheme}://{parts.netloc}/"


class OidcSignIn:
    """The configured OpenID provider: the relying party, the flow key, identities, renewal."""

    source: Source = "oidc"

    def __init__(
        self,
        settings: OidcSettings,
        mapping: GrantMapping,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.mapping = mapping
        self.name = settings.name
        self.clock = clock
        self.client = OidcClient(
            issuer=settings.issuer,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            redirect_url=settings.redirect_url,
            scopes=tuple(settings.scopes),
            timeout=settings.timeout,
            verifier_for=self._verifier,
            clock=clock,
        )
        self.flow_key = flow_key(settings.client_secret)
        self.used_states = UsedStates(clock=clock)
        self.page_url = page_url(settings.redirect_url)
        self._access_verifier: TokenVerifier | None = None

    def _verifier(self, discovery: Discovery) -> TokenVerifier:
        return TokenVerifier(
            issuer=discovery.issuer,
            audience=self.settings.client_id,
            algorithms=tuple(self.settings.algorithms),
            jwks_url=discovery.jwks_uri,
            timeout=self.settings.timeout,
            leeway=self.settings.leeway,
        )

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        """Return the identity of verified ID-token claims (or raise IdentityRefused)."""
        return identity_from_claims(
            "oidc", claims, self.mapping, name_claim="sub", display_claim=self.settings.name_claim
        )

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            _, verifier = await self.client.discovery()
        except ProviderUnavailable as error:
            raise TokenInvalid(M_PROVIDER_DOWN.format(cause=error), unavailable=True) from None
        claims = await verifier.verify(token)
        try:
            check_id_claims(claims, self.settings.client_id, None)
        except IdTokenRefused as error:
            raise TokenInvalid(M_NOT_THIS_SIGN_IN.format(cause=error)) from None
        return claims

    async def bearer(self, token: str) -> Identity:
        """Return the identity of a script's bearer token: an ID token of this client, or
        a JWT access token for `access_token_audience` when that is set."""
        audience = self.settings.access_token_audience
        if audience is not None and names_audience(token, audience):
            return self.access_identity(await self._verify_access(token))
        return self.identity(await self._verify(token))

    def access_identity(self, claims: Mapping[str, Any]) -> Identity:
        """Return the identity of verified access-token claims (or raise IdentityRefused).

        A token whose `sub` is its `client_id` was issued to the client itself (client
        credentials, RFC 9068 section 2.2): it is in the group `client:<client_id>`.
        """
        client = claims.get("client_id")
        workload = isinstance(client, str) and client != "" and claims.get("sub") == client
        extra = (WORKLOAD_GROUP_PREFIX + str(client),) if workload else ()
        return identity_from_claims(
            "oidc",
            claims,
            self.mapping,
            name_claim="sub",
            display_claim=self.settings.name_claim,
            extra_groups=extra,
        )

    async def _verify_access(self, token: str) -> dict[str, Any]:
        try:
            discovery, _ = await self.client.discovery()
        except ProviderUnavailable as error:
            raise TokenInvalid(M_PROVIDER_DOWN.format(cause=error), unavailable=True) from None
        verifier = self._access_verifier
        if verifier is None or verifier.jwks_url != discovery.jwks_uri:
            verifier = TokenVerifier(
                issuer=discovery.issuer,
                audience=self.settings.access_token_audience,
                algorithms=tuple(self.settings.algorithms),
                jwks_url=discovery.jwks_uri,
                timeout=self.settings.timeout,
                leeway=self.settings.leeway,
            )
            self._access_verifier = verifier
        return await verifier.verify(token)

    async def renew(self, credentials: Mapping[str, str]) -> tuple[Identity, dict[str, str] | None]:
        """Re-check a session: its ID token while fresh, else a refresh at the provider."""
        refresh_token = credentials.get(REFRESH_TOKEN) or None
        try:
            claims = await self._verify(credentials.get(ID_TOKEN, ""))
        except TokenInvalid as error:
            if error.unavailable or refresh_token is None:
                raise
            return await self._refreshed(refresh_token)
        issued = claims.get("iat")
        stale = isinstance(issued, int | float) and self.clock() - issued >= REGRANT_INTERVAL
        if stale and refresh_token is not None:
            return await self._refreshed(refresh_token)
        return self.identity(claims), None

    async def _refreshed(self, refresh_token: str) -> tuple[Identity, dict[str, str]]:
        try:
            tokens = await self.client.refresh(refresh_token)
        except ProviderRefused as error:
            raise TokenInvalid(M_REFRESH_REFUSED.format(code=error.code)) from None
        except ProviderUnavailable as error:
            raise TokenInvalid(M_PROVIDER_DOWN.format(cause=error), unavailable=True) from None
        except IdTokenRefused as error:
            raise TokenInvalid(M_NOT_THIS_SIGN_IN.format(cause=error)) from None
        return self.identity(tokens.claims), credentials_of(tokens)


def credentials_of(tokens: Tokens) -> dict[str, str]:
    """Return what a session keeps of a sign-in: the ID token and the refresh token, if any."""
    kept = {ID_TOKEN: tokens.id_token}
    if tokens.refresh_token is not None:
        kept[REFRESH_TOKEN] = tokens.refresh_token
    return kept


def names_audience(token: str, audience: str) -> bool:
    """Return True when a token's (unverified) `aud` names `audience`: which check it gets.

    Only routing: the token is then verified in full against that audience; one that cannot
    be read goes the ID-token way, which says why it is refused.
    """
    if len(token) > MAX_TOKEN_CHARS:
        return False
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    named = claims.get("aud")
    return named == audience or (isinstance(named, list) and audience in named)
