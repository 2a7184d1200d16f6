"""Finding an API key in a request's headers: one reading shared by both listeners (no aiohttp).

The proxy takes the key to authenticate; the admin listener refuses any request that carries
one. Both read `Authorization` with one function (`authorization_key`), so whatever form the
proxy takes as a key the admin listener refuses, and whatever other form carries a key is
refused by both; a key secret is never forwarded as if it were the backend's own credential.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

from gateway.keys import keyformat as keys
from gateway.proxy.refusals import CREDENTIAL_CONFLICT, KEY_MALFORMED, KEY_MISPLACED, Refusal

API_KEY_HEADER = "X-API-Key"
AUTHORIZATION = "Authorization"
_API_KEY_FOLDED = "x-api-key"
_AUTHORIZATION_FOLDED = "authorization"
# A word starting with the key prefix anywhere in an Authorization value (or its Basic text):
# not a token glued to other token characters (`abc.kg_x` inside a JWT is no key).
_KEY_WORD = re.compile(r"(?<![A-Za-z0-9._~+/=-])" + re.escape(keys.KEY_PREFIX))
# A complete, checksum-valid key anywhere in another header's value: a working secret.
_KEY_TAIL_LENGTH = keys.KEY_LENGTH - len(keys.KEY_PREFIX)
_WHOLE_KEY = re.compile(
    rf"(?<![A-Za-z0-9_]){re.escape(keys.KEY_PREFIX)}[A-Za-z0-9]{{{_KEY_TAIL_LENGTH}}}(?![A-Za-z0-9])"
)


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


def _basic_text_lenient(token: str) -> str | None:
    """Decode Basic credentials the way lenient servers do (padding optional), or None."""
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.decode("utf-8", "replace")


def decode_basic(token: str) -> tuple[str, str] | None:
    """Return (name, password) of HTTP Basic credentials, or None when malformed."""
    decoded = _basic_text(token)
    if decoded is None:
        return None
    name, colon, password = decoded.partition(":")
    if not colon or not name:
        return None
    return name, password


def authorization_key(value: str) -> str | Refusal | None:
    """The one reading of an Authorization value, for both listeners.

    The key when the value is `Bearer <key>`, `ApiKey <anything>`, a bare key, or Basic
    credentials whose user or password is a key (the other half empty or not a key); a
    refusal when it carries a key in any other form (`Token <key>`, a key inside Basic text,
    two different keys); None when it is the backend's own credential.
    """
    parts = value.split(None, 1)
    if not parts:
        return None
    scheme = parts[0].lower()
    token = parts[1].strip() if len(parts) > 1 else ""
    if scheme == "apikey":
        return token
    if not token and keys.looks_like_key(parts[0]):
        return parts[0]  # a bare key
    if scheme == "bearer" and keys.looks_like_key(token):
        return token
    text = _basic_text_lenient(token) if scheme == "basic" else None
    if text is not None:
        name, colon, password = text.partition(":")
        found = {part for part in (name, password) if keys.looks_like_key(part)}
        if len(found) > 1:
            return CREDENTIAL_CONFLICT
        if colon and found:
            return found.pop()
        if _KEY_WORD.search(text):
            return KEY_MISPLACED
    if keys.KEY_PREFIX in value and _KEY_WORD.search(value):
        return KEY_MISPLACED
    return None


# Percent-decodings of a target tried for a key: raw, once and twice encoded (`kg%255F…`).
TARGET_DECODINGS = 2


def target_carries_key(raw_target: str) -> bool:
    """Return True when a request target holds a complete key, raw or percent-encoded."""
    if "kg" not in raw_target:  # nearly every target: one C substring search
        return False
    text = raw_target
    for _ in range(TARGET_DECODINGS + 1):
        if header_value_carries_key(text):
            return True
        if "%" not in text and "+" not in text:
            return False
        text = unquote_plus(text)
    return False


def header_value_carries_key(value: str) -> bool:
    """Return True when a header value holds a complete, checksum-valid key anywhere in it."""
    if keys.KEY_PREFIX not in value:  # nearly every value: one C substring search
        return False
    return any(keys.is_well_formed(found.group()) for found in _WHOLE_KEY.finditer(value))


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
        found = authorization_key(authorization_values[0])
        if isinstance(found, Refusal):
            return found
        if found is not None:
            if key is not None and found != key:
                return CREDENTIAL_CONFLICT
            key = found
            in_authorization = True
        elif key is not None:
            # A key plus the backend's own login: two identities in one request.
            return CREDENTIAL_CONFLICT
    if key is None:
        return None
    return Credential(key, in_authorization)


def carries_api_key(headers: Iterable[tuple[str, str]]) -> bool:
    """Return True when headers present an API key in any form keygate accepts or refuses.

    X-API-Key (any case, `_` for `-`, any value, even empty), an Authorization value that
    `authorization_key` takes as a key or refuses, or a working key in any other header.
    """
    for name, value in headers:
        folded = fold_header_name(name)
        if folded == _API_KEY_FOLDED:
            return True
        if folded == _AUTHORIZATION_FOLDED and authorization_key(value) is not None:
            return True
        if header_value_carries_key(value):
            return True
    return False
