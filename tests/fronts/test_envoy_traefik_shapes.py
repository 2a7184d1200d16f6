"""Envoy and Traefik are not packaged for Debian: these tests read deploy/envoy/envoy.yaml and
deploy/traefik/dynamic.yaml and replay, against a real keygate, what each proxy does with
that configuration as its documentation states it (not the proxy itself):

- Envoy ext_authz, HTTP service (envoy.extensions.filters.http.ext_authz.v3): the check
  request has the original method and `path_prefix` + the original path and query, and
  carries only `allowed_headers` (plus Host, Method, Path, Content-Length, Authorization);
  exactly 200 allows, and the response headers matching `allowed_upstream_headers` are set
  on the upstream request (replacing the client's); any other status goes to the client
  with the headers matching `allowed_client_headers`. Filters run in their order
  (header_mutation before ext_authz); the route's `request_headers_to_remove` applies in
  the router, last.
- Traefik forwardAuth: a GET to `address` with the client's headers and X-Forwarded-Method,
  -Proto, -Host, -Uri, -For set by Traefik (`trustForwardHeader: false`); 2xx allows, each
  `authResponseHeaders` name is removed from the request and then copied from the answer;
  any other answer goes to the client as it is. Middlewares run in the router's order; a
  `customRequestHeaders` entry with an empty value removes the header.
"""

from __future__ import annotations

import asyncio
import fnmatch
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from support.config import REST
from support.fronts import (
    ALL_KEY,
    DEPLOY,
    IDENTITY_SPOOFS,
    LIMITED_KEY,
    PROTECTED_VARIANTS,
    SIGNING_KEY_ID,
    Decider,
)
from support.http import RawResponse, http_request, raw_request
from support.upstreams import RecordingBackend

from gateway.verify import SIGNATURE_HEADER, verify_acting_user

pytestmark = pytest.mark.slow

Headers = list[tuple[str, str]]
ENVOY_ALWAYS_SENT = ("host", "content-length", "authorization")


def _find(node: Any, key: str) -> Any:
    """The first value under `key` anywhere in a parsed YAML tree."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        children = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find(child, key)
        if found is not None:
            return found
    return None


def _matches(name: str, patterns: list[dict[str, str]]) -> bool:
    """Envoy's StringMatcher list (exact, prefix), on a lower-cased header name."""
    lowered = name.lower()
    return any(
        lowered == p.get("exact", "\0") or lowered.startswith(p.get("prefix", "\0"))
        for p in patterns
    )


def _without(headers: Headers, names: set[str]) -> Headers:
    return [(n, v) for n, v in headers if n.lower() not in names]


def _origin_form(target: str) -> str:
    """An absolute-form target as both proxies pass it on: its path and query only."""
    if target.startswith("http://"):
        return "/" + target.split("/", 3)[3]
    return target


async def _check(port: int, method: str, target: str, headers: Headers) -> RawResponse:
    return await raw_request(port, http_request(method, target, headers), timeout=10.0)


class Envoy:
    """deploy/envoy/envoy.yaml's request path, as Envoy's documentation describes it."""

    def __init__(self) -> None:
        config = yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text(encoding="utf-8"))
        self.service = _find(config, "http_service")
        self.mutations = _find(config, "request_mutations")
        self.route_removes = {name.lower() for name in _find(config, "request_headers_to_remove")}
        filters = [f["name"] for f in _find(config, "http_filters")]
        assert filters.index("envoy.filters.http.header_mutation") < filters.index(
            "envoy.filters.http.ext_authz"
        )
        assert _find(config, "failure_mode_allow") is False

    async def request(
        self, keygate: int, method: str, target: str, headers: Headers
    ) -> tuple[RawResponse, Headers | None]:
        """The client's answer when refused, or (check answer, upstream headers) when allowed."""
        target = _origin_form(target)
        removed = {m["remove"].lower() for m in self.mutations}
        client = _without(headers, removed)
        allowed = self.service["authorization_request"]["allowed_headers"]["patterns"]
        sent = [(n, v) for n, v in client if n.lower() in ENVOY_ALWAYS_SENT or _matches(n, allowed)]
        answer = await _check(keygate, method, self.service["path_prefix"] + target, sent)
        response = self.service["authorization_response"]
        if answer.status != 200:
            patterns = response["allowed_client_headers"]["patterns"]
            answer.headers = [(n, v) for n, v in answer.headers if _matches(n, patterns)]
            return answer, None
        patterns = response["allowed_upstream_headers"]["patterns"]
        copied = [(n, v) for n, v in answer.headers if _matches(n, patterns)]
        upstream = _without(client, {n.lower() for n, _ in copied}) + copied
        return answer, _without(upstream, self.route_removes)


