"""Both listeners read credentials the same way: whatever the proxy takes as a key, the admin
listener refuses as one."""

from __future__ import annotations

import base64

import pytest

from gateway import keys
from gateway.credentials import (
    Credential,
    carries_api_key,
    decode_basic,
    extract_credential,
    split_authorization,
)

KEY = keys.generate_key()
SEPARATORS = [" ", "\t", "  ", " \t ", "\t\t"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def authorization_values() -> list[str]:
    """Authorization values a client may send, keyed or not, with any whitespace."""
    values = []
    for sep in SEPARATORS:
        values += [
            f"Bearer{sep}{KEY}",
            f"bearer{sep}{KEY}",
            f"BEARER{sep}{KEY}{sep}",
            f"ApiKey{sep}{KEY}",
            f"apikey{sep}not-a-key",
            f"Bearer{sep}eyJhbGciOiJIUzI1NiJ9.e30.sig",
            f"Basic{sep}{_b64('root:secret')}",
        ]
    return values


@pytest.mark.parametrize("value", authorization_values())
def test_what_the_proxy_takes_as_a_key_the_admin_listener_refuses(value: str) -> None:
    found = extract_credential((), (value,))
    if isinstance(found, Credential):
        assert carries_api_key([("Authorization", value)]), value


@pytest.mark.parametrize("sep", SEPARATORS)
def test_a_key_after_any_whitespace_is_a_key_to_both(sep: str) -> None:
    found = extract_credential((), (f"Bearer{sep}{KEY}",))
    assert found == Credential(KEY, True)
    assert carries_api_key([("Authorization", f"Bearer{sep}{KEY}")])


@pytest.mark.parametrize(
    "headers",
    [
        [("X-API-Key", "")],
        [("x_api_key", "anything")],
        [("Authorization", KEY)],
        [("Authorization", f"Basic {_b64(KEY)}")],
        [("Authorization", f"Basic {_b64('root:' + KEY)}")],
        [("Authorization", f"Basic\t{_b64(KEY + ':pw')}")],
    ],
)
def test_the_admin_listener_also_refuses_near_keys(headers: list[tuple[str, str]]) -> None:
    assert carries_api_key(headers)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Authorization", f"Basic {_b64('root:secret')}")],
        [("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig")],
        [("X-Api-Keys", KEY)],
    ],
)
def test_admin_credentials_without_a_key_pass(headers: list[tuple[str, str]]) -> None:
    assert not carries_api_key(headers)


def test_split_authorization() -> None:
    assert split_authorization("Basic  abc ") == ("basic", "abc")
    assert split_authorization("Bearer") == ("bearer", "")
    assert split_authorization("") == ("", "")


def test_decode_basic() -> None:
    assert decode_basic(_b64("root:pa:ss")) == ("root", "pa:ss")
    assert decode_basic(_b64("no-colon")) is None
    assert decode_basic(_b64(":pw")) is None
    assert decode_basic("!!!") is None
