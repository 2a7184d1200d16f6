"""Sign-in with the backend's own accounts, and identities carried by a verified token.

`TokenSource` is an identity source whose credentials are a JWT: a script's bearer token
and a session's stored token are verified the same way (signature, issuer, audience,
expiry) and mapped to grants on every use. `BackendSignIn` posts the name and password an
admin typed to the backend's token endpoint (1Integrate: `POST /1Integrate/rest/token`
with `{"username", "password"}`), bounded in time and answer size, and never keeps,
logs or repeats the password.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from gateway.admin.identity import (
    MAX_TOKEN_CHARS,
    GrantMapping,
    Identity,
    Source,
    TokenInvalid,
    TokenVerifier,
    identity_from_claims,
)
from gateway.settings.models import BackendSignIn as BackendSettings

log = logging.getLogger("keygate.admin.sign_in")

MAX_TOKEN_ANSWER_BYTES = 64 * 1024  # bytes of the token endpoint's answer read at most
TOKEN = "token"  # the credentials field holding a session's JWT


class BackendUnavailable(Exception):
    """The backend's token endpoint could not be asked or answered nonsense (a 503)."""


class BackendRefused(Exception):
    """The backend's token endpoint refused the name and password (a 401)."""


class TokenSource:
    """An identity source whose credentials are one JWT, re-verified on every use."""

    def __init__(
        self,
        source: Source,
        verifier: TokenVerifier,
        mapping: GrantMapping,
        *,
        name_claim: str = "sub",
    ) -> None:
        self.source: Source = source
        self.verifier = verifier
        self.mapping = mapping
        self.name_claim = name_claim

    async def identity(self, token: str) -> Identity:
        """Return the identity of a token, or raise TokenInvalid/IdentityRefused."""
        claims = await self.verifier.verify(token)
        return identity_from_claims(self.source, claims, self.mapping, name_claim=self.name_claim)

    async def bearer(self, token: str) -> Identity:
        """Return the identity of a script's bearer token (verified as at sign-in)."""
        return await self.identity(token)

    async def renew(self, credentials: Mapping[str, str]) -> tuple[Identity, dict[str, str] | None]:
        """Re-verify a session's stored token; its grants now (nothing to store anew)."""
        token = credentials.get(TOKEN)
        if token is None:
            raise TokenInvalid("the session holds no token")
        return await self.identity(token), None


class BackendSignIn(TokenSource):
    """Signs admins in with the backend's accounts through its token endpoint."""

    def __init__(self, settings: BackendSettings, mapping: GrantMapping) -> None:
        super().__init__(
            "backend",
            TokenVerifier.from_settings(settings),
            mapping,
            name_claim=settings.name_claim,
        )
        self.settings = settings

    async def token_for(self, name: str, password: str) -> str:
        """Return the backend's token for a name and password, or raise BackendRefused or
        BackendUnavailable (messages never carry the password or the answer's body)."""
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(
                    self.settings.token_url,
                    json={"username": name, "password": password},
                    headers={"Accept": "application/json, application/jwt, text/plain"},
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
                body = await response.content.read(MAX_TOKEN_ANSWER_BYTES + 1)
                content_type = response.content_type
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise BackendUnavailable(f"could not reach it ({type(error).__name__})") from None
        if status in (400, 401, 403):
            raise BackendRefused()
        if status != 200:
            raise BackendUnavailable(f"it answered {status}")
        if len(body) > MAX_TOKEN_ANSWER_BYTES:
            raise BackendUnavailable(f"its answer is over {MAX_TOKEN_ANSWER_BYTES} bytes")
        token = _token_in(body, content_type, self.settings.token_field)
        if token is None:
            raise BackendUnavailable("its answer holds no token")
        return token


def _token_in(body: bytes, content_type: str, field: str) -> str | None:
    """Return the JWT in a token endpoint's answer: JSON's `field`, or the whole text."""
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    token: Any = text
    if content_type == "application/json" or text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        token = data.get(field) if isinstance(data, dict) else None
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        return None
    if token.count(".") != 2:
        return None
    return token
