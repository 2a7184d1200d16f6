"""Forward-auth endpoints: a real gateway on loopback asked as each front proxy asks it.

Each request is written byte for byte as nginx `auth_request` (and ingress-nginx `auth-url`),
Traefik `forwardAuth` / Caddy `forward_auth`, or Envoy `ext_authz` (HTTP service) send it;
the upstream behind the gateway counts every request it receives, and none must arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support.config import ALL_ROLE, REST, add_key, policy_data, write_config
from support.http import RawResponse, http_request, raw_request

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.verify import SIGNATURE_HEADER, verify_acting_user

PREFIX = "/_keygate/"
READER_ROLE = "1int-sessions-read"
LIMITED_ROLE = "fa-limited"
SIGNING_ID = "fa1"
SIGNING_SECRET = b"forward-auth-signing-secret-0123456789abcdef"
SESSIONS = f"{REST}/sessions/folder/s1"
SPOOF = "mallory"

Header = tuple[str, str]


@dataclass
class Upstream:
    """A real HTTP upstream that answers 200 and records every request it receives."""

    seen: list[str] = field(default_factory=list)
    runner: web.ServerRunner | None = None
    url: str = ""

    async def handler(self, request: web.BaseRequest) -> web.Response:
        self.seen.append(f"{request.method} {request.raw_path}")
        return web.Response(text="upstream")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """The counting upstream on a loopback port."""
    recorder = Upstream()
    runner = web.ServerRunner(web.Server(recorder.handler))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recorder.runner = runner
    recorder.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield recorder
    finally:
        await runner.cleanup()


def fa_policy(limit: int = 2) -> dict[str, Any]:
    """The test policy plus a rate-limited reader role."""
    policy = policy_data()
    policy["roles"][LIMITED_ROLE] = {
        "allow": [f"GET {REST}/**"],
        "rate_limit": {"requests": limit, "per": "minute", "burst": limit},
    }
    return policy


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, upstream: Upstream, store_from: Path | None = None, **extra: Any
) -> AsyncIterator[RunningGateway]:
    """A gateway in front of `upstream`, signing the acting user, with `extra` settings."""
    settings = {"identity": {"signing_keys": [{"id": SIGNING_ID, "env": "FA_SIGNING"}]}}
    settings.update(extra)
    config = write_config(
        tmp_path / "fa", upstream.url, extra=settings, policy=fa_policy(), store_from=store_from
    )
    environ = {"FA_SIGNING": SIGNING_SECRET.decode()}
    async with running_gateway(load_settings(config, environ)) as running:
        yield running


@pytest.fixture
async def gateway(
    tmp_path: Path, upstream: Upstream, sqlite_template: Path
) -> AsyncIterator[RunningGateway]:
    """A gateway with forward-auth on its defaults (prefix /_keygate/, loopback trusted)."""
    async with serving(tmp_path, upstream, store_from=sqlite_template) as running:
        yield running


# How each front proxy asks about METHOD TARGET: (its request method, request target, headers).
Ask = Callable[[str, str], tuple[str, str, list[Header]]]


def nginx(method: str, target: str) -> tuple[str, str, list[Header]]:
    """nginx auth_request: a subrequest to the auth location with the original in headers."""
    return "GET", f"{PREFIX}nginx", [("X-Original-Method", method), ("X-Original-URI", target)]


def ingress(method: str, target: str) -> tuple[str, str, list[Header]]:
    """ingress-nginx auth-url: X-Original-URL is `$scheme://$http_host$request_uri`."""
    url = f"https://api.example:8443{target}"
    return "GET", f"{PREFIX}nginx", [("X-Original-Method", method), ("X-Original-URL", url)]


def forward(method: str, target: str) -> tuple[str, str, list[Header]]:
    """Traefik forwardAuth and Caddy forward_auth: the X-Forwarded-* headers."""
    return (
        "GET",
        f"{PREFIX}forward",
        [
            ("X-Forwarded-Method", method),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "api.example"),
            ("X-Forwarded-Uri", target),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    )


def envoy(method: str, target: str) -> tuple[str, str, list[Header]]:
    """Envoy ext_authz HTTP service: the original method, path_prefix + the original path."""
    return method, f"{PREFIX}envoy{target}", [("Content-Length", "0")]


ASKS: dict[str, Ask] = {"nginx": nginx, "ingress": ingress, "forward": forward, "envoy": envoy}
# The status each asks with when the decision is a 403, a 401, and a rate-limit refusal.
LIMITED_STATUS = {"nginx": 403, "ingress": 403, "forward": 429, "envoy": 429}


async def ask(
    gateway: RunningGateway,
    how: Ask,
    method: str,
    target: str,
    headers: Sequence[Header] = (),
) -> RawResponse:
    """Ask the gateway about METHOD TARGET the way `how` asks, with the client's `headers`."""
    own_method, own_target, front = how(method, target)
    request = http_request(own_method, own_target, [*front, *headers])
    if own_method in ("POST", "PUT", "PATCH") and how is envoy:
        # http_request adds its own Content-Length for these: Envoy's is the one above.
        request = http_request(own_method, own_target, [*headers], body=b"")
    return await raw_request(gateway.proxy_port, request)


