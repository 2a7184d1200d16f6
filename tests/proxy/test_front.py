"""Reading a front proxy's forward-auth request (gateway.proxy.front): pure functions, no I/O."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy.front import (
    ENVOY,
    FORWARD,
    NGINX,
    BadForwardAuthRequest,
    Routes,
    TrustedPeers,
    original_request,
    target_of_url,
)

ROUTES = Routes("/_keygate/")


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """A request's header mapping, as aiohttp hands it over."""
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("https://api.example/a/b?c=d", "/a/b?c=d"),
        ("HTTP://api.example:8443/a%2Fb", "/a%2Fb"),
        ("https://[::1]:8443/", "/"),
        ("https://10.0.0.1/a//b", "/a//b"),
        ("https://h/a?u=https://x/y", "/a?u=https://x/y"),
    ],
)
def test_the_target_of_an_absolute_url_is_its_path_and_query(url: str, target: str) -> None:
    assert target_of_url(url) == target


@pytest.mark.parametrize(
    "url",
    [
        "/a/b",
        "//h/a",
        "ftp://h/a",
        "https://h",
        "https://h?x=/a",
        "https://h#/a",
        "https://user@h/a",
        "https://h%2F/a",
        "https://h\\/a",
        "https://h:port/a",
        "https://h /a",
    ],
)
def test_urls_that_could_hide_the_path_are_refused(url: str) -> None:
    assert target_of_url(url) is None


def test_each_endpoint_reads_its_own_headers() -> None:
    nginx = headers(("X-Original-Method", "PUT"), ("X-Original-URI", "/a?b"))
    assert original_request(NGINX, nginx, "GET", "") == ("PUT", "/a?b")
    ingress = headers(("X-Original-Method", "GET"), ("X-Original-URL", "https://h/a?b"))
    assert original_request(NGINX, ingress, "GET", "") == ("GET", "/a?b")
    both = headers(
        ("X-Original-Method", "GET"), ("X-Original-URI", "/a?b"), ("X-Original-URL", "http://h/a?b")
    )
    assert original_request(NGINX, both, "GET", "") == ("GET", "/a?b")
    traefik = headers(("X-Forwarded-Method", "DELETE"), ("X-Forwarded-Uri", "/x"))
    assert original_request(FORWARD, traefik, "GET", "") == ("DELETE", "/x")
    # Envoy's request is the original: its own method, the path after the endpoint.
    assert original_request(ENVOY, headers(("X-Original-Method", "GET")), "POST", "/y") == (
        "POST",
        "/y",
    )


def test_the_other_families_headers_are_not_read() -> None:
    # A front proxy of one family never sends the other's headers: they are not a fallback.
    with pytest.raises(BadForwardAuthRequest, match="X-Original-Method header is missing"):
        original_request(
            NGINX, headers(("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/")), "GET", ""
        )
    with pytest.raises(BadForwardAuthRequest, match="X-Forwarded-Method header is missing"):
        original_request(
            FORWARD, headers(("X-Original-Method", "GET"), ("X-Original-URI", "/")), "GET", ""
        )


@pytest.mark.parametrize(
    ("target", "endpoint", "path"),
    [
        ("/_keygate/nginx", NGINX, ""),
        ("/_keygate/nginx?x=1", NGINX, ""),
        ("/_keygate/forward", FORWARD, ""),
        ("/_keygate/envoy/", ENVOY, "/"),
        ("/_keygate/envoy/a/b?c", ENVOY, "/a/b?c"),
        ("/_keygate/envoy//a", ENVOY, "//a"),
        ("/_keygate/envoy", None, ""),
        ("/_keygate/envoyx/a", None, ""),
        ("/_keygate/nginx/", None, ""),
        ("/_KEYGATE/nginx", None, ""),
    ],
)
def test_only_exact_spellings_name_an_endpoint(
    target: str, endpoint: str | None, path: str
) -> None:
    assert ROUTES.claims(target)
    assert ROUTES.endpoint(target) == (endpoint, path)


@pytest.mark.parametrize(
    "target", ["/", "/1Integrate/rest/x", "/_keygates", "/keygate/nginx", "/_x/_keygate/nginx"]
)
def test_other_targets_are_not_claimed(target: str) -> None:
    assert not ROUTES.claims(target)


@given(
    cases=st.lists(st.booleans(), min_size=8, max_size=8),
    encoded=st.lists(st.booleans(), min_size=8, max_size=8),
    rest=st.sampled_from(["", "/", "/nginx", "/forward", "/envoy/a", "?x=1", ".json/nginx"]),
)
def test_every_case_and_percent_spelling_of_the_prefix_is_claimed(
    cases: list[bool], encoded: list[bool], rest: str
) -> None:
    name = "_keygate"
    spelled = ""
    for char, upper, escape in zip(name, cases, encoded, strict=True):
        char = char.upper() if upper else char
        spelled += quote(char, safe="") if not escape else f"%{ord(char):02X}"
    assert ROUTES.claims(f"/{spelled}{rest}")


def test_trusted_peers_are_matched_by_network() -> None:
    peers = TrustedPeers(["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"])
    assert peers.trusts("127.0.0.1")
    assert peers.trusts("10.200.3.4")
    assert peers.trusts("fd12::1")
    assert peers.trusts("::ffff:127.0.0.1")  # a dual-stack listener's view of an IPv4 peer
    assert not peers.trusts("127.0.0.2")
    assert not peers.trusts("::1")
    assert not peers.trusts("11.0.0.1")
    assert not peers.trusts("::ffff:11.0.0.1")
    assert not peers.trusts("")  # a Unix socket's peer name
    assert not peers.trusts(None)
    assert not peers.trusts("localhost")
    assert not TrustedPeers([]).trusts("127.0.0.1")
