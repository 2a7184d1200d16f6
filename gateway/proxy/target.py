"""Request-target hygiene: refuse ambiguous targets, decode the path for the policy (no aiohttp)."""

from __future__ import annotations

import re
from urllib.parse import unquote

# Longest request-target accepted, in characters (aiohttp's own line limit is 8190).
MAX_TARGET_LENGTH = 4096

# Anything a backend could read differently from us: encoded slash, backslash, dot, percent,
# semicolon (a path parameter once decoded, to Tomcat and Spring) or NUL; a `%` not followed
# by two hex digits (left as-is by us, decoded or refused by others, e.g. IIS `%u0061`); raw
# backslash, `;` parameters, NUL/controls/space/non-ASCII; `//`; dot segments.
_AMBIGUOUS_PATH = re.compile(
    r"%(?:2[fFeE5]|5[cC]|3[bB]|00|(?![0-9A-Fa-f]{2}))|[\\;#\x00-\x20\x7f-\U0010ffff]|//|/\.\.?(?:/|$)"
)
_AMBIGUOUS_QUERY = re.compile(r"%00|[#\x00-\x20\x7f-\U0010ffff]")
# Checked on the decoded path: encoded control characters (C0, DEL, C1), and whitespace at
# either end of a segment, which Java path matchers that trim tokens read as the bare name
# (`/apikeys%20` or `/apikeys%09` would otherwise reach a protected resource).
_AMBIGUOUS_DECODED = re.compile(r"[\x00-\x1f\x7f-\x9f]|/\s|\s(?:/|\Z)")


class TargetError(ValueError):
    """The request-target is ambiguous; the message says why (safe to show the client)."""


def decoded_path(raw_target: str) -> str:
    """Check a raw origin-form target and return its percent-decoded path, or raise TargetError."""
    if len(raw_target) > MAX_TARGET_LENGTH:
        raise TargetError(f"request target longer than {MAX_TARGET_LENGTH} characters")
    if not raw_target.startswith("/"):
        raise TargetError("request target must be an origin-form path starting with '/'")
    path, separator, query = raw_target.partition("?")
    if _AMBIGUOUS_PATH.search(path) is not None:
        raise TargetError(
            "ambiguous path: encoded '/', '\\', '.', '%', ';' or NUL, ';', '//', dot segments "
            "and control characters are refused"
        )
    if separator and _AMBIGUOUS_QUERY.search(query) is not None:
        raise TargetError("query contains NUL, '#' or control characters")
    if "%" not in path:
        return path
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError as error:
        raise TargetError("path has percent-encoding that is not valid UTF-8") from error
    if _AMBIGUOUS_DECODED.search(decoded) is not None:
        raise TargetError(
            "ambiguous path: encoded control characters, or whitespace at the start or end "
            "of a segment, are refused"
        )
    return decoded
