"""Who an admin is and what they may grant: identities, the grant mapping, token verification.

An `Identity` is the signed-in admin whatever way they came in (a local account, an OpenID
provider, the backend's accounts, a sign-in proxy). Grants of the non-local ways come from
the token's claims through one `GrantMapping` (which claim holds groups, which groups may
sign in, which policy roles each group may grant), re-read from the token on every request.

`TokenVerifier` checks a JWT with PyJWT against a configured PEM public key or a JWKS URL
(fetched with aiohttp, bounded in time and size, cached): issuer, audience, an allow-list
of asymmetric algorithms (never `none`, never HS*), exp/nbf/iat with a small leeway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
import jwt
from jwt.algorithms import has_crypto

from gateway.settings.models import GrantsMapping, TokenCheck
from gateway.store.base import AdminAccount

Source = Literal["local", "oidc", "backend", "header"]
SOURCES: tuple[Source, ...] = ("local", "oidc", "backend", "header")
GRANT_ALL = "*"  # a group granted this may grant every role

MAX_TOKEN_CHARS = 16_384  # characters of one JWT we look at (bigger ones are refused unread)
MAX_JWKS_BYTES = 256 * 1024  # bytes of a JWKS document
MAX_JWKS_KEYS = 64  # keys in one JWKS document
JWKS_TTL = 300.0  # seconds a fetched JWKS is used before it is fetched again
# Seconds between fetches forced by an unknown `kid`: a flood of made-up kids costs the
# signer at most one fetch per this.
JWKS_REFETCH_MIN = 10.0
MAX_SUBJECT_CHARS = 255  # characters of a subject or name used as an audit actor
MAX_DISPLAY_NAME_CHARS = 128  # characters of a display name kept (longer ones are cut)
MAX_GROUPS = 256  # groups read from one token (more: refused)
MAX_GROUP_CHARS = 256  # characters of one group name

M_TOKEN_MALFORMED = "the token is not a well-formed JWT"
M_TOKEN_TOO_LONG = f"the token is longer than {MAX_TOKEN_CHARS} characters"
M_ALGORITHM = "the token's signature algorithm is not allowed"
M_UNKNOWN_KID = "the token was signed with a key the signer does not publish"
M_SIGNER_DOWN = "the token signer's keys (JWKS) could not be fetched"
M_NO_SUBJECT = "the token names no subject"
M_BAD_SUBJECT = "the token's subject is not usable as a name (control characters or too long)"
M_NOT_ALLOWED = "none of your groups may sign in to keygate"
M_TOO_MANY_GROUPS = f"the token lists more than {MAX_GROUPS} groups"


class TokenInvalid(Exception):
    """A token that does not verify; `reason` is safe to show (it never holds the token)."""

    def __init__(self, reason: str, *, unavailable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # True when the signer could not be reached (not the token's fault: a 503).
        self.unavailable = unavailable


class IdentityRefused(Exception):
    """A verified token whose identity may not sign in; `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """The signed-in admin: where they came from, who they are, what they may grant."""

    source: Source
    subject: str  # the local name, the provider's `sub`, the backend's user name
    display_name: str
    groups: tuple[str, ...] = ()
    grants: frozenset[str] = frozenset()  # policy roles this admin may grant
    expires_at: float | None = None  # when the token behind it stops verifying
    grant_all: bool = False  # may grant every role ("*" in the mapping, or a local flag)

    @property
    def actor(self) -> str:
        """The audit actor (see `actor_of`)."""
        return actor_of(self)


def actor_of(identity: Identity) -> str:
    """Return the audit actor of an identity: `local:<name>`, `oidc:<subject>`, ..."""
    return f"{identity.source}:{identity.subject}"


def grant_set_of(identity: Identity) -> frozenset[str] | None:
    """Return the roles an identity may grant, or None when it may grant every role."""
    return None if identity.grant_all else identity.grants


def local_identity(account: AdminAccount) -> Identity:
    """Return the identity of a local admin account (its stored grants)."""
    return Identity(
        source="local",
        subject=account.name,
        display_name=account.name,
        grants=frozenset(account.grants),
        grant_all=account.grant_all,
    )


@dataclass(frozen=True, slots=True)
class GrantMapping:
    """Which claim holds the groups, which groups may sign in, which roles each may grant."""

    claim: str = "groups"
    allowed_groups: frozenset[str] = frozenset()
    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: GrantsMapping) -> GrantMapping:
        """Build the mapping from `admin.sign_in.grants`."""
        return cls(
            claim=settings.claim,
            allowed_groups=frozenset(settings.allowed_groups),
            roles={group: frozenset(roles) for group, roles in settings.roles.items()},
        )


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """Return the claim at a dotted path (`realm_access.roles`), or None when absent.

    A claim whose own name holds the dots (`https://example.com/groups`) is found first.
    """
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def groups_of(claims: Mapping[str, Any], claim: str) -> tuple[str, ...]:
    """Return the groups a token lists under `claim` (a list, or one string), bounded."""
    value = claim_at(claims, claim)
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        return ()
    if len(items) > MAX_GROUPS:
        raise IdentityRefused(M_TOO_MANY_GROUPS)
    groups = [g for g in items if isinstance(g, str) and 0 < len(g) <= MAX_GROUP_CHARS]
    return tuple(dict.fromkeys(groups))


def _usable_name(value: Any) -> str | None:
    """Return a claim as a name safe for the audit log and logs, or None."""
    if not isinstance(value, str) or not value or len(value) > MAX_SUBJECT_CHARS:
        return None
    if any(not c.isprintable() or (c.isspace() and c != " ") for c in value):
        return None
    return value


def identity_from_claims(
    source: Source,
    claims: Mapping[str, Any],
    mapping: GrantMapping,
    *,
    name_claim: str = "sub",
    display_claim: str = "name",
    extra_groups: tuple[str, ...] = (),
) -> Identity:
    """Return the identity of verified claims, or raise IdentityRefused.

    The subject comes from `name_claim` (the audit actor's name), the display name from
    `display_claim` (then `preferred_username`, then the subject), grants from the groups
    (the claim's, then `extra_groups`: a workload's `client:<id>`).
    """
    raw = claim_at(claims, name_claim)
    if raw is None or raw == "":
        raise IdentityRefused(M_NO_SUBJECT)
    subject = _usable_name(raw)
    if subject is None:
        raise IdentityRefused(M_BAD_SUBJECT)
    groups = tuple(dict.fromkeys((*groups_of(claims, mapping.claim), *extra_groups)))
    if not mapping.allowed_groups.intersection(groups):
        raise IdentityRefused(M_NOT_ALLOWED)
    grants: set[str] = set()
    for group in groups:
        grants |= mapping.roles.get(group, frozenset())
    display = _display_name(claims, display_claim) or subject
    exp = claims.get("exp")
    return Identity(
        source=source,
        subject=subject,
        display_name=display,
        groups=groups,
        grants=frozenset(grants - {GRANT_ALL}),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
        grant_all=GRANT_ALL in grants,
    )


def _display_name(claims: Mapping[str, Any], display_claim: str) -> str | None:
    for path in (display_claim, "preferred_username"):
        value = claim_at(claims, path)
        if isinstance(value, str) and value.strip():
            cleaned = "".join(c for c in value if c.isprintable()).strip()
            if cleaned:
                return cleaned[:MAX_DISPLAY_NAME_CHARS]
    return None


class IdentitySource(Protocol):
    """A way in other than a local account: re-checks a session, verifies a bearer token."""

    source: Source

    async def bearer(self, token: str) -> Identity:
        """Return the identity of a script's bearer token, or raise TokenInvalid/Refused."""
        ...

    async def renew(self, credentials: Mapping[str, str]) -> tuple[Identity, dict[str, str] | None]:
        """Re-check a session's stored credentials (on each request); return its identity now
        and, when they were refreshed, the credentials to store instead. Raises TokenInvalid
        or IdentityRefused when the admin must be signed out."""
        ...


Fetch = Callable[[str, float], Awaitable[bytes]]


async def fetch_bounded(url: str, timeout: float) -> bytes:
    """GET `url` within `timeout` seconds; the body at most MAX_JWKS_BYTES, else an error."""
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        session.get(url, allow_redirects=False) as response,
    ):
        if response.status != 200:
            raise OSError(f"answered {response.status}")
        body = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise OSError(f"more than {MAX_JWKS_BYTES} bytes")
        return body


