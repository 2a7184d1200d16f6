"""The proxy's refusals of a key caller: status, error code and message of each (no aiohttp)."""

from __future__ import annotations

from dataclasses import dataclass

WWW_AUTHENTICATE_VALUE = 'ApiKey realm="keygate", header="X-API-Key"'
# An ambiguous request-target (gateway.proxy.target): 400, with the target check's own message.
E_BAD_TARGET = "bad_target"


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
KEY_MISPLACED = Refusal(
    400,
    "key_misplaced",
    "an API key goes only in X-API-Key: <key> or Authorization: Bearer <key>",
)
KEY_MISSING = Refusal(401, "key_missing", "an API key is required (X-API-Key header)", True)
KEY_MALFORMED = Refusal(401, "key_malformed", "the API key is malformed", True)
KEY_UNKNOWN = Refusal(401, "key_unknown", "the API key is not known", True)
KEY_REVOKED = Refusal(401, "key_revoked", "the API key has been revoked", True)
KEY_EXPIRED = Refusal(401, "key_expired", "the API key has expired", True)
KEY_ROLLED = Refusal(
    401, "key_rolled", "the API key was replaced by a new secret and its overlap has ended", True
)
PROTECTED = Refusal(403, "forbidden_protected", "API keys may not call key-management paths")
FORBIDDEN = Refusal(403, "forbidden", "the API key's roles do not allow this method and path")
OVERRIDE_FORBIDDEN = Refusal(
    403,
    "forbidden",
    "the API key's roles do not allow the method named by the method-override header or "
    "_method parameter",
)
BAD_OVERRIDE = Refusal(
    400, "bad_method_override", "a method-override header or _method parameter must name one method"
)
RATE_LIMITED = Refusal(429, "rate_limited", "the API key's rate limit is used up; retry later")