def header(response: RawResponse, name: str) -> str | None:
    """The single value of a header (None when absent); fails when it is repeated."""
    values = response.header_values(name)
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


def assert_refused(response: RawResponse, status: int, code: str) -> None:
    """A refusal as forward-auth answers it: status, JSON error, reason header, no-store."""
    assert response.status == status, (response.status, response.body)
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert header(response, "X-Keygate-Reason") == code
    assert header(response, "Cache-Control") == "no-store"
    assert header(response, "X-Acting-User") is None
    assert header(response, SIGNATURE_HEADER) is None
    assert header(response, "X-Keygate-Key-Id") is None


async def key_id(gateway: RunningGateway, name: str) -> int:
    """The id of the stored key called `name`."""
    row = await gateway.runtime.store.get_key_by_name(name)
    assert row is not None
    return int(row.id)


@pytest.mark.parametrize("how", ASKS)
async def test_an_allowed_key_gets_200_with_its_signed_acting_user_and_id(
    gateway: RunningGateway, upstream: Upstream, how: str
) -> None:
    secret = await add_key(gateway, "reader-bot", [READER_ROLE])
    target = f"{SESSIONS}?page=2&sort=name"
    response = await ask(gateway, ASKS[how], "GET", target, [("X-API-Key", secret)])
    assert response.status == 200, response.body
    assert response.body == b""
    assert header(response, "X-Acting-User") == "reader-bot"
    assert header(response, "X-Keygate-Key-Id") == str(await key_id(gateway, "reader-bot"))
    assert header(response, "Cache-Control") == "no-store"
    assert header(response, "X-Keygate-Reason") is None
    signed = header(response, SIGNATURE_HEADER)
    assert signed is not None
    keys = {SIGNING_ID: SIGNING_SECRET}
    # Signed over the original method and target, exactly as the proxy signs what it forwards.
    assert verify_acting_user(signed, "GET", target, "reader-bot", keys)
    assert not verify_acting_user(signed, "GET", f"{PREFIX}nginx", "reader-bot", keys)
    assert not verify_acting_user(signed, "DELETE", target, "reader-bot", keys)
    assert not verify_acting_user(signed, "GET", target, SPOOF, keys)
    assert upstream.seen == []


