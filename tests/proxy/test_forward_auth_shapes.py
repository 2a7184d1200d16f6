"""Envoy ext_authz and Traefik forwardAuth, modelled from their documentation (not run here).

Neither is packaged for this machine, so these tests do not drive the real proxies. Each
builds the authorization request exactly as the proxy's documentation says it is sent, asks
a real gateway on loopback with it, and applies the documented rules to the answer: what
would reach the upstream, or what the client would get. The models are documentation-derived:
- Envoy `ext_authz` filter, HTTP service (envoyproxy.io, ExtAuthz / HttpService /
  AuthorizationRequest / AuthorizationResponse): the authorization request keeps the original
  request's method, its path is `path_prefix` + the original path (query included), its
  headers are those matched by `allowed_headers` plus Host, Method, Path, Content-Length and
  Authorization, with no body (Content-Length: 0). Only a 200 answer allows; the headers named
  in `allowed_upstream_headers` are then set on the upstream request. Any other status is
  denied: that status, the body and the headers in `allowed_client_headers` go to the client.
- Traefik `forwardAuth` middleware (doc.traefik.io, ForwardAuth): a GET to `address` with the
  original request's headers (all of them unless `authRequestHeaders` lists some) and
  X-Forwarded-Method, -Proto, -Host, -Uri and -For. A 2XX answer grants access, and each of
  `authResponseHeaders` is copied from the answer onto the forwarded request, replacing any
  existing conflicting header. Otherwise the authentication server's response is returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.config import REST, add_key, policy_data, write_config
from support.http import RawResponse, http_request, raw_request

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.verify import SIGNATURE_HEADER, verify_acting_user

Header = tuple[str, str]
SIGNING = {"shape": b"shape-tests-signing-secret-0123456789abcdef"}
TARGET = f"{REST}/sessions/folder/s1?page=2"
READER = "1int-sessions-read"
LIMITED = "shape-limited"
# What a deployment lists (the deploy/ examples do): keygate's identity headers go up, its
# refusal headers go back to the client.
ENVOY_ALLOWED_HEADERS = (
    "x-api-key",
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
)
ENVOY_UPSTREAM_HEADERS = ("x-acting-user", "x-acting-user-signature", "x-keygate-key-id")
ENVOY_CLIENT_HEADERS = (
    "x-keygate-reason",
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "content-type",
)
# Envoy adds these to allowed_client_headers of its own (documented), and always sends these.
ENVOY_CLIENT_ALWAYS = ("path", "status", "content-length", "www-authenticate", "location")
ENVOY_REQUEST_ALWAYS = ("host", "content-length", "authorization")
TRAEFIK_RESPONSE_HEADERS = ("X-Acting-User", "X-Acting-User-Signature", "X-Keygate-Key-Id")


@dataclass
class Outcome:
    """What the front proxy does with keygate's answer: forward (with headers) or answer."""

    forwarded: bool
    upstream_headers: list[Header]  # the original request's headers as they would go up
    client: RawResponse | None  # what the client would get instead


def lower_names(headers: Sequence[Header]) -> list[str]:
    return [name.lower() for name, _ in headers]


def values(headers: Sequence[Header], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


async def envoy_ext_authz(
    gateway: RunningGateway, method: str, target: str, client_headers: Sequence[Header]
) -> Outcome:
    """Envoy's ext_authz HTTP filter as documented (path_prefix /_keygate/envoy)."""
    allowed = {*ENVOY_ALLOWED_HEADERS, *ENVOY_REQUEST_ALWAYS}
    sent = [(n, v) for n, v in client_headers if n.lower() in allowed and n.lower() != "host"]
    request = http_request(
        method, f"/_keygate/envoy{target}", [*sent, ("Content-Length", "0")], host="api.example"
    )
    if method in ("POST", "PUT", "PATCH"):  # http_request adds its own Content-Length there
        request = http_request(method, f"/_keygate/envoy{target}", sent, host="api.example")
    answer = await raw_request(gateway.proxy_port, request)
    if answer.status == 200:  # exactly 200: any other status, 2xx included, is a denial
        names = set(ENVOY_UPSTREAM_HEADERS)
        kept = [(n, v) for n, v in client_headers if n.lower() not in names]
        added = [(n, v) for n, v in answer.headers if n.lower() in names]
        return Outcome(True, kept + added, None)
    relayed = set(ENVOY_CLIENT_HEADERS) | set(ENVOY_CLIENT_ALWAYS)
    headers = [(n, v) for n, v in answer.headers if n.lower() in relayed]
    return Outcome(False, [], RawResponse(answer.status, headers, answer.body))


async def traefik_forward_auth(
    gateway: RunningGateway, method: str, target: str, client_headers: Sequence[Header]
) -> Outcome:
    """Traefik's forwardAuth middleware as documented (address …/_keygate/forward)."""
    forwarded = [
        ("X-Forwarded-Method", method),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "api.example"),
        ("X-Forwarded-Uri", target),
        ("X-Forwarded-For", "198.51.100.7"),
    ]
    own = [(n, v) for n, v in client_headers if not n.lower().startswith("x-forwarded-")]
    answer = await raw_request(
        gateway.proxy_port, http_request("GET", "/_keygate/forward", [*own, *forwarded])
    )
    if 200 <= answer.status < 300:
        names = {name.lower() for name in TRAEFIK_RESPONSE_HEADERS}
        kept = [(n, v) for n, v in client_headers if n.lower() not in names]
        added = [(n, v) for n, v in answer.headers if n.lower() in names]
        return Outcome(True, kept + added, None)
    return Outcome(False, [], answer)


