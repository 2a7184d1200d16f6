"""Behind a sign-in proxy: an identity from a verified JWT in a configured header.

Only from the listed proxy addresses (the connection's peer, never a forwarded-for header),
and only with a JWT that verifies (oauth2-proxy's `X-Auth-Request-Access-Token`, say): a bare
user-name header such as `X-Auth-Request-User` or `X-Forwarded-User` never signs anyone in.
"""

from __future__ import annotations

import ipaddress

from gateway.admin.backend_sign_in import TokenSource
from gateway.admin.identity import GrantMapping, Identity, TokenInvalid, TokenVerifier
from gateway.settings.models import TrustedHeaderSignIn


class UntrustedPeer(Exception):
    """The identity header came from an address not listed as a sign-in proxy."""


class TrustedHeader(TokenSource):
    """Reads and verifies the sign-in proxy's token header of a request."""

    def __init__(self, settings: TrustedHeaderSignIn, mapping: GrantMapping) -> None:
        super().__init__(
            "header", TokenVerifier.from_settings(settings), mapping, name_claim=settings.name_claim
        )
        self.header = settings.header
        self.networks = settings.networks()

    def is_trusted(self, peer: str | None) -> bool:
        """Return True when the connection's peer address is a listed sign-in proxy."""
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    async def from_request(self, peer: str | None, values: list[str]) -> Identity:
        """Return the identity in the header's values (one, from a trusted peer), or raise
        UntrustedPeer, TokenInvalid or IdentityRefused."""
        if not self.is_trusted(peer):
            raise UntrustedPeer()
        if len(values) != 1:
            raise TokenInvalid(f"the {self.header} header must be given once")
        token = values[0].strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        return await self.identity(token)
