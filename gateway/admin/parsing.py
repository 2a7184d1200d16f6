"""Admin API request parsing: JSON bodies, ids, query parameters and opaque cursors."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.admin.errors import (
    E_BODY_TOO_LARGE,
    E_INVALID,
    E_MALFORMED_JSON,
    E_OUT_OF_RANGE,
    E_UNKNOWN_FIELD,
    E_UNSUPPORTED_MEDIA_TYPE,
    ApiError,
    bad_request,
    not_found,
)
from gateway.keys.rules import PATTERN_END

MAX_BODY_BYTES = 64 * 1024  # bytes; larger request bodies get 413
DEFAULT_LIMIT = 100  # items per page when `limit` is not given
MIN_LIMIT, MAX_LIMIT = 1, 1000  # smallest and largest page size
MAX_TIME_LENGTH = 64  # characters of a time parameter (RFC 3339 bounds no fraction's digits)
MAX_ID = 2**63 - 1  # ids are SQLite / PostgreSQL bigints
MAX_QUERY_LENGTH = 1000  # characters of a search or filter parameter
# Characters of a request target to explain: more than any request line the proxy reads
# (aiohttp's limit is 8190), so every target the proxy could be sent can be explained.
MAX_EXPLAIN_TARGET = 8192
_ID = re.compile(r"[0-9]{1,19}")
_DAYS = re.compile(r"[0-9]{1,5}")
# A page cursor is URL-safe base64 without padding, this long at most (a sort cursor holds
# the last name: up to ~300 characters); the document states both, and a cursor outside
# them is a 400. One inside them that this listing did not make, for this order, is a 422.
CURSOR_MAX_LENGTH = 400
CURSOR_PATTERN = "^[A-Za-z0-9_-]*" + PATTERN_END
_CURSOR_SYNTAX = re.compile(CURSOR_PATTERN)
_NAME_SHOWN = 40  # characters of an unknown field name repeated in a message
# What no search, filter or cursor text may hold: C0 and C1 controls and DEL (the document's
# pattern), and lone surrogates (no valid Unicode, and no query string can carry one: they
# decode to U+FFFD; PostgreSQL refuses NUL too). Refused here as 400, never left to a store.
CONTROL_CHARACTERS = "\\u0000-\\u001f\\u007f-\\u009f"
SAFE_TEXT_PATTERN = f"^[^{CONTROL_CHARACTERS}]*{PATTERN_END}"
_UNSAFE_TEXT = re.compile(f"[{CONTROL_CHARACTERS}\\ud800-\\udfff]")
# Latest time a sort cursor may hold, in unix seconds (9999-12-31): later than any stored
# time; the earliest is -1, the "never used" of last_used_at.
MAX_CURSOR_TIME = 253_402_300_800

M_CONTENT_TYPE = "request body must be JSON (Content-Type: application/json)"
M_BODY_TOO_LARGE = f"request body must be at most {MAX_BODY_BYTES} bytes"
M_NOT_UTF8 = "request body is not UTF-8"
M_MALFORMED_JSON = "request body is not valid JSON"
M_NOT_OBJECT = "request body must be a JSON object"
M_DUPLICATE = "duplicate member in JSON object"
M_BAD_CONSTANT = "NaN and Infinity are not JSON"
M_SURROGATE = "request body contains an unpaired surrogate escape (not valid Unicode)"
M_LIMIT = f"limit must be an integer from 1 to {MAX_LIMIT}"
M_CURSOR_SYNTAX = (
    f"cursor must be at most {CURSOR_MAX_LENGTH} characters of A-Z, a-z, 0-9, '-' and '_' "
    "(use next_cursor from the previous page)"
)
M_CURSOR = (
    "cursor is not one this listing made for this order (use next_cursor from its previous page)"
)
M_DUPLICATE_PARAM = "query parameter given more than once"


class _DuplicateMember(ValueError):
    """A JSON object repeats a member name."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateMember(key)
        result[key] = value
    return result


