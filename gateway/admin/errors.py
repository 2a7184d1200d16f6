"""Admin API error codes, JSON error responses and the middleware that renders every error."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.keys import rules as key_rules
from gateway.proxy import error_answers
from gateway.store.base import (
    KeyExpiredError,
    NameConflictError,
    NotFoundError,
    OutsideGrantsError,
    StoreUnavailableError,
)

log = logging.getLogger("keygate.admin")

# Error codes (the "error" member of every error body).
E_API_KEY_FORBIDDEN = "api_key_forbidden"
E_UNAUTHORIZED = "unauthorized"
E_TOO_MANY_ATTEMPTS = "too_many_attempts"
E_GRANT_FORBIDDEN = key_rules.E_GRANT_FORBIDDEN
E_CSRF = "csrf"
E_SESSION_ENDED = "session_ended"
E_SIGN_IN_UNAVAILABLE = "sign_in_unavailable"  # the identity provider or backend is down
E_SIGN_IN_REFUSED = "sign_in_refused"  # a verified identity that may not sign in
E_SIGN_IN_METHOD_DISABLED = "sign_in_method_disabled"  # a way in the config does not list
E_TOKEN_INVALID = "token_invalid"  # a bearer or proxy token that does not verify
E_UNTRUSTED_PROXY = "untrusted_proxy"  # an identity header from an address not listed
E_KEY_EXPIRED = "key_expired"
E_NAME_CONFLICT = "name_conflict"
E_IDEMPOTENT_REPLAY = "idempotent_replay"
E_IDEMPOTENCY_REUSED = "idempotency_key_reused"
E_NOT_FOUND = "not_found"
E_OUT_OF_RANGE = "out_of_range"  # a well-formed value outside its bounds (a usage window)
E_INVALID = key_rules.E_INVALID
E_UNKNOWN_ROLE = key_rules.E_UNKNOWN_ROLE
E_UNKNOWN_FIELD = "unknown_field"
# The HTTP parser's refusal (e.g. a request line over 8190 bytes: a long query of
# four-byte characters), answered as JSON by the listener before any handler runs.
E_MALFORMED_REQUEST = error_answers.E_BAD_REQUEST
E_MALFORMED_JSON = "malformed_json"
E_UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
E_BODY_TOO_LARGE = "body_too_large"
E_METHOD_NOT_ALLOWED = "method_not_allowed"
E_NOT_READY = "not_ready"
E_STORE_UNAVAILABLE = "store_unavailable"
E_INTERNAL = "internal_error"
E_HTTP = "http_error"

# Messages.
M_API_KEY_FORBIDDEN = "API keys cannot use the admin API; authenticate as an administrator"
M_NOT_FOUND = "no such resource"
M_KEY_NOT_FOUND = "no key with that id"
M_NAME_CONFLICT = "a key with that name already exists"
M_METHOD_NOT_ALLOWED = "method not allowed on this resource"
M_BODY_TOO_LARGE = "request body is too large"
M_INTERNAL = "internal error"
M_STORE_UNAVAILABLE = "the key store is unavailable: {cause}; nothing was changed, retry later"
M_STORE_OUTCOME_UNKNOWN = (
    "the key store connection was lost while the change was being committed: {cause}; "
    "it may have been made: check before retrying (a create retried with the same "
    "Idempotency-Key header is safe)"
)
M_CSRF_CONTENT_TYPE = (
    "state-changing requests must be sent with Content-Type: application/json (body or not)"
)
M_CSRF_ORIGIN = "cross-site request refused: Origin / Sec-Fetch-Site is not this listener's own"
M_CSRF_TOKEN = "state-changing requests of a signed-in session need its X-CSRF-Token header"

# Status codes of aiohttp's own HTTP errors mapped to our error codes.
_CODES_BY_STATUS = {
    400: E_INVALID,
    404: E_NOT_FOUND,
    405: E_METHOD_NOT_ALLOWED,
    413: E_BODY_TOO_LARGE,
    415: E_UNSUPPORTED_MEDIA_TYPE,
}
_MESSAGES_BY_STATUS = {
    404: M_NOT_FOUND,
    405: M_METHOD_NOT_ALLOWED,
    413: M_BODY_TOO_LARGE,
}
# Response headers of aiohttp's HTTP exceptions that are kept on the JSON rendering.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Location")
NO_STORE = "no-store"
# Seconds a client is asked to wait before retrying while the key store is unavailable.
STORE_RETRY_AFTER = 5


class ApiError(Exception):
    """The admin API's error: it carries its whole answer (status, code, message, field, headers).

    The root of the admin's own errors; the key rules' errors carry their status and code
    too, and the store's are answered from `_STORE_ANSWERS` (`answer_of` finds the answer).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def error_body(
    code: str, message: str, field: str | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return the JSON body of an error: {"error", "message"} plus "field" when known."""
    body: dict[str, Any] = {"error": code, "message": message}
    if field is not None:
        body["field"] = field
    if extra:
        body.update(extra)
    return body


def json_error(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """Return a JSON error response."""
    response = web.json_response(
        error_body(code, message, field, extra), status=status, headers=headers
    )
    response.headers["Cache-Control"] = NO_STORE
    return response


def grant_forbidden(error: key_rules.GrantError) -> ApiError:
    """Return the 403 error for roles outside the caller's grant set, naming them."""
    return ApiError(error.status, error.code, error.message, field=error.field)