class Traefik:
    """deploy/traefik/dynamic.yaml's router, as Traefik's documentation describes it."""

    def __init__(self) -> None:
        path = DEPLOY / "traefik" / "dynamic.yaml"
        config = yaml.safe_load(path.read_text(encoding="utf-8"))["http"]
        (router,) = config["routers"].values()
        self.chain = [config["middlewares"][name] for name in router["middlewares"]]
        (self.auth,) = [m["forwardAuth"] for m in self.chain if "forwardAuth" in m]
        assert self.auth["trustForwardHeader"] is False

    async def request(
        self, keygate: int, method: str, target: str, headers: Headers
    ) -> tuple[RawResponse, Headers | None]:
        """The client's answer when refused, or (auth answer, upstream headers) when allowed."""
        target = _origin_form(target)
        answer: RawResponse | None = None
        for middleware in self.chain:
            if "headers" in middleware:
                custom = middleware["headers"]["customRequestHeaders"]
                drop = {n.lower() for n, v in custom.items() if v == ""}
                headers = _without(headers, drop)
                continue
            forwarded = {
                "X-Forwarded-Method": method,
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Host": "127.0.0.1",
                "X-Forwarded-Uri": target,
                "X-Forwarded-For": "127.0.0.1",
            }
            sent = _without(headers, {n.lower() for n in forwarded}) + list(forwarded.items())
            address = urlsplit(self.auth["address"])
            answer = await _check(keygate, "GET", address.path, sent)
            if not 200 <= answer.status < 300:
                return answer, None
            for name in self.auth["authResponseHeaders"]:
                headers = _without(headers, {name.lower()})
                headers += [(n, v) for n, v in answer.headers if n.lower() == name.lower()]
        assert answer is not None
        return answer, headers


@pytest.fixture(params=["envoy", "traefik"])
def proxy(request: pytest.FixtureRequest) -> Envoy | Traefik:
    """Envoy's or Traefik's documented behaviour on the deploy/ file."""
    return Envoy() if request.param == "envoy" else Traefik()


async def test_a_keyed_request_goes_up_signed_without_the_key_or_spoofed_identity(
    proxy: Envoy | Traefik, decider: Decider, recording_backend: RecordingBackend
) -> None:
    secret = decider.secrets[ALL_KEY]
    spoofed = [(name, "mallory") for name in IDENTITY_SPOOFS]
    target = f"{REST}/sessions/a?x=1"
    for credential in (("X-API-Key", secret), ("Authorization", f"Bearer {secret}")):
        answer, upstream = await proxy.request(decider.port, "GET", target, [credential, *spoofed])
        assert answer.status == 200 and upstream is not None, answer.body[:300]
        values = {name.lower(): value for name, value in upstream}
        assert len(upstream) == len(values)
        assert values["x-acting-user"] == ALL_KEY
        assert values["x-keygate-key-id"] == decider.key_ids[ALL_KEY]
        keys = {SIGNING_KEY_ID: decider.signing_key}
        assert verify_acting_user(values[SIGNATURE_HEADER.lower()], "GET", target, ALL_KEY, keys)
        assert "x-api-key" not in values and "authorization" not in values
        assert "mallory" not in values.values()
    # Anonymous: allowed (passthrough), with no identity at all.
    answer, upstream = await proxy.request(decider.port, "GET", target, spoofed)
    assert answer.status == 200 and upstream == []
    # keygate itself forwarded nothing: it only decided.
    assert recording_backend.received == []


async def test_refusals_reach_the_client_with_their_reason_and_retry_after(
    proxy: Envoy | Traefik, decider: Decider, recording_backend: RecordingBackend
) -> None:
    key = [("X-API-Key", decider.secrets[ALL_KEY])]
    for variant in PROTECTED_VARIANTS:
        answer, upstream = await proxy.request(decider.port, "GET", variant, key)
        assert upstream is None and answer.status in (400, 403), (variant, answer.status)
        assert answer.json()["error"] in ("forbidden_protected", "bad_target"), variant
    limited = [("X-API-Key", decider.secrets[LIMITED_KEY])]
    answer, upstream = await proxy.request(decider.port, "GET", f"{REST}/sessions/", limited)
    assert answer.status == 200 and upstream is not None
    answer, upstream = await proxy.request(decider.port, "GET", f"{REST}/sessions/", limited)
    assert upstream is None and answer.status == 429
    assert answer.header_values("X-Keygate-Reason") == ["rate_limited"]
    assert int(answer.header_values("Retry-After")[0]) >= 1
    assert fnmatch.filter([n.lower() for n, _ in answer.headers], "ratelimit*")
    await asyncio.sleep(0)
    assert recording_backend.received == []