def _number(text: str) -> int | float:
    """A JSON number with a zero fraction (1.0, 1e3) is the integer JSON Schema says it is."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _constant(text: str) -> Any:
    raise ValueError(M_BAD_CONSTANT)


def _shown(names: Iterable[str]) -> str:
    return ", ".join(repr(name[:_NAME_SHOWN]) for name in names)


def is_json_content_type(content_type: str) -> bool:
    """Return True for application/json and application/*+json media types."""
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def parse_json_object(raw: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    """Parse a request body that must be a JSON object with only `allowed` members."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise bad_request(M_NOT_UTF8, code=E_MALFORMED_JSON) from error
    try:
        data = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_number
        )
    except _DuplicateMember as error:
        raise bad_request(
            M_DUPLICATE, field=str(error)[:_NAME_SHOWN], code=E_MALFORMED_JSON
        ) from None
    except (ValueError, RecursionError) as error:
        raise bad_request(M_MALFORMED_JSON, code=E_MALFORMED_JSON) from error
    try:  # "\ud800" is valid JSON but no valid Unicode text: refuse it here, not in the store
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise bad_request(M_SURROGATE, code=E_MALFORMED_JSON) from error
    if not isinstance(data, dict):
        raise bad_request(M_NOT_OBJECT)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise bad_request(
            f"unknown field(s): {_shown(unknown)}; allowed: {', '.join(sorted(allowed))}",
            field=unknown[0][:_NAME_SHOWN],
            code=E_UNKNOWN_FIELD,
        )
    return data


async def read_json_object(request: web.Request, allowed: frozenset[str]) -> dict[str, Any]:
    """Read the request body as a JSON object (415, 413 and 400 for the ways it can fail)."""
    if not is_json_content_type(request.content_type):
        raise ApiError(415, E_UNSUPPORTED_MEDIA_TYPE, M_CONTENT_TYPE)
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise ApiError(413, E_BODY_TOO_LARGE, M_BODY_TOO_LARGE)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as error:
        raise ApiError(413, E_BODY_TOO_LARGE, M_BODY_TOO_LARGE) from error
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, E_BODY_TOO_LARGE, M_BODY_TOO_LARGE)
    return parse_json_object(raw, allowed)


async def read_no_body(request: web.Request) -> None:
    """Read the body of a write that takes no data: none, or an empty JSON object (else 400).

    A write still says it is JSON (the CSRF rule); a body with members is refused rather
    than ignored, so a client never believes a value it sent was applied.
    """
    if request.body_exists:
        await read_json_object(request, frozenset())


def parse_id(text: str) -> int:
    """Return a path id; anything but a plain positive integer in range is a 404."""
    if not _ID.fullmatch(text):
        raise not_found()
    value = int(text)
    if not 1 <= value <= MAX_ID:
        raise not_found()
    return value


def query_params(request: web.Request, allowed: frozenset[str]) -> dict[str, str]:
    """Return the query parameters; unknown or repeated ones are a 400 naming them."""
    query = request.rel_url.query
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise bad_request(
            f"unknown query parameter(s): {_shown(unknown)}", field=unknown[0][:_NAME_SHOWN]
        )
    params: dict[str, str] = {}
    for name in query:
        values = query.getall(name)
        if len(values) != 1:
            raise bad_request(M_DUPLICATE_PARAM, field=name)
        params[name] = values[0]
    return params


def parse_limit(params: dict[str, str]) -> int:
    """Return the page size from `limit` (default 100), 1..1000."""
    text = params.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]{1,5}", text) or not MIN_LIMIT <= int(text) <= MAX_LIMIT:
        raise bad_request(M_LIMIT, field="limit")
    return int(text)


def is_safe_text(text: str) -> bool:
    """Return True for text a filter or cursor may hold: bounded, no controls or surrogates."""
    return len(text) <= MAX_QUERY_LENGTH and _UNSAFE_TEXT.search(text) is None


def parse_text(params: dict[str, str], name: str) -> str | None:
    """Return a free-text parameter (None when absent or empty), bounded in length."""
    text = params.get(name)
    if not text:
        return None
    if not is_safe_text(text):
        raise bad_request(
            f"{name} must be at most {MAX_QUERY_LENGTH} characters without control characters",
            field=name,
        )
    return text


def parse_int_param(params: dict[str, str], name: str) -> int | None:
    """Return a positive integer parameter, or None when absent."""
    text = params.get(name)
    if text is None:
        return None
    if not _ID.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise bad_request(f"{name} must be a positive integer", field=name)
    return int(text)


def parse_since(params: dict[str, str], name: str) -> float | None:
    """Return an ISO-8601 time with zone (past or future) as unix seconds, or None.

    RFC 3339's lower-case `t` and `z` are read too (the document says date-time); its leap
    second (:60) is refused, as the document says (unix time has none).
    """
    text = params.get(name)
    if text is None:
        return None
    message = f"{name} must be an ISO-8601 time with a time zone, e.g. 2026-01-01T00:00:00Z"
    if len(text) > MAX_TIME_LENGTH:
        raise bad_request(message, field=name)
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as error:
        raise bad_request(message, field=name) from error
    if moment.tzinfo is None:
        raise bad_request(message, field=name)
    try:
        return moment.timestamp()
    except OverflowError as error:  # e.g. year 1 with a positive offset
        raise bad_request(message, field=name) from error


def encode_cursor(kind: str, position: int) -> str:
    """Return an opaque page cursor for a kind of listing ("k" keys, "a" audit)."""
    raw = f"{kind}:{position}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(params: dict[str, str], kind: str) -> int | None:
    """Return the position in a cursor made by encode_cursor for `kind`; 422 if not one.

    An empty cursor is no cursor (the first page), as an empty `q` is no search.
    """
    text = _cursor_text(params)
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, ValueError) as error:
        raise _not_ours() from error
    prefix, _, number = raw.partition(":")
    if prefix != kind or not _ID.fullmatch(number):
        raise _not_ours()
    position = int(number)
    if not 1 <= position <= MAX_ID or encode_cursor(kind, position) != text:
        raise _not_ours()
    return position


def _cursor_text(params: dict[str, str]) -> str | None:
    """Return the cursor parameter (None: absent or empty); 400 outside the document's syntax."""
    text = params.get("cursor")
    if not text:
        return None
    if len(text) > CURSOR_MAX_LENGTH or not _CURSOR_SYNTAX.match(text):
        raise bad_request(M_CURSOR_SYNTAX, field="cursor")
    return text


def _not_ours() -> ApiError:
    """The 422 for a well-formed cursor this listing did not make (or made for another order)."""
    return ApiError(422, E_INVALID, M_CURSOR, field="cursor")


def encode_sort_cursor(sort: str, value: str | float, position: int) -> str:
    """Return an opaque cursor for a sorted key listing: the order, last sort value and id."""
    raw = json.dumps([sort, value, position], separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_sort_cursor(
    params: dict[str, str], sort: str, text_value: bool
) -> tuple[Any, int] | None:
    """Return (value, id) from a cursor made by encode_sort_cursor for `sort`; 422 if not one.

    `text_value` says whether the order's value is a name (else a time in unix seconds).
    An empty cursor is no cursor.
    """
    text = _cursor_text(params)
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        data = json.loads(raw, parse_constant=_constant)
    except (binascii.Error, ValueError, RecursionError) as error:
        raise _not_ours() from error
    if not isinstance(data, list) or len(data) != 3 or data[0] != sort:
        raise _not_ours()
    value, position = data[1], data[2]
    if text_value:  # checked like a search text: the stores never see what `q` may not hold
        valid_value = isinstance(value, str) and is_safe_text(value)
    else:
        valid_value = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and -1 <= value <= MAX_CURSOR_TIME
        )
    valid_position = isinstance(position, int) and not isinstance(position, bool)
    if not valid_value or not valid_position or not 1 <= position <= MAX_ID:
        raise _not_ours()
    return value, position


def parse_days(params: dict[str, str], name: str, default: int, most: int, *, kept: bool) -> int:
    """Return a whole number of days, `default` when absent: malformed or 0 is a 400; more
    than `most` a 422 when `kept` (usage.keep_days: older days are pruned), else a 400."""
    text = params.get(name)
    if text is None:
        return min(default, most)
    if not _DAYS.fullmatch(text) or int(text) < 1:
        raise bad_request(f"{name} must be a whole number of days from 1", field=name)
    days = int(text)
    if days > most:
        if kept:
            raise ApiError(
                422,
                E_OUT_OF_RANGE,
                f"{name} must be at most {most} (usage.keep_days: older usage is not kept)",
                field=name,
            )
        raise bad_request(f"{name} must be a whole number of days from 1 to {most}", field=name)
    return days
