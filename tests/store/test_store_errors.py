"""Every store error shares one root, StoreError, so a caller can catch them all at once."""

from __future__ import annotations

import pytest

from gateway.store import base
from gateway.store.base import (
    FeedPrunedError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from gateway.store.migrations import SchemaTooNewError, too_new


@pytest.mark.parametrize(
    "error",
    [
        StoreUnavailableError("/tmp/keys.db", "the disk is full"),
        StoreMissingError("/tmp/keys.db"),
        FeedPrunedError(3, 10),
        too_new(9, 4),
    ],
    ids=lambda error: type(error).__name__,
)
def test_each_store_error_is_a_store_error(error: Exception) -> None:
    """The errors that were plain Exceptions are caught by `except StoreError` too."""
    with pytest.raises(StoreError):
        raise error


def test_every_error_class_in_the_contract_has_the_one_root() -> None:
    """No error class the store module defines stands outside StoreError."""
    errors = [
        value
        for value in vars(base).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert len(errors) >= 10
    assert all(issubclass(error, StoreError) for error in errors), [
        error.__name__ for error in errors if not issubclass(error, StoreError)
    ]


def test_schema_too_new_stays_a_runtime_error() -> None:
    """Joining the root keeps the error's old base, so existing handlers are unchanged."""
    assert issubclass(SchemaTooNewError, RuntimeError)