async def test_the_signature_matches_what_the_proxy_sends_for_the_same_request(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    secret = await add_key(gateway, "both-ways", [READER_ROLE])
    target = f"{SESSIONS}?a=1"
    decided = await ask(gateway, nginx, "GET", target, [("X-API-Key", secret)])
    keys = {SIGNING_ID: SIGNING_SECRET}
    signed = header(decided, SIGNATURE_HEADER)
    assert signed is not None and signed.split(",")[1] == f"kid={SIGNING_ID}"
    proxied = await raw_request(
        gateway.proxy_port, http_request("GET", target, [("X-API-Key", secret)])
    )
    assert proxied.status == 200
    assert upstream.seen == [f"GET {target}"]  # only the proxied request arrived
    assert verify_acting_user(signed, "GET", target, "both-ways", keys)


@pytest.mark.parametrize("how", ASKS)
async def test_a_key_whose_roles_do_not_allow_the_original_request_is_refused(
    gateway: RunningGateway, upstream: Upstream, how: str
) -> None:
    secret = await add_key(gateway, "read-only", [READER_ROLE])
    # The decision request itself is a GET; the original is a DELETE the role cannot do.
    response = await ask(gateway, ASKS[how], "DELETE", SESSIONS, [("X-API-Key", secret)])
    assert_refused(response, 403, "forbidden")
    elsewhere = await ask(gateway, ASKS[how], "GET", f"{REST}/rules/r1", [("X-API-Key", secret)])
    assert_refused(elsewhere, 403, "forbidden")
    assert upstream.seen == []


# The classic forward-auth bypasses, sent as the original target: each must be refused for a
# key that may call everything but key management.
PROTECTED_VARIANTS = [
    f"{REST}/apikeys",
    f"{REST}/apikeys/",
    f"{REST}/apikeys/7",
    f"{REST}/apikeys?x=1",
    f"/{REST}/apikeys",  # //
    f"{REST}//apikeys",
    f"{REST}%2Fapikeys",
    f"{REST}%2fapikeys/7",
    f"{REST}/x/..;/apikeys",
    f"{REST}/x/../apikeys",
    f"{REST}/./apikeys",
    f"{REST}/%2e%2e/rest/apikeys",
    f"{REST}/apikeys;jsessionid=0123",
    f"{REST}/apikeys%3Bjsessionid=0123",
    f"{REST}/APIKEYS",
    f"{REST}/ApiKeys/7",
    f"{REST}/apikeys.",
    f"{REST}/apikeys%2E",
    f"{REST}/apikeys.json",
    f"{REST}/apikeys%20",
    f"{REST}/apikeys%00",
    f"{REST}/api%6Beys",
    f"{REST}\\apikeys",
]


@pytest.mark.parametrize("how", ASKS)
async def test_protected_paths_and_their_variants_are_refused_on_every_endpoint(
    gateway: RunningGateway, upstream: Upstream, how: str
) -> None:
    secret = await add_key(gateway, "everything", [ALL_ROLE])
    for target in PROTECTED_VARIANTS:
        response = await ask(gateway, ASKS[how], "GET", target, [("X-API-Key", secret)])
        assert response.status != 200, target
        code = response.json()["error"]
        assert code in ("forbidden_protected", "bad_target"), (target, code)
        # nginx answers 500 for anything but 2xx, 401 and 403: every refusal is a 403 there.
        expected = 400 if code == "bad_target" and how in ("forward", "envoy") else 403
        assert_refused(response, expected, code)
    allowed = await ask(gateway, ASKS[how], "GET", f"{REST}/apikeysx", [("X-API-Key", secret)])
    assert allowed.status == 200  # the variants are refused, not everything near them
    assert upstream.seen == []


@pytest.mark.parametrize("how", ASKS)
async def test_anonymous_callers_pass_without_an_acting_user(
    gateway: RunningGateway, upstream: Upstream, how: str
) -> None:
    response = await ask(gateway, ASKS[how], "GET", SESSIONS, [("X-Acting-User", SPOOF)])
    assert response.status == 200, response.body
    assert response.body == b""
    assert header(response, "X-Acting-User") is None
    assert header(response, SIGNATURE_HEADER) is None
    assert header(response, "X-Keygate-Key-Id") is None
    assert header(response, "Cache-Control") == "no-store"
    assert SPOOF.encode() not in b"".join(f"{n}:{v}".encode() for n, v in response.headers)
    assert upstream.seen == []


@pytest.mark.parametrize("how", ASKS)
async def test_anonymous_deny_answers_401_with_the_challenge(
    tmp_path: Path, upstream: Upstream, how: str
) -> None:
    async with serving(tmp_path, upstream, anonymous="deny") as gateway:
        response = await ask(gateway, ASKS[how], "GET", SESSIONS)
        assert_refused(response, 401, "key_missing")
        assert header(response, "WWW-Authenticate") is not None
    assert upstream.seen == []


@pytest.mark.parametrize("how", ASKS)
async def test_a_revoked_key_is_refused_at_once(
    gateway: RunningGateway, upstream: Upstream, how: str
) -> None:
    secret = await add_key(gateway, "revoke-me", [READER_ROLE])
    before = await ask(gateway, ASKS[how], "GET", SESSIONS, [("X-API-Key", secret)])
    assert before.status == 200
    store = gateway.runtime.store
    await store.set_revoked(await key_id(gateway, "revoke-me"), True, "test")
    await gateway.runtime.apply_own_writes()
    after = await ask(gateway, ASKS[how], "GET", SESSIONS, [("X-API-Key", secret)])
    assert_refused(after, 401, "key_revoked")
    unknown = await ask(gateway, ASKS[how], "GET", SESSIONS, [("X-API-Key", "kg_nope")])
    assert_refused(unknown, 401, "key_malformed")
    assert upstream.seen == []


@pytest.mark.parametrize("how", ASKS)
async def test_rate_limited_keys_get_the_form_their_front_proxy_relays(
    gateway: RunningGateway, upstream: Upstream, how: str
) -> None:
    secret = await add_key(gateway, f"bursty-{how}", [LIMITED_ROLE])
    statuses = []
    last = None
    for _ in range(4):
        last = await ask(gateway, ASKS[how], "GET", SESSIONS, [("X-API-Key", secret)])
        statuses.append(last.status)
    limited = LIMITED_STATUS[how]
    assert statuses == [200, 200, limited, limited]
    assert last is not None
    assert_refused(last, limited, "rate_limited")
    assert int(header(last, "Retry-After") or "0") >= 1
    assert header(last, "RateLimit-Limit") == "2;w=60"
    assert header(last, "RateLimit-Remaining") == "0"
    assert upstream.seen == []


async def test_an_untrusted_peer_is_refused_and_told_why(
    tmp_path: Path, upstream: Upstream
) -> None:
    trusted = {"trusted_proxies": ["10.0.0.0/8", "fd00::/8"]}
    async with serving(tmp_path, upstream, forward_auth=trusted) as gateway:
        secret = await add_key(gateway, "good-key", [READER_ROLE])
        for how in ASKS.values():
            # Headers naming a trusted address change nothing: only the connection's peer counts.
            spoofed = [
                ("X-API-Key", secret),
                ("X-Real-IP", "10.0.0.1"),
                ("Forwarded", "for=10.0.0.1"),
            ]
            response = await ask(gateway, how, "GET", SESSIONS, spoofed)
            assert_refused(response, 403, "forward_auth_untrusted")
            assert "127.0.0.1 is not in forward_auth.trusted_proxies" in response.json()["message"]
        # Not trusted as a front proxy is not refused as a proxy client: its own requests pass.
        proxied = await raw_request(
            gateway.proxy_port, http_request("GET", SESSIONS, [("X-API-Key", secret)])
        )
        assert proxied.status == 200
    assert upstream.seen == [f"GET {SESSIONS}"]


BAD_NGINX = [
    ([("X-Original-URI", SESSIONS)], "X-Original-Method header is missing"),
    ([("X-Original-Method", "GET")], "X-Original-URI header (or X-Original-URL) is missing"),
    (
        [
            ("X-Original-Method", "GET"),
            ("X-Original-Method", "DELETE"),
            ("X-Original-URI", SESSIONS),
        ],
        "X-Original-Method header is sent more than once",
    ),
    (
        [("X-Original-Method", "GET"), ("X-Original-URI", SESSIONS), ("X-Original-URI", "/")],
        "X-Original-URI header is sent more than once",
    ),
    (
        [("X-Original-Method", ""), ("X-Original-URI", SESSIONS)],
        "X-Original-Method header is empty",
    ),
    (
        [("X-Original-Method", "GET /x"), ("X-Original-URI", SESSIONS)],
        "X-Original-Method header must be one HTTP method",
    ),
    (
        [("X-Original-Method", "G" * 65), ("X-Original-URI", SESSIONS)],
        "X-Original-Method header must be one HTTP method",
    ),
    (
        [("X-Original-Method", "GET"), ("X-Original-URL", SESSIONS)],
        "X-Original-URL header must be an absolute http(s) URL",
    ),
    (
        [("X-Original-Method", "GET"), ("X-Original-URL", f"ftp://h{SESSIONS}")],
        "X-Original-URL header must be an absolute http(s) URL",
    ),
    (
        # ingress-nginx builds the URL from the client's Host: a `?` there would move the
        # original path into the query.
        [("X-Original-Method", "GET"), ("X-Original-URL", f"https://h?x={SESSIONS}")],
        "X-Original-URL header must be an absolute http(s) URL",
    ),
    (
        [("X-Original-Method", "GET"), ("X-Original-URL", f"https://u@h{SESSIONS}")],
        "X-Original-URL header must be an absolute http(s) URL",
    ),
    (
        [
            ("X-Original-Method", "GET"),
            ("X-Original-URI", SESSIONS),
            ("X-Original-URL", f"https://h{REST}/apikeys"),
        ],
        "X-Original-URI and X-Original-URL headers disagree",
    ),
]
BAD_FORWARD = [
    ([("X-Forwarded-Uri", SESSIONS)], "X-Forwarded-Method header is missing"),
    ([("X-Forwarded-Method", "GET")], "X-Forwarded-Uri header is missing"),
    (
        [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", SESSIONS), ("X-Forwarded-Uri", "/")],
        "X-Forwarded-Uri header is sent more than once",
    ),
    (
        [
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", SESSIONS),
            ("X-Forwarded-Proto", "gopher"),
        ],
        "X-Forwarded-Proto header must be http or https",
    ),
    (
        [("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", SESSIONS), ("X-Forwarded-Host", "a/b")],
        "X-Forwarded-Host header must be a host[:port]",
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "headers", "message"),
    [("nginx", h, m) for h, m in BAD_NGINX] + [("forward", h, m) for h, m in BAD_FORWARD],
)
async def test_malformed_front_proxy_requests_are_400_naming_the_header(
    gateway: RunningGateway, upstream: Upstream, endpoint: str, headers: list[Header], message: str
) -> None:
    secret = await add_key(gateway, "well-formed", [ALL_ROLE])
    response = await raw_request(
        gateway.proxy_port,
        http_request("GET", f"{PREFIX}{endpoint}", [*headers, ("X-API-Key", secret)]),
    )
    assert_refused(response, 400, "forward_auth_bad_request")
    assert message in response.json()["message"]
    assert upstream.seen == []


async def test_the_original_target_gets_the_proxy_target_checks(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    secret = await add_key(gateway, "checked", [ALL_ROLE])
    for how in (forward, envoy):
        too_long = await ask(gateway, how, "GET", "/" + "a" * 5000, [("X-API-Key", secret)])
        assert_refused(too_long, 400, "bad_target")
    relative = await ask(gateway, forward, "GET", "sessions/x", [("X-API-Key", secret)])
    assert_refused(relative, 400, "bad_target")
    in_target = await ask(gateway, nginx, "GET", f"{SESSIONS}?api_key={secret}")
    assert_refused(in_target, 403, "key_misplaced")  # 400 on the proxy: nginx needs a 403
    assert secret not in in_target.body.decode()
    assert upstream.seen == []


@pytest.mark.parametrize("how", ASKS)
async def test_method_overrides_are_decided_as_the_proxy_decides_them(
    gateway: RunningGateway, upstream: Upstream, how: str
) -> None:
    secret = await add_key(gateway, "override-me", [READER_ROLE])
    by_header = await ask(
        gateway,
        ASKS[how],
        "GET",
        SESSIONS,
        [("X-API-Key", secret), ("X-HTTP-Method-Override", "DELETE")],
    )
    assert_refused(by_header, 403, "forbidden")
    by_query = await ask(
        gateway, ASKS[how], "GET", f"{SESSIONS}?_method=DELETE", [("X-API-Key", secret)]
    )
    assert_refused(by_query, 403, "forbidden")
    allowed = await ask(
        gateway,
        ASKS[how],
        "GET",
        SESSIONS,
        [("X-API-Key", secret), ("X-HTTP-Method-Override", "GET")],
    )
    assert allowed.status == 200
    assert upstream.seen == []


@pytest.mark.parametrize("how", ASKS)
async def test_client_sent_identity_never_comes_back_in_the_answer(
    gateway: RunningGateway, upstream: Upstream, how: str
) -> None:
    secret = await add_key(gateway, "real-name", [READER_ROLE])
    spoofed = [
        ("X-Acting-User", SPOOF),
        ("x_acting_user", SPOOF),
        (SIGNATURE_HEADER, "t=1,kid=fa1,v1=00"),
        ("X-Keygate-Key-Id", "999"),
        ("X-API-Key", secret),
    ]
    response = await ask(gateway, ASKS[how], "GET", SESSIONS, spoofed)
    assert response.status == 200
    assert header(response, "X-Acting-User") == "real-name"
    assert header(response, "X-Keygate-Key-Id") == str(await key_id(gateway, "real-name"))
    assert "v1=00" not in (header(response, SIGNATURE_HEADER) or "")
    assert SPOOF not in str(response.headers)
    assert upstream.seen == []


async def test_a_key_in_another_header_or_two_credentials_are_refused(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    secret = await add_key(gateway, "careful", [READER_ROLE])
    other = await add_key(gateway, "other", [READER_ROLE])
    in_header = await ask(gateway, forward, "GET", SESSIONS, [("X-Note", f"key {secret}")])
    assert_refused(in_header, 400, "key_misplaced")
    both = await ask(
        gateway,
        forward,
        "GET",
        SESSIONS,
        [("X-API-Key", secret), ("Authorization", f"Bearer {other}")],
    )
    assert_refused(both, 400, "credential_conflict")
    bearer = await ask(gateway, envoy, "GET", SESSIONS, [("Authorization", f"Bearer {secret}")])
    assert bearer.status == 200
    assert header(bearer, "X-Acting-User") == "careful"
    assert upstream.seen == []


# Spellings of the prefix that name no endpoint: answered by keygate (404), never forwarded,
# whether the caller is anonymous (passthrough) or holds a key that may call every path.
PREFIX_VARIANTS = [
    "/_KEYGATE/nginx",
    "/_Keygate/forward",
    "/_keygate/NGINX",
    "/_keygate/nginx/",
    "/_keygate/nginx/x",
    "/_keygate/envoy",
    "/_keygate/other",
    "/_keygate/",
    "/_keygate",
    "/%5Fkeygate/nginx",
    "/%5fKEYGATE/nginx",
    "/_keygat%65/nginx",
    "/_keygate%2Fnginx",
    "/_keygate%2fenvoy/1Integrate/rest/sessions",
    "/_keygate.json/nginx",
    "/_keygate;x=1/nginx",
    "/_keygate./nginx",
    "/_keygate?x=/nginx",
]


@pytest.mark.parametrize("target", PREFIX_VARIANTS)
async def test_prefix_spellings_are_never_forwarded(
    gateway: RunningGateway, upstream: Upstream, target: str
) -> None:
    secret = await add_key(gateway, "all-paths", [ALL_ROLE])
    for headers in ([], [("X-API-Key", secret)]):
        response = await raw_request(
            gateway.proxy_port,
            http_request(
                "GET",
                target,
                [*headers, ("X-Original-Method", "GET"), ("X-Original-URI", SESSIONS)],
            ),
        )
        assert_refused(response, 404, "forward_auth_not_found")
        assert "/_keygate/nginx" in response.json()["message"]
    assert upstream.seen == []


@pytest.mark.parametrize(
    "target", ["//_keygate/nginx", "/./_keygate/nginx", "/x/../_keygate/nginx"]
)
async def test_prefix_spellings_the_target_checks_refuse_stay_refused(
    gateway: RunningGateway, upstream: Upstream, target: str
) -> None:
    response = await raw_request(
        gateway.proxy_port,
        http_request("GET", target, [("X-Original-Method", "GET"), ("X-Original-URI", SESSIONS)]),
    )
    assert response.status == 400
    assert response.json()["error"] == "bad_target"
    assert upstream.seen == []


async def test_a_backend_path_beside_the_prefix_is_still_proxied(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    for target in ("/_keygates/nginx", "/_keygatex", "/keygate/nginx"):
        response = await raw_request(gateway.proxy_port, http_request("GET", target))
        assert response.status == 200
    assert upstream.seen == ["GET /_keygates/nginx", "GET /_keygatex", "GET /keygate/nginx"]


async def test_a_configured_prefix_and_cache_control_are_used(
    tmp_path: Path, upstream: Upstream
) -> None:
    settings = {"prefix": "/auth/check/", "cache_control": "private, max-age=5"}
    async with serving(tmp_path, upstream, forward_auth=settings) as gateway:
        secret = await add_key(gateway, "cached", [READER_ROLE])
        response = await raw_request(
            gateway.proxy_port,
            http_request(
                "GET",
                "/auth/check/nginx",
                [("X-Original-Method", "GET"), ("X-Original-URI", SESSIONS), ("X-API-Key", secret)],
            ),
        )
        assert response.status == 200
        assert header(response, "Cache-Control") == "private, max-age=5"
        old = await raw_request(gateway.proxy_port, http_request("GET", f"{PREFIX}nginx"))
        assert old.status == 200  # the default prefix is an ordinary path now: proxied
        shouted = await raw_request(gateway.proxy_port, http_request("GET", "/AUTH/Check/nginx"))
        assert shouted.status == 404
    assert upstream.seen == [f"GET {PREFIX}nginx"]


async def test_each_decision_writes_one_access_line_marked_as_a_decision(
    gateway: RunningGateway, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keygate.access")
    secret = await add_key(gateway, "logged", [READER_ROLE])
    await ask(gateway, nginx, "GET", f"{SESSIONS}?q=1", [("X-API-Key", secret)])
    await ask(gateway, envoy, "DELETE", SESSIONS, [("X-API-Key", secret)])
    await raw_request(gateway.proxy_port, http_request("GET", f"{PREFIX}forward"))
    lines = [r.getMessage() for r in caplog.records if r.name == "keygate.access"]
    assert len(lines) == 3, lines
    allowed, refused, malformed = lines
    assert f'"GET {SESSIONS}?q=1" 200 ' in allowed
    assert allowed.endswith("key=logged decision=nginx")
    assert f'"DELETE {SESSIONS}" 403 ' in refused
    assert refused.endswith("key=logged decision=envoy")
    # Refused before the original request was known: the front proxy's own request line.
    assert f'"GET {PREFIX}forward" 400 ' in malformed
    assert malformed.endswith("key=- decision=forward")
    assert secret not in "".join(lines)
    assert upstream.seen == []


async def test_allowed_decisions_count_uses_and_metrics(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    secret = await add_key(gateway, "counted", [READER_ROLE])
    ident = await key_id(gateway, "counted")
    for _ in range(3):
        assert (await ask(gateway, forward, "GET", SESSIONS, [("X-API-Key", secret)])).status == 200
    refused = await ask(gateway, forward, "DELETE", SESSIONS, [("X-API-Key", secret)])
    assert refused.status == 403
    metrics = gateway.runtime.metrics
    assert metrics.outcomes["decision_allowed"] == 3
    assert metrics.outcomes["forbidden"] == 1
    deadline = time.monotonic() + 5.0
    uses = 0
    while time.monotonic() < deadline:  # the usage flusher writes every 0.5 s here
        row = await gateway.runtime.store.get_key_by_name("counted")
        assert row is not None and row.id == ident
        uses = row.use_count
        if uses == 3:
            break
        await asyncio.sleep(0.1)
    assert uses == 3
    assert upstream.seen == []


async def test_json_access_records_carry_the_decision_and_the_original_request(
    tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keygate.access")
    async with serving(tmp_path, upstream, log={"format": "json"}) as gateway:
        secret = await add_key(gateway, "json-logged", [READER_ROLE])
        await ask(gateway, forward, "GET", f"{SESSIONS}?k=1", [("X-API-Key", secret)])
    (record,) = [r for r in caplog.records if r.name == "keygate.access"]
    fields = record.__dict__
    assert fields["decision"] == "forward"
    assert (fields["method"], fields["path"], fields["status"]) == ("GET", f"{SESSIONS}?k=1", 200)
    assert fields["key"] == "json-logged"
    assert fields["upstream_status"] is None
    assert upstream.seen == []


async def test_original_request_headers_are_bounded_by_the_proxys_header_limits(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    secret = await add_key(gateway, "bounded", [ALL_ROLE])
    # Over the proxy's line limit (8190 bytes): the parser refuses it, as for any request.
    huge = await ask(gateway, nginx, "GET", "/" + "a" * 9000, [("X-API-Key", secret)])
    assert huge.status == 400 and huge.json()["error"] == "bad_request"
    # Within it but over the target limit (4096 characters): the proxy's target check.
    long = await ask(gateway, nginx, "GET", "/" + "a" * 4100, [("X-API-Key", secret)])
    assert_refused(long, 403, "bad_target")
    assert upstream.seen == []