def not_found(message: str = M_KEY_NOT_FOUND) -> ApiError:
    """Return the 404 error for an unknown id."""
    return ApiError(404, E_NOT_FOUND, message)


def bad_request(message: str, field: str | None = None, code: str = E_INVALID) -> ApiError:
    """Return a 400 error naming the offending field."""
    return ApiError(400, code, message, field=field)


def from_input_error(error: key_rules.InputError) -> ApiError:
    """Map a key-rules validation error to its answer: 422 for an unknown role, else 400."""
    return ApiError(error.status, error.code, error.message, field=error.field)


def store_unavailable(error: StoreUnavailableError) -> ApiError:
    """Return the 503 error for a store that cannot serve now, naming the cause."""
    if error.outcome_unknown:
        message = M_STORE_OUTCOME_UNKNOWN.format(cause=error.cause)
    else:
        message = M_STORE_UNAVAILABLE.format(cause=error.cause)
    return ApiError(
        503,
        E_STORE_UNAVAILABLE,
        message,
        headers={"Retry-After": str(STORE_RETRY_AFTER)},
        extra={"outcome_unknown": True} if error.outcome_unknown else None,
    )


# The store's errors cannot carry an HTTP answer (the store imports nothing above it): their
# answers, by exception type (looked up along the error's MRO, so a subclass answers as its base).
_STORE_ANSWERS: dict[type[Exception], Callable[[Any], ApiError]] = {
    NameConflictError: lambda _: ApiError(409, E_NAME_CONFLICT, M_NAME_CONFLICT, field="name"),
    NotFoundError: lambda _: ApiError(404, E_NOT_FOUND, M_KEY_NOT_FOUND),
    OutsideGrantsError: lambda error: ApiError(403, E_GRANT_FORBIDDEN, str(error)),
    KeyExpiredError: lambda error: ApiError(409, E_KEY_EXPIRED, str(error), field="expires_at"),
    StoreUnavailableError: store_unavailable,
}


def answer_of(error: Exception) -> ApiError | None:
    """Return the answer an error carries or is mapped to; None for an unexpected one (500)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, key_rules.InputError | key_rules.GrantError):
        return ApiError(error.status, error.code, error.message, field=error.field)
    for kind in type(error).__mro__:
        answer = _STORE_ANSWERS.get(kind)
        if answer is not None:
            return answer(error)
    return None


def _from_http_exception(error: web.HTTPException) -> web.Response:
    """Render one of aiohttp's own HTTP errors as JSON, keeping its useful headers."""
    status = error.status
    code = _CODES_BY_STATUS.get(status, E_HTTP)
    message = _MESSAGES_BY_STATUS.get(status) or error.reason or "error"
    headers = {name: error.headers[name] for name in _KEPT_HEADERS if name in error.headers}
    return json_error(status, code, message, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a JSON answer; unexpected ones become a bare 500."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _from_http_exception(error)
    except Exception as error:
        answer = answer_of(error)
        if answer is None:
            log.exception("unexpected error in admin API: %s %s", request.method, request.path)
            return json_error(500, E_INTERNAL, M_INTERNAL)
        if answer.status >= 500:  # the store is away: worth an operator's attention
            log.warning("admin API: %s %s: %s", request.method, request.path, error)
        return render(answer)
    if not response.prepared and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = NO_STORE
    return response


def render(error: ApiError) -> web.Response:
    """Render an ApiError as its JSON response."""
    return json_error(
        error.status,
        error.code,
        error.message,
        field=error.field,
        headers=error.headers,
        extra=error.extra,
    )
