"""Admin account rules shared by the CLI and the admin API: names, passwords, grant sets."""

from __future__ import annotations

from gateway.keys import keyformat as keys
from gateway.store.base import AdminAccount

ADMIN_NAME_MAX_LENGTH = 64
MIN_PASSWORD_LENGTH = 8  # characters
MAX_PASSWORD_LENGTH = 1024  # characters

E_ADMIN_NAME = "admin name must be 1-64 printable ASCII characters without ':' or spaces"
E_PASSWORD_EMPTY = "password must not be empty"
E_PASSWORD_SHORT = f"password must be at least {MIN_PASSWORD_LENGTH} characters"
E_PASSWORD_LONG = f"password must be at most {MAX_PASSWORD_LENGTH} characters"
E_PASSWORD_CONTROL = "password must not contain control characters"
E_PASSWORD_KEY = "password must not look like an API key (it starts with the key prefix)"


def validate_admin_name(value: str) -> str:
    """Return an admin name usable as an HTTP Basic user name, or raise ValueError."""
    if not 1 <= len(value) <= ADMIN_NAME_MAX_LENGTH or any(
        not ("!" <= c <= "~") or c == ":" for c in value
    ):
        raise ValueError(E_ADMIN_NAME)
    return value


def is_admin_name(value: str) -> bool:
    """Return True when `value` is a well-formed admin name (safe to log as an actor)."""
    try:
        validate_admin_name(value)
    except ValueError:
        return False
    return True


def validate_password(value: str) -> str:
    """Return an acceptable new admin password, or raise ValueError saying what is wrong."""
    if not value:
        raise ValueError(E_PASSWORD_EMPTY)
    if len(value) < MIN_PASSWORD_LENGTH:
        raise ValueError(E_PASSWORD_SHORT)
    if len(value) > MAX_PASSWORD_LENGTH:
        raise ValueError(E_PASSWORD_LONG)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(E_PASSWORD_CONTROL)
    if keys.looks_like_key(value):
        raise ValueError(E_PASSWORD_KEY)
    return value


def grant_set(account: AdminAccount) -> frozenset[str] | None:
    """Return the roles an admin may grant, or None when they may grant every role."""
    return None if account.grant_all else frozenset(account.grants)
