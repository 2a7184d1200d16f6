"""Finding an API key in a request's headers: one reading shared by both listeners (no aiohttp).

The proxy takes the key to authenticate; the admin listener refuses any request that carries
one. Both read `Authorization` the same way (scheme and value split on any whitespace), so a
key after `Bearer<TAB>` is a key to both.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway import keys
from gateway.refusals import CREDENTIAL_CONFLICT, KEY_MALFORMED, Refusal

API_KEY_HEADER = "X-API-Key"
AUTHORIZATION = "Authorization"
_API_KEY_FOLDED = "x-api-key"
_AUTHORIZATION_FOLDED = "authorization"


@dataclass(slots=True)  # not frozen: frozen dataclasses cost ~3x to build, once per request
class Credential:
    """Where the key came from: its value and whether it rode in Authorization."""

    key: str
    in_authorization: bool


def fold_header_name(name: str) -> str:
    """Fold a header name for comparison: lower case, `_` read as `-`."""
    return name.lower().replace("_", "-")


def split_authorization(value: str) -> tuple[str, str]:
    """Return (lower-cased scheme, stripped credentials) of an Authorization value.

    Split on any whitespace: a key after `Bearer<TAB>` must not pass for the backend's own
    credential.
    """
    parts = value.split(None, 1)
    scheme = parts[0].lower() if parts else ""
    return scheme, parts[1].strip() if len(parts) > 1 else ""


def _basic_text(token: str) -> str | None:
    """Return the decoded text of HTTP Basic credentials, or None when not decodable."""
    try:
        return base64.b64decode(token.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError):
        return None


def decode_basic(token: str) -> tuple[str, str] | None:
    """Return (name, password) of HTTP Basic credentials, or None when malformed."""
    decoded = _basic_text(token)
    if decoded is None:
        return None
    name, colon, password = decoded.partition(":")
    if not colon or not name:
        return None
    return name, password


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
        scheme, value = split_authorization(authorization_values[0])
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


def _looks_like_key(value: str) -> bool:
    return keys.looks_like_key(value.strip())


def carries_api_key(headers: Iterable[tuple[str, str]]) -> bool:
    """Return True when headers present an API key in any form keygate accepts (or near it).

    X-API-Key (any case, `_` for `-`, any value, even empty), `Authorization: ApiKey ...`,
    `Authorization: Bearer kg_...`, a bare `kg_...` credential, or Basic with a key inside.
    """
    for name, value in headers:
        folded = fold_header_name(name)
        if folded == _API_KEY_FOLDED:
            return True
        if folded != _AUTHORIZATION_FOLDED:
            continue
        scheme, token = split_authorization(value)
        raw_scheme = value.split(None, 1)[0] if value.strip() else ""
        if scheme == "apikey" or _looks_like_key(raw_scheme) or _looks_like_key(token):
            return True
        if scheme == "basic":
            decoded = _basic_text(token)
            if decoded is not None:
                name, _, password = decoded.partition(":")
                if _looks_like_key(name) or _looks_like_key(password):
                    return True
    return False