class TokenVerifier:
    """Verifies JWTs of one signer (a PEM public key or a JWKS URL) with PyJWT."""

    def __init__(
        self,
        *,
        issuer: str | None,
        audience: str | None,
        algorithms: tuple[str, ...],
        public_key: str | None = None,
        jwks_url: str | None = None,
        timeout: float = 5.0,
        leeway: float = 30.0,
        fetch: Fetch = fetch_bounded,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (public_key is None) == (jwks_url is None):
            raise ValueError("a token verifier needs exactly one of public_key and jwks_url")
        if not has_crypto:
            raise RuntimeError("PyJWT's cryptography support is not installed")
        bad = [a for a in algorithms if a.lower() == "none" or a.upper().startswith("HS")]
        if bad or not algorithms:
            raise ValueError(f"algorithms must be asymmetric ones, not {bad}")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(algorithms)
        self.jwks_url = jwks_url
        self.timeout = timeout
        self.leeway = leeway
        self._fetch = fetch
        self._clock = clock
        # A PEM key is used raw: the token's (allow-listed) alg picks the algorithm and
        # PyJWT refuses a key of another type for it.
        self._static: Any = _pem_key(public_key) if public_key is not None else None
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, check: TokenCheck) -> TokenVerifier:
        """Build a verifier from a token check's settings (reads the PEM file once)."""
        public_key = None
        if check.public_key_file is not None:
            public_key = Path(check.public_key_file).read_text(encoding="utf-8")
        return cls(
            issuer=check.issuer,
            audience=check.audience,
            algorithms=tuple(check.algorithms),
            public_key=public_key,
            jwks_url=check.jwks_url,
            timeout=check.timeout,
            leeway=check.leeway,
        )

    async def verify(self, token: str) -> dict[str, Any]:
        """Return a token's verified claims, or raise TokenInvalid saying why (never the token)."""
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenInvalid(M_TOKEN_TOO_LONG)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid(M_TOKEN_MALFORMED) from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise TokenInvalid(M_ALGORITHM)
        key = await self._key_for(header.get("kid"))
        required = ["exp"]
        if self.issuer is not None:
            required.append("iss")
        if self.audience is not None:
            required.append("aud")
        options: jwt.types.Options = {
            "require": required,
            "verify_aud": self.audience is not None,
        }
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("the token has expired") from None
        except jwt.InvalidIssuerError:
            raise TokenInvalid("the token comes from another issuer") from None
        except jwt.InvalidAudienceError:
            raise TokenInvalid("the token is meant for another audience") from None
        except jwt.ImmatureSignatureError:
            raise TokenInvalid("the token is not valid yet") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenInvalid(f"the token lacks the {error.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenInvalid("the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise TokenInvalid("the token does not verify") from None
        return claims

    async def _key_for(self, kid: Any) -> Any:
        """Return the key a token names: the PEM key, or the JWKS key with its `kid`."""
        if self._static is not None:
            return self._static
        if kid is not None and not isinstance(kid, str):
            raise TokenInvalid(M_UNKNOWN_KID)
        async with self._lock:
            now = self._clock()
            stale = self._fetched_at is None or now - self._fetched_at >= JWKS_TTL
            missing = _pick(self._keys, kid) is None
            may_refetch = self._fetched_at is None or now - self._fetched_at >= JWKS_REFETCH_MIN
            if stale or (missing and may_refetch):
                await self._refresh()
        key = _pick(self._keys, kid)
        if key is None:
            raise TokenInvalid(M_UNKNOWN_KID)
        return key

    async def _refresh(self) -> None:
        """Fetch the JWKS (bounded); keep the old keys when the fetch fails."""
        assert self.jwks_url is not None
        try:
            body = await self._fetch(self.jwks_url, self.timeout)
            keys = _parse_jwks(body)
        except (OSError, TimeoutError, aiohttp.ClientError, ValueError) as error:
            if not self._keys:
                raise TokenInvalid(f"{M_SIGNER_DOWN} ({error})", unavailable=True) from None
            return
        self._keys = keys
        self._fetched_at = self._clock()


def _pick(keys: Mapping[str, Any], kid: str | None) -> Any:
    """Return the key with this kid, or the only key when the token names none."""
    if kid is None:
        return next(iter(keys.values())) if len(keys) == 1 else None
    return keys.get(kid)


def _parse_jwks(body: bytes) -> dict[str, Any]:
    """Return the signing keys of a JWKS document by kid (keys without one: by position).

    A key that names its `alg` is bound to it (a PyJWK); one that does not is used raw, so
    the token's allow-listed alg picks the algorithm and PyJWT checks the key's type.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the JWKS is not JSON") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no keys list")
    keys: dict[str, Any] = {}
    for index, entry in enumerate(entries[:MAX_JWKS_KEYS]):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue  # a symmetric key is never a signer's public key
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) else f"#{index}"] = key if "alg" in entry else key.key
    if not keys:
        raise ValueError("the JWKS has no usable signing keys")
    return keys


def _pem_key(pem: str) -> Any:
    """Return a PEM public key (RSA, EC or Ed25519) as a cryptography key, or raise ValueError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        loaded = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as error:
        raise ValueError(f"not a PEM public key: {error}") from None
    if not isinstance(
        loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
    ):
        raise ValueError("the public key is not RSA, EC or Ed25519")
    return loaded
