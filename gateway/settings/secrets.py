"""The one secret reader: every `{env: VARIABLE}` / `{file: path}` secret is read the same way.

Signing keys, webhook URLs and secrets, the store URL and password, upstream header values
from the environment: one trailing "\\n" or "\\r\\n" is removed (how files and here-docs are
usually written; it is not the secret), then an empty secret or one holding any other
control character is refused, so a CRLF file cannot give one reader "pw\\r" and another "pw".
"""

from __future__ import annotations

import logging
import os
import stat
import unicodedata
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("keygate.settings")

MAX_SECRET_FILE_BYTES = 65_536  # bytes a secret file may hold (a PEM bundle is far smaller)
# Permission bits a secret file should not have: any access for its group or for others.
SECRET_FILE_SHARED_BITS = 0o077
M_CONTROL = "value contains control characters"
M_SPEC = "must be {env: VARIABLE} or {file: path}"


class SecretUnreadable(Exception):
    """The secret's source is missing or unreadable (a store-only load may defer it)."""


class SecretInvalid(Exception):
    """The secret was read but is not acceptable (empty, control characters, too big)."""


def secret_text(raw: str) -> str:
    """Return a secret without its one trailing newline; raise SecretInvalid if unusable."""
    text = raw.removesuffix("\n").removesuffix("\r") if raw.endswith("\n") else raw
    if not text:
        raise SecretInvalid("the secret is empty")
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise SecretInvalid(M_CONTROL)
    return text


def read_secret_file(path: Path, location: str) -> bytes:
    """Read at most MAX_SECRET_FILE_BYTES of a secret file; warn when others may read it."""
    with path.open("rb") as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        secret = file.read(MAX_SECRET_FILE_BYTES + 1)
    if len(secret) > MAX_SECRET_FILE_BYTES:
        raise SecretInvalid(f"{str(path)!r} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    if mode & SECRET_FILE_SHARED_BITS:
        log.warning(
            "%s: secret file %s has mode %04o, so its group or others can read it;"
            " run: chmod 600 %s",
            location,
            path,
            mode,
            path,
        )
    return secret


def read_secret(
    spec: object, env: Mapping[str, str], base: Path, location: str, *, kinds: str = "env|file"
) -> str:
    """Read `{env: VARIABLE}` or `{file: path}` (relative to `base`) through `secret_text`.

    Raises SecretInvalid for a malformed reference or value, SecretUnreadable for an unset
    variable or an unreadable file. The message never holds the secret.
    """
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise SecretInvalid(M_SPEC)
    ((kind, name),) = spec.items()
    if kind not in kinds.split("|") or not isinstance(name, str) or not name:
        raise SecretInvalid(M_SPEC)
    if kind == "env":
        value = env.get(name)
        if value is None:
            raise SecretUnreadable(f"environment variable {name!r} is not set")
        return secret_text(value)
    file = base / name
    try:
        raw = read_secret_file(file, location)
    except OSError as error:
        reason = error.strerror or error.__class__.__name__
        raise SecretUnreadable(f"cannot read {str(file)!r}: {reason}") from None
    try:
        return secret_text(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SecretInvalid(f"{str(file)!r} is not UTF-8 text") from None