FRONTS = {"envoy": envoy_ext_authz, "traefik": traefik_forward_auth}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """A gateway whose upstream is never reached (its address takes no connections)."""
    policy = policy_data()
    policy["roles"][LIMITED] = {
        "allow": [f"GET {REST}/**"],
        "rate_limit": {"requests": 1, "per": "hour", "burst": 1},
    }
    extra = {"identity": {"signing_keys": [{"id": "shape", "env": "SHAPE_SIGNING"}]}}
    config = write_config(tmp_path / "shape", "http://127.0.0.1:9", extra=extra, policy=policy)
    environ = {"SHAPE_SIGNING": SIGNING["shape"].decode()}
    async with running_gateway(load_settings(config, environ)) as running:
        yield running


@pytest.mark.parametrize("front", FRONTS)
async def test_an_allowed_request_goes_up_with_keygates_identity_only(
    gateway: RunningGateway, front: str
) -> None:
    secret = await add_key(gateway, "shape-bot", [READER])
    client = [("X-API-Key", secret), ("X-Acting-User", "mallory"), ("Accept", "application/json")]
    outcome = await FRONTS[front](gateway, "GET", TARGET, client)
    assert outcome.forwarded
    up = outcome.upstream_headers
    assert values(up, "X-Acting-User") == ["shape-bot"]  # the client's copy replaced
    (signed,) = values(up, SIGNATURE_HEADER)
    assert verify_acting_user(signed, "GET", TARGET, "shape-bot", SIGNING)
    assert values(up, "X-Keygate-Key-Id") != []
    assert values(up, "Accept") == ["application/json"]


@pytest.mark.parametrize("front", FRONTS)
async def test_a_denial_reaches_the_client_with_keygates_error_and_reason(
    gateway: RunningGateway, front: str
) -> None:
    secret = await add_key(gateway, "shape-reader", [READER])
    denied = await FRONTS[front](gateway, "DELETE", TARGET, [("X-API-Key", secret)])
    assert not denied.forwarded and denied.client is not None
    assert denied.client.status == 403
    assert denied.client.json()["error"] == "forbidden"
    assert values(denied.client.headers, "X-Keygate-Reason") == ["forbidden"]
    unknown = await FRONTS[front](gateway, "GET", TARGET, [("X-API-Key", "kg_" + "a" * 40)])
    assert unknown.client is not None and unknown.client.status == 401
    assert values(unknown.client.headers, "WWW-Authenticate") != []
    protected = await FRONTS[front](
        gateway, "GET", f"{REST}/APIKEYS;jsessionid=1", [("X-API-Key", secret)]
    )
    assert protected.client is not None and protected.client.status in (400, 403)


@pytest.mark.parametrize("front", FRONTS)
async def test_rate_limited_requests_reach_the_client_as_429_with_retry_after(
    gateway: RunningGateway, front: str
) -> None:
    secret = await add_key(gateway, f"shape-limited-{front}", [LIMITED])
    first = await FRONTS[front](gateway, "GET", TARGET, [("X-API-Key", secret)])
    assert first.forwarded
    second = await FRONTS[front](gateway, "GET", TARGET, [("X-API-Key", secret)])
    assert second.client is not None and second.client.status == 429
    assert second.client.json()["error"] == "rate_limited"
    assert int(values(second.client.headers, "Retry-After")[0]) >= 1
    assert values(second.client.headers, "RateLimit-Limit") == ["1;w=3600"]


async def test_envoy_sends_only_listed_headers_so_x_api_key_must_be_listed(
    gateway: RunningGateway,
) -> None:
    # Without x-api-key in allowed_headers, Envoy drops it: keygate sees an anonymous caller
    # (passed through under `anonymous: passthrough`), which is why the examples list it.
    secret = await add_key(gateway, "unlisted", [READER])
    request = http_request("GET", f"/_keygate/envoy{TARGET}", [("Content-Length", "0")])
    answer = await raw_request(gateway.proxy_port, request)
    assert answer.status == 200 and values(answer.headers, "X-Acting-User") == []
    bearer = await envoy_ext_authz(gateway, "GET", TARGET, [("Authorization", f"Bearer {secret}")])
    assert bearer.forwarded  # Authorization is always sent by Envoy
    assert values(bearer.upstream_headers, "X-Acting-User") == ["unlisted"]
