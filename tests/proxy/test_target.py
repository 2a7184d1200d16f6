"""Behaviour of request-target hygiene: ambiguous targets are refused, paths are decoded."""

from __future__ import annotations

from pathlib import Path

import pytest

import gateway
from gateway.policy.rules import load_policy, split_path
from gateway.proxy.target import MAX_TARGET_LENGTH, TargetError, decoded_path

EXAMPLE = Path(gateway.__file__).resolve().parent / "examples" / "policy.yaml"


@pytest.mark.parametrize(
    "target",
    [
        # encoded slash and backslash
        "/a%2fb",
        "/a%2Fb",
        "/1Integrate/rest/sessions%2F..%2Fapikeys",
        "/a\\b",
        "/a%5cb",
        "/a%5Cb",
        # dot segments, raw and encoded
        "/a/../b",
        "/a/./b",
        "/a/..",
        "/a/.",
        "/..",
        "/a/%2e%2e/b",
        "/a/%2E%2e/b",
        "/a/%2e/b",
        "/a/.%2e/b",
        "/a/file%2etxt",
        # NUL, raw and encoded, in the path and in the query
        "/a\x00b",
        "/a%00b",
        "/a?x=%00",
        "/a?x=\x00",
        # path parameters
        "/a;jsessionid=1",
        "/1Integrate/rest/apikeys;x=y/1",
        # absolute-form, authority-form, asterisk-form, not a path at all
        "http://evil.example/x",
        "https://host/1Integrate/rest/sessions",
        "host:443",
        "*",
        "",
        "a/b",
        # empty segments
        "//a",
        "/a//b",
        "/a/b//",
        # encoded controls anywhere, encoded whitespace at a segment's edge (trimming matchers)
        "/1Integrate/rest/apikeys%20",
        "/1Integrate/rest/apikeys%09/1",
        "/1Integrate/rest/%20apikeys",
        "/1Integrate/rest/apikeys%C2%A0",
        "/a/b%0A",
        "/a/b%0d%0aX-Acting-User:%20admin",
        "/a/%7F",
        "/a/%C2%85",
        # control characters, spaces, non-ASCII, fragment
        "/a b",
        "/a\tb",
        "/a\x7fb",
        "/a\r\nX-Acting-User: admin",
        "/a?x=1 2",
        "/a?x=\n",
        "/caf\u00e9",
        "/a#frag",
        "/a?x#frag",
        # encoded percent (double decoding) and percent signs that are not an escape
        "/a%25",
        "/a%252f",
        "/a%",
        "/a%2",
        "/a%zz",
        "/1Integrate/rest/%u0061pikeys",
        # percent-encoding that is not UTF-8
        "/a%ff",
        "/a%C3%28",
        "/a%80",
    ],
)
def test_ambiguous_targets_are_refused(target: str) -> None:
    with pytest.raises(TargetError):
        decoded_path(target)


def test_target_error_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match="ambiguous path"):
        decoded_path("/a/../b")


def test_over_long_targets_are_refused() -> None:
    longest = "/" + "a" * (MAX_TARGET_LENGTH - 1)
    assert decoded_path(longest) == longest
    with pytest.raises(TargetError, match="longer than"):
        decoded_path(longest + "a")
    with pytest.raises(TargetError, match="longer than"):
        decoded_path("/a?" + "q" * MAX_TARGET_LENGTH)  # the query counts too


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/", "/"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b/"),
        ("/a%20b", "/a b"),
        ("/%41", "/A"),
        ("/caf%C3%A9", "/caf\u00e9"),
        ("/a/.hidden/..b/c.", "/a/.hidden/..b/c."),
        ("/a?b=%2f&c=../x;y", "/a"),
        ("/a?", "/a"),
        ("/a?x=%25%2e", "/a"),
        ("/1Integrate/rest/sessions/s1?action=play", "/1Integrate/rest/sessions/s1"),
        ("/1Integrate/rest/%61pikeys", "/1Integrate/rest/apikeys"),
        ("/1Integrate/rest/%41%50%49keys/1", "/1Integrate/rest/APIkeys/1"),
    ],
)
def test_normal_targets_decode_to_the_path(target: str, path: str) -> None:
    assert decoded_path(target) == path


def test_policy_sees_the_decoded_segment() -> None:
    policy = load_policy(EXAMPLE)
    for target in ("/1Integrate/rest/%61pikeys", "/1Integrate/rest/%41%50%49keys/1"):
        path = decoded_path(target)
        assert policy.is_protected_path(path)
        assert policy.is_protected(split_path(path))
