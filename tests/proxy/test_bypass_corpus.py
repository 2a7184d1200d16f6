"""Published bypass techniques, sent over raw sockets through a real gateway to a real backend.

Each case names the class it belongs to and where the technique is described. A case is
either refused by keygate (status and error code) or forwarded with the bypass removed (the
demo backend's echo endpoint reports exactly what arrived).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.config import ALL_ROLE, REST, add_key, policy_data, write_config
from support.http import http_request, raw_request
from support.upstreams import Backend

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

ECHO = f"{REST}/_echo/corpus"
READER_ROLE = "echo-reader"
SPOOF = "mallory"


@dataclass(frozen=True)
class Case:
    """One request of the corpus and what must come of it."""

    name: str
    source: str  # where the technique is published
    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    key: str = "all"  # "all" (every method and path) or "reader" (GET on the echo path)
    status: int = 200  # expected answer status
    error: str | None = None  # expected error code when refused
    absent: tuple[str, ...] = ()  # header names (exact, case-insensitive) the backend must not see


OVERRIDE = "OWASP WSTG-CONF-06 (HTTP method override); Jersey HttpMethodOverrideFilter"
HIDDEN_METHOD = "Spring HiddenHttpMethodFilter / Rails and Laravel `_method` form field"
REWRITE = "CVE-2018-14773 (Symfony X-Original-URL / X-Rewrite-URL), Drupal SA-CORE-2018-005"
PREFIX = "Spring ForwardedHeaderFilter and Traefik X-Forwarded-Prefix routing"
ENVOY = "Envoy x-envoy-original-path (trusted when set by a front proxy)"
OAUTH2_PROXY = "oauth2-proxy docs: X-Auth-Request-* / X-Forwarded-* identity headers"
GRAFANA = "Grafana auth proxy docs: X-WEBAUTH-USER"
KONG = "Kong docs: X-Consumer-Username / X-Credential-Identifier set upstream"
IIS = "Azure App Service authentication: X-MS-CLIENT-PRINCIPAL-NAME"
LOOKALIKE = "CGI/WSGI header name normalisation (RFC 3875 section 4.1.18: '-' becomes '_')"
SEMICOLON = "Orange Tsai, Breaking Parser Logic (Black Hat USA 2018): ';' path parameters"
SUFFIX = "Spring MVC suffix pattern matching (CVE-2016-5007; off by default since 5.3)"
TRAILING_DOT = "Windows path canonicalisation drops trailing dots (IIS, ASP.NET)"
NTFS = "IIS ::$DATA alternate data stream (CVE-1999-0278 / MS98-003)"
FULLWIDTH = "Unicode NFKC compatibility folding (Birch, HostSplit, Black Hat USA 2019)"
ZERO_WIDTH = "Unicode format characters ignored by normalising matchers (UTS #39 skeletons)"
DOTLESS = "Unicode case-mapping collisions (GitHub password reset, 2019: dotless i)"
ENCODED = "CVE-2007-0450 (Tomcat encoded slash), Orange Tsai 2018 (path normalisation)"
SMUGGLING = "PortSwigger, HTTP request smuggling (CL.TE and TE.CL)"

CASES = [
    # --- method-override headers: decided for the overridden method too
    Case("override header, read-only key", OVERRIDE, "GET", ECHO,
         (("X-HTTP-Method-Override", "DELETE"),), "reader", 403, "forbidden"),
    Case("X-HTTP-Method, read-only key", OVERRIDE, "GET", ECHO,
         (("X-HTTP-Method", "DELETE"),), "reader", 403, "forbidden"),
    Case("X-Method-Override, read-only key", OVERRIDE, "GET", ECHO,
         (("X-Method-Override", "put"),), "reader", 403, "forbidden"),
    Case("override look-alike name", OVERRIDE, "GET", ECHO,
         (("x_http_method_override", "DELETE"),), "reader", 403, "forbidden"),
    Case("_method query parameter", HIDDEN_METHOD, "GET", f"{ECHO}?_method=DELETE",
         (), "reader", 403, "forbidden"),
    Case("_method query parameter, encoded name", HIDDEN_METHOD, "GET",
         f"{ECHO}?%5Fmethod=DELETE", (), "reader", 403, "forbidden"),
    Case("_method query parameter, every letter encoded", HIDDEN_METHOD, "GET",
         f"{ECHO}?%5F%6D%65thod=DELETE", (), "reader", 403, "forbidden"),
    Case("_method query parameter, upper case", HIDDEN_METHOD, "GET",
         f"{ECHO}?a=1&_METHOD=DELETE", (), "reader", 403, "forbidden"),
    Case("override naming two methods", OVERRIDE, "GET", ECHO,
         (("X-HTTP-Method-Override", "GET, DELETE"),), "reader", 400, "bad_method_override"),
    Case("override the policy allows", OVERRIDE, "GET", ECHO,
         (("X-HTTP-Method-Override", "GET"),), "reader", 200),
    # --- URL-rewrite headers: always stripped
    Case("X-Original-URL", REWRITE, "GET", ECHO,
         (("X-Original-URL", f"{REST}/apikeys"),), absent=("X-Original-URL",)),
    Case("X-Rewrite-URL", REWRITE, "GET", ECHO,
         (("X-Rewrite-URL", f"{REST}/apikeys"),), absent=("X-Rewrite-URL",)),
    Case("X-Original-URI look-alike", REWRITE, "GET", ECHO,
         (("X_Original_Uri", f"{REST}/apikeys"),), absent=("X_Original_Uri",)),
    Case("X-Forwarded-Prefix", PREFIX, "GET", ECHO,
         (("X-Forwarded-Prefix", f"{REST}/apikeys"),), absent=("X-Forwarded-Prefix",)),
    Case("X-Envoy-Original-Path", ENVOY, "GET", ECHO,
         (("X-Envoy-Original-Path", f"{REST}/apikeys"),), absent=("X-Envoy-Original-Path",)),
    # --- identity headers of other gateways, and look-alikes of ours
    Case("oauth2-proxy user", OAUTH2_PROXY, "GET", ECHO,
         (("X-Auth-Request-User", SPOOF), ("X-Forwarded-Email", f"{SPOOF}@x")),
         absent=("X-Auth-Request-User", "X-Forwarded-Email")),
    Case("Grafana user", GRAFANA, "GET", ECHO,
         (("X-WEBAUTH-USER", SPOOF),), absent=("X-WEBAUTH-USER",)),
    Case("Kong consumer", KONG, "GET", ECHO,
         (("X-Consumer-Username", SPOOF),), absent=("X-Consumer-Username",)),
    Case("IIS principal", IIS, "GET", ECHO,
         (("X-MS-CLIENT-PRINCIPAL-NAME", SPOOF),), absent=("X-MS-CLIENT-PRINCIPAL-NAME",)),
    Case("X-ActingUser", LOOKALIKE, "GET", ECHO,
         (("X-ActingUser", SPOOF),), absent=("X-ActingUser",)),
    Case("X.Acting.User", LOOKALIKE, "GET", ECHO,
         (("X.Acting.User", SPOOF),), absent=("X.Acting.User",)),
    Case("X-Acting-User-", LOOKALIKE, "GET", ECHO,
         (("X-Acting-User-", SPOOF),), absent=("X-Acting-User-",)),
    Case("Content_Length look-alike", LOOKALIKE, "GET", ECHO,
         (("Content_Length", "5"),), absent=("Content_Length",)),
    Case("Authorization look-alike", LOOKALIKE, "GET", ECHO,
         (("Authorization_", f"Bearer {SPOOF}"),), absent=("Authorization_",)),
    # --- protected-path variants, with a key that may call everything else
    Case("encoded ';' parameter", SEMICOLON, "GET", f"{REST}/apikeys%3Bx",
         status=400, error="bad_target"),
    Case("encoded ';' in an earlier segment", SEMICOLON, "GET", "/1Integrate%3B/rest/apikeys",
         status=400, error="bad_target"),
    Case("suffix pattern", SUFFIX, "GET", f"{REST}/apikeys.json",
         status=403, error="forbidden_protected"),
    Case("suffix pattern below", SUFFIX, "DELETE", f"{REST}/apikeys.json/1",
         status=403, error="forbidden_protected"),
    Case("two suffixes", SUFFIX, "GET", f"{REST}/apikeys.json.bak",
         status=403, error="forbidden_protected"),
    Case("two suffixes, archive", SUFFIX, "GET", f"{REST}/apikeys.tar.gz",
         status=403, error="forbidden_protected"),
    Case("two suffixes below", SUFFIX, "DELETE", f"{REST}/apikeys.v1.json/1",
         status=403, error="forbidden_protected"),
    Case("suffixes with a trailing dot", SUFFIX, "GET", f"{REST}/apikeys.json.bak.",
         status=403, error="forbidden_protected"),
    Case("trailing dot", TRAILING_DOT, "GET", f"{REST}/apikeys.",
         status=403, error="forbidden_protected"),
    Case("NTFS stream", NTFS, "GET", f"{REST}/apikeys::$DATA",
         status=403, error="forbidden_protected"),
    Case("fullwidth letter", FULLWIDTH, "GET", f"{REST}/%EF%BD%81pikeys",
         status=403, error="forbidden_protected"),
    Case("zero-width space", ZERO_WIDTH, "GET", f"{REST}/apikeys%E2%80%8B",
         status=403, error="forbidden_protected"),
    Case("dotless i", DOTLESS, "GET", f"{REST}/ap%C4%B1keys",
         status=403, error="forbidden_protected"),
    Case("dotted capital I", DOTLESS, "GET", f"{REST}/AP%C4%B0KEYS",
         status=403, error="forbidden_protected"),
    # --- already handled before this corpus existed (kept as regressions)
    Case("percent-encoded letter", ENCODED, "GET", f"{REST}/%61pikeys",
         status=403, error="forbidden_protected"),
    Case("upper case", ENCODED, "GET", "/1INTEGRATE/REST/APIKEYS",
         status=403, error="forbidden_protected"),
    Case("encoded slash", ENCODED, "GET", f"{REST}/sessions%2F..%2Fapikeys",
         status=400, error="bad_target"),
    Case("dot segment", ENCODED, "GET", f"{REST}/sessions/../apikeys",
         status=400, error="bad_target"),
    Case("trailing encoded space", ENCODED, "GET", f"{REST}/apikeys%20",
         status=400, error="bad_target"),
    Case("raw ';' parameter", SEMICOLON, "GET", f"{REST}/apikeys;x",
         status=400, error="bad_target"),
    # --- an allowed path with dots keeps working (denies more, never less)
    Case("allowed path with an extension", SUFFIX, "GET", f"{REST}/_echo/report.json",
         key="reader"),
    Case("allowed path with two extensions", SUFFIX, "GET", f"{REST}/_echo/report.json.bak",
         key="reader"),
]  # fmt: skip


@pytest.fixture
async def corpus_gateway(
    tmp_path: Path, backend: Backend, sqlite_template: Path
) -> AsyncIterator[RunningGateway]:
    """A gateway whose policy adds a read-only role on the echo path."""
    policy = policy_data()
    policy["roles"][READER_ROLE] = {"allow": [f"GET {REST}/_echo/**"]}
    config = write_config(
        tmp_path / "config", backend.url, policy=policy, store_from=sqlite_template
    )
    async with running_gateway(load_settings(config)) as running:
        yield running


@pytest.fixture
async def corpus_keys(corpus_gateway: RunningGateway) -> dict[str, str]:
    """Two keys: one that may call everything, one that may only GET the echo path."""
    return {
        "all": await add_key(corpus_gateway, "corpus-all", [ALL_ROLE]),
        "reader": await add_key(corpus_gateway, "corpus-reader", [READER_ROLE]),
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_published_bypass_is_refused_or_defused(
    corpus_gateway: RunningGateway, corpus_keys: dict[str, str], case: Case
) -> None:
    headers = [*case.headers, ("X-API-Key", corpus_keys[case.key])]
    response = await raw_request(
        corpus_gateway.proxy_port, http_request(case.method, case.target, headers)
    )
    assert response.status == case.status, (case.source, response.body)
    if case.error is not None:
        assert response.json()["error"] == case.error, case.source
        return
    if not case.target.startswith(f"{REST}/_echo/"):
        return
    received = [(name, value) for name, value in response.json()["headers"]]
    names = {name.lower() for name, _ in received}
    for absent in case.absent:
        assert absent.lower() not in names, (case.source, received)
    acting = [value for name, value in received if name.lower() == "x-acting-user"]
    assert acting == [f"corpus-{case.key}"], received
    assert SPOOF not in json.dumps(received), case.source


async def test_an_allowed_override_reaches_the_backend(
    corpus_gateway: RunningGateway, corpus_keys: dict[str, str]
) -> None:
    # A key that may DELETE the echo path keeps its override header: the backend needs it.
    headers = [("X-HTTP-Method-Override", "DELETE"), ("X-API-Key", corpus_keys["all"])]
    response = await raw_request(corpus_gateway.proxy_port, http_request("POST", ECHO, headers))
    assert response.status == 200
    received = response.json()["headers"]
    assert ["X-HTTP-Method-Override", "DELETE"] in received


async def test_anonymous_callers_lose_rewrite_and_identity_headers_too(
    corpus_gateway: RunningGateway,
) -> None:
    headers = [("X-Original-URL", f"{REST}/apikeys"), ("X-WEBAUTH-USER", SPOOF)]
    response = await raw_request(corpus_gateway.proxy_port, http_request("GET", ECHO, headers))
    assert response.status == 200
    received = response.json()["headers"]
    assert SPOOF not in json.dumps(received)
    assert "apikeys" not in json.dumps(received)
