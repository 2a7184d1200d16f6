"""Authentication (which key is calling) and authorization (may it do this); no network I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway import keys
from gateway.cache import CachedKey, KeyTable
from gateway.policy import Policy

API_KEY_HEADER = "X-API-Key"
AUTHORIZATION = "Authorization"
_KEY_SCHEMES = frozenset({"bearer", "apikey"})
WWW_AUTHENTICATE_VALUE = 'ApiKey realm="keygate", header="X-API-Key"'


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refusal: HTTP status, error code and message, rendered as a JSON body."""

    status: int
    code: str
    message: str
    challenge: bool = False  # send WWW-Authenticate


CREDENTIAL_CONFLICT = Refusal(
    400, "credential_conflict", "send one credential: an API key or the backend's own login"
)
KEY_MISSING = Refusal(401, "key_missing", "an API key is required (X-API-Key header)", True)
KEY_MALFORMED = Refusal(401, "key_malformed", "the API key is malformed", True)
KEY_UNKNOWN = Refusal(401, "key_unknown", "the API key is not known", True)
KEY_REVOKED = Refusal(401, "key_revoked", "the API key has been revoked", True)
KEY_EXPIRED = Refusal(401, "key_expired", "the API key has expired", True)
PROTECTED = Refusal(403, "forbidden_protected", "API keys may not call key-management paths")
FORBIDDEN = Refusal(403, "forbidden", "the API key's roles do not allow this method and path")


@dataclass(slots=True)  # not frozen: frozen dataclasses cost ~3x to build, once per request
class Credential:
    """Where the key came from: its value and whether it rode in Authorization."""

    key: str
    in_authorization: bool


def extract_credential(
    api_key_values: Sequence[str], authorization_values: Sequence[str]
) -> Credential | Refusal | None:
    """Find the API key in X-API-Key or Authorization; refuse conflicting credentials.

    Returns None when the request carries no key (anonymous, or the backend's own login).
    """
    if len(api_key_values) == 1 and not authorization_values:  # the common case, fast
        only = api_key_values[0].strip()
        return Credential(only, False) if only else KEY_MALFORMED
    key: str | None = None
    for value in api_key_values:
        value = value.strip()
        if key is not None and value != key:
            return CREDENTIAL_CONFLICT
        key = value
    if key == "":
        return KEY_MALFORMED
    in_authorization = False
    if len(authorization_values) > 1:
        return CREDENTIAL_CONFLICT
    if authorization_values:
        # Split on any whitespace: a key after `Bearer<TAB>` must not slip through to the
        # backend as if it were the backend's own credential.
        parts = authorization_values[0].split(None, 1)
        scheme = parts[0].lower() if parts else ""
        value = parts[1].strip() if len(parts) > 1 else ""
        if scheme == "apikey" or (scheme == "bearer" and keys.looks_like_key(value)):
            if key is not None and value != key:
                return CREDENTIAL_CONFLICT
            key = value
            in_authorization = True
        elif key is not None:
            # A key plus the backend's own login: two identities in one request.
            return CREDENTIAL_CONFLICT
    if key is None:
        return None
    return Credential(key, in_authorization)


# Well-formed keys seen lately -> their digest, so a client's steady key skips the checksum
# and SHA-256 (the biggest part of a keyed request's extra cost). Only the digest is cached,
# never a decision: the table is still consulted on every request. The plaintext keys live
# only in this process's memory, like the request headers they came from; bounded, and
# cleared whole when full, so hostile key variety only costs the uncached path.
RECENT_DIGESTS_LIMIT = 4096
_recent_digests: dict[str, bytes] = {}


def authenticate(table: KeyTable, key: str, now: float) -> CachedKey | Refusal:
    """Check shape and checksum, then look the digest up; refuse unknown, revoked, expired."""
    digest = _recent_digests.get(key)
    if digest is None:
        digest = keys.digest_if_well_formed(key)
        if digest is None:
            return KEY_MALFORMED
        if len(_recent_digests) >= RECENT_DIGESTS_LIMIT:
            _recent_digests.clear()
        _recent_digests[key] = digest
    record = table.lookup(digest)  # every request: revocation is never cached
    if record is None:
        return KEY_UNKNOWN
    if record.revoked:
        return KEY_REVOKED
    if record.expires_at is not None and record.expires_at <= now:
        return KEY_EXPIRED
    return record


def authorize(policy: Policy, record: CachedKey, method: str, path: str) -> Refusal | None:
    """Return None when the key may call METHOD PATH, else the 403 refusal to send."""
    if policy.is_protected_path(path):
        return PROTECTED
    if not policy.matcher_for(record.roles).allows(method, path):
        return FORBIDDEN
    return None
