"""Both listeners read credentials the same way: whatever the proxy takes as a key, the admin
listener refuses as one."""

from __future__ import annotations

import base64

import pytest
from support.fixed_keys import fixed_key

from gateway.proxy.credentials import (
    Credential,
    carries_api_key,
    decode_basic,
    extract_credential,
    header_value_carries_key,
    split_authorization,
)
from gateway.proxy.refusals import Refusal

KEY = fixed_key("credentials")
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
        [("X-Api-Keys", "not-a-key")],
        [("Cookie", "session=kg_short")],
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


# --------------------------------------------------------------- issue 19.8: one rule for both

OTHER = fixed_key("credentials-other")


def _proxy_and_admin(value: str) -> tuple[object, bool]:
    """What the proxy makes of an Authorization value, and whether the admin listener refuses."""
    return extract_credential((), (value,)), carries_api_key([("Authorization", value)])


# Forms a client may put a key in that are unambiguous: the proxy takes the key.
KEY_FORMS = [
    f"Bearer {KEY}",
    f"ApiKey {KEY}",
    KEY,  # a bare key
    f"  {KEY}  ",
    f"Basic {_b64(KEY + ':')}",  # curl -u kg_...:
    f"basic {_b64(':' + KEY)}",
    f"Basic {_b64('anyone:' + KEY)}",  # the password is the key, the user is ignored
    f"Basic {_b64(KEY + ':' + KEY)}",
    f"Basic {_b64(KEY + ':').rstrip('=')}",  # padding left off, as lenient servers accept
]


@pytest.mark.parametrize("value", KEY_FORMS)
def test_every_unambiguous_key_form_is_the_key_to_both_listeners(value: str) -> None:
    found, refused_by_admin = _proxy_and_admin(value)
    assert found == Credential(KEY, True), value
    assert refused_by_admin, value


# Forms that carry a key in a way keygate does not accept: refused with 400, never forwarded.
REFUSED_FORMS = [
    f"Token {KEY}",
    f"Key {KEY}",
    f"token\t{KEY}",
    f"X-API-Key {KEY}",
    f'Digest username="{KEY}", realm="x"',
    f"{KEY} extra",
    f"Bearer, {KEY}",
    f"Basic {_b64('note ' + KEY + ':pw')}",
    f"Basic {_b64(KEY + ':' + OTHER)}",  # two different keys
    f"Basic {_b64(KEY)}",  # no colon: not Basic credentials, yet a key
]


@pytest.mark.parametrize("value", REFUSED_FORMS)
def test_other_forms_carrying_a_key_are_refused_by_both_listeners(value: str) -> None:
    found, refused_by_admin = _proxy_and_admin(value)
    assert isinstance(found, Refusal) and found.status == 400, (value, found)
    assert refused_by_admin, value


@pytest.mark.parametrize(
    "value",
    [
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrZ19hYmMifQ.c2ln",
        f"Basic {_b64('root:secret')}",
        "Bearer kgtoken",
        "Negotiate YIIBhgYGKwYBBQUCoIIBejCCAXagMDAuBgkqhkiC9xIBAgIGCSqGSIb3",
        "Bearer abc.kg_def.ghi",  # 'kg_' inside a token, not a key
        # base64url uses `_`: about 1 JWT in 16,000 holds `_kg_`; it is still no key.
        "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.Qm9_kg_ZHktc2lnbmF0dXJl-x",
        "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIi_kg_OiJ4In0." + "A" * 40,
        "Bearer opaque_kg_" + "a" * 36,  # glued to a word by `_`: not at a word boundary
    ],
)
def test_the_backends_own_credentials_are_not_keys(value: str) -> None:
    found, refused_by_admin = _proxy_and_admin(value)
    assert found is None, value
    assert not refused_by_admin, value


def test_a_working_key_in_any_other_header_is_found() -> None:
    assert header_value_carries_key(f"session={KEY}; theme=dark")
    assert header_value_carries_key(f"Basic realm, {KEY}")
    assert not header_value_carries_key(f"x{KEY}")  # glued to a word: not this key
    assert not header_value_carries_key(KEY[:-1] + ("a" if KEY[-1] != "a" else "b"))
    assert carries_api_key([("Proxy-Authorization", f"Bearer {KEY}")])
    assert carries_api_key([("X-Custom", KEY)])
