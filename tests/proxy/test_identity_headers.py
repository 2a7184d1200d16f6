"""Identity header hygiene: what the backend receives about who is calling, sent over raw sockets.

Every request here is written byte for byte (header case, `_` spellings and duplicates really
go on the wire) and the demo backend's echo endpoint reports the raw header list it received.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.config import ALL_ROLE, REST, add_key, write_config
from support.http import http_request, raw_request
from support.upstreams import Backend
from test_forwarding import Conn, misbehaving

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import DEFAULT_STRIP_HEADERS, ConfigError, load_settings

ECHO = f"{REST}/_echo/identity"
SPOOF = "mallory"


async def echoed(
    gateway: RunningGateway, headers: list[tuple[str, str]], *, connection: str = "close"
) -> list[tuple[str, str]]:
    """Send GET /_echo with exactly these headers; return the headers the backend received."""
    response = await raw_request(
        gateway.proxy_port,
        http_request("GET", ECHO, headers, host="gateway.example:8443", connection=connection),
    )
    assert response.status == 200, response.body
    return [(name, value) for name, value in response.json()["headers"]]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    """Every value of a header, matching names case-insensitively and `_` as `-`."""
    wanted = name.lower().replace("_", "-")
    return [v for n, v in headers if n.lower().replace("_", "-") == wanted]


@pytest.fixture
async def key(gateway: RunningGateway) -> str:
    """A key named `integration-bot` that may call everything."""
    return await add_key(gateway, "integration-bot", [ALL_ROLE])


SPOOFED_ACTING_USER = [
    [("X-Acting-User", SPOOF)],
    [("x-acting-user", SPOOF)],
    [("X-ACTING-USER", SPOOF)],
    [("x-AcTiNg-uSeR", SPOOF)],
    [("X_Acting_User", SPOOF)],
    [("x_acting-user", SPOOF)],
    [("X-Acting-User", SPOOF), ("X-Acting-User", "admin")],
    [("X-Acting-User", SPOOF), ("x-acting-user", "admin"), ("X_ACTING_USER", "root")],
    [("X-Acting-User", "")],
]


@pytest.mark.parametrize("spoofed", SPOOFED_ACTING_USER)
async def test_exactly_one_acting_user_arrives_and_it_is_the_key_name(
    gateway: RunningGateway, key: str, spoofed: list[tuple[str, str]]
) -> None:
    received = await echoed(gateway, [*spoofed, ("X-API-Key", key)])
    assert values(received, "X-Acting-User") == ["integration-bot"]
    assert SPOOF not in json.dumps(received)


@pytest.mark.parametrize("spoofed", SPOOFED_ACTING_USER)
async def test_anonymous_requests_carry_no_acting_user(
    gateway: RunningGateway, spoofed: list[tuple[str, str]]
) -> None:
    received = await echoed(gateway, spoofed)
    assert values(received, "X-Acting-User") == []
    assert SPOOF not in json.dumps(received)


SESSION_COOKIES = [
    [("Cookie", "JSESSIONID=admin-session")],
    [("cookie", "JSESSIONID=admin-session"), ("Cookie", "theme=dark")],
    [("COOKIE", "JSESSIONID=admin-session")],
    [("Cookie_", "JSESSIONID=admin-session")],
    [("Cookie2", "$Version=1; JSESSIONID=admin-session")],
]


@pytest.mark.parametrize("cookies", SESSION_COOKIES)
async def test_a_key_caller_never_brings_a_backend_session_along(
    gateway: RunningGateway, key: str, cookies: list[tuple[str, str]]
) -> None:
    # A backend session cookie is a second identity: the backend could act as its user
    # instead of the key's name. The key is the identity; the cookie stays behind.
    received = await echoed(gateway, [*cookies, ("X-API-Key", key)])
    assert values(received, "X-Acting-User") == ["integration-bot"]
    assert "admin-session" not in json.dumps(received)
    assert not [n for n, _ in received if n.lower().replace("_", "-").startswith("cookie")]


async def test_an_anonymous_caller_keeps_its_own_backend_session(gateway: RunningGateway) -> None:
    received = await echoed(gateway, [("Cookie", "JSESSIONID=own-session")])
    assert values(received, "Cookie") == ["JSESSIONID=own-session"]


async def test_acting_user_named_in_connection_is_still_set_once(
    gateway: RunningGateway, key: str
) -> None:
    received = await echoed(
        gateway,
        [("X-Acting-User", SPOOF), ("X-API-Key", key)],
        connection="close, x-acting-user",
    )
    assert values(received, "X-Acting-User") == ["integration-bot"]
    anonymous = await echoed(gateway, [("X-Acting-User", SPOOF)], connection="X-Acting-User")
    assert values(anonymous, "X-Acting-User") == []


def _spellings(name: str) -> list[str]:
    return [
        name,
        name.lower(),
        name.upper(),
        name.replace("-", "_"),
        name.lower().replace("-", "_"),
    ]


@pytest.mark.parametrize("header", DEFAULT_STRIP_HEADERS)
async def test_every_strip_header_spelling_is_dropped(
    gateway: RunningGateway, key: str, header: str
) -> None:
    spoofed = [(spelling, SPOOF) for spelling in _spellings(header)]
    for credential in ([("X-API-Key", key)], []):
        received = await echoed(gateway, [*spoofed, *credential])
        assert values(received, header) == []
        assert SPOOF not in json.dumps(received)


async def test_custom_strip_headers_replace_the_defaults(tmp_path: Path, backend: Backend) -> None:
    config = write_config(
        tmp_path / "strip",
        backend.url,
        extra={"identity": {"strip_headers": ["X-Company-User", "X-Forwarded-User"]}},
    )
    async with running_gateway(load_settings(config), serve_admin=False) as running:
        key = await add_key(running, "strip-bot", [ALL_ROLE])
        received = await echoed(
            running,
            [
                ("x_company_user", SPOOF),
                ("X-Company-User", SPOOF),
                ("X-Forwarded-User", SPOOF),
                ("X-API-Key", key),
            ],
        )
    assert values(received, "X-Company-User") == []
    assert values(received, "X-Forwarded-User") == []
    assert values(received, "X-Acting-User") == ["strip-bot"]


async def test_forwarding_headers_are_set_by_the_gateway(gateway: RunningGateway, key: str) -> None:
    spoofed = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("x-forwarded-for", "7.7.7.7"),
        ("X_Forwarded_For", "8.8.8.8"),
        ("X-Forwarded-Proto", "https"),
        ("x_forwarded_proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-FORWARDED-HOST", "evil.example"),
        ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
    ]
    for credential in ([("X-API-Key", key)], []):
        received = await echoed(gateway, [*spoofed, *credential])
        assert values(received, "X-Forwarded-For") == ["127.0.0.1"]
        assert values(received, "X-Forwarded-Proto") == ["http"]
        assert values(received, "X-Forwarded-Host") == ["gateway.example:8443"]
        assert values(received, "Forwarded") == []
        dumped = json.dumps(received)
        assert "6.6.6.6" not in dumped and "evil.example" not in dumped


@pytest.mark.parametrize(
    "credential",
    [
        ("X-API-Key", "{key}"),
        ("x-api-key", "{key}"),
        ("X-API-KEY", "{key}"),
        ("Authorization", "Bearer {key}"),
        ("authorization", "ApiKey {key}"),
    ],
)
async def test_the_credential_never_reaches_the_backend(
    gateway: RunningGateway, key: str, credential: tuple[str, str]
) -> None:
    received = await echoed(gateway, [(credential[0], credential[1].format(key=key))])
    assert values(received, "X-Acting-User") == ["integration-bot"]
    assert values(received, "X-API-Key") == []
    assert values(received, "Authorization") == []
    assert key not in json.dumps(received)
    assert key[:20] not in json.dumps(received)


async def test_an_underscore_api_key_header_is_not_a_credential_and_is_not_forwarded(
    gateway: RunningGateway, key: str
) -> None:
    received = await echoed(gateway, [("X_API_Key", key)])
    assert values(received, "X-Acting-User") == []  # not authenticated: anonymous
    assert key not in json.dumps(received)


@contextlib.asynccontextmanager
async def static_header_gateway(
    tmp_path: Path, backend: Backend, spec: dict[str, dict[str, str]]
) -> AsyncIterator[RunningGateway]:
    """A gateway whose config adds static upstream headers."""
    config = write_config(tmp_path / "static", backend.url, extra={"upstream": {"headers": spec}})
    async with running_gateway(load_settings(config), serve_admin=False) as running:
        yield running


async def test_static_upstream_headers_from_env_replace_client_copies(
    tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "service-secret-1f2e3d"
    monkeypatch.setenv("KEYGATE_TEST_SERVICE_AUTH", secret)
    spec = {
        "X-Service-Auth": {"env": "KEYGATE_TEST_SERVICE_AUTH"},
        "X-Static-Tag": {"value": "keygate"},
    }
    async with static_header_gateway(tmp_path, backend, spec) as running:
        key = await add_key(running, "static-bot", [ALL_ROLE])
        spoofed = [
            ("X-Service-Auth", "client-forged"),
            ("x_service_auth", "client-forged"),
            ("X-STATIC-TAG", "client-forged"),
        ]
        received = await echoed(running, [*spoofed, ("X-API-Key", key)])
        assert values(received, "X-Service-Auth") == [secret]
        assert values(received, "X-Static-Tag") == ["keygate"]
        assert "client-forged" not in json.dumps(received)
        # An anonymous caller gets neither the service's headers nor its own forged copies.
        received = await echoed(running, spoofed)
        assert values(received, "X-Service-Auth") == []
        assert values(received, "X-Static-Tag") == []
        assert "client-forged" not in json.dumps(received) and secret not in json.dumps(received)


async def test_static_header_with_unset_env_var_is_a_config_error(
    tmp_path: Path, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEYGATE_TEST_UNSET_VARIABLE", raising=False)
    config = write_config(
        tmp_path / "unset",
        backend.url,
        extra={"upstream": {"headers": {"X-Service-Auth": {"env": "KEYGATE_TEST_UNSET_VARIABLE"}}}},
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert any(
        "upstream.headers.X-Service-Auth" in p and "KEYGATE_TEST_UNSET_VARIABLE" in p
        for p in raised.value.problems
    )


async def test_custom_acting_user_header(tmp_path: Path, backend: Backend) -> None:
    config = write_config(
        tmp_path / "custom",
        backend.url,
        extra={"identity": {"acting_user_header": "X-Integrate-User"}},
    )
    async with running_gateway(load_settings(config), serve_admin=False) as running:
        key = await add_key(running, "custom-bot", [ALL_ROLE])
        received = await echoed(
            running,
            [("X-Integrate-User", SPOOF), ("x_integrate_user", SPOOF), ("X-API-Key", key)],
        )
    assert values(received, "X-Integrate-User") == ["custom-bot"]
    assert SPOOF not in json.dumps(received)


# ------------------------------------------------------- issue 19.1: the service credential


SERVICE_SECRET = "Basic c2VydmljZTpzM2NyZXQ="  # the service user's own login to the backend
SERVICE_TOKEN = "svc-token-9a8b7c"
# Paths an anonymous caller may try: ordinary, protected (key management), keygate's admin API.
ANONYMOUS_PATHS = [
    f"{REST}/rules",
    f"{REST}/apikeys",
    f"{REST}/apikeys/1",
    f"{REST}/APIKEYS/1",
    "/api/v1/keys",
    "/",
]
# Client-sent copies of the service header names, in every spelling loose readers merge.
FORGED_SERVICE_COPIES = [
    ("X-Service-Token", "forged"),
    ("x-service-token", "forged"),
    ("X_SERVICE_TOKEN", "forged"),
    ("X.Service.Token", "forged"),
    ("x-service-token-", "forged"),
    ("Authorization_", "forged"),
    ("AUTHORIZATION-", "forged"),
]


@contextlib.asynccontextmanager
async def service_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RunningGateway, list[bytes]]]:
    """A gateway whose config sends a service Authorization and token upstream, in front of a
    loopback upstream that records every request head it receives."""
    monkeypatch.setenv("KEYGATE_TEST_SERVICE_AUTHORIZATION", SERVICE_SECRET)
    monkeypatch.setenv("KEYGATE_TEST_SERVICE_TOKEN", SERVICE_TOKEN)
    spec = {
        "Authorization": {"env": "KEYGATE_TEST_SERVICE_AUTHORIZATION"},
        "X-Service-Token": {"env": "KEYGATE_TEST_SERVICE_TOKEN"},
    }
    recorded: list[bytes] = []

    async def record(conn: Conn) -> None:
        while True:  # every request on the connection: remember its head, answer 200
            head, _ = await conn.request()
            recorded.append(head)
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with misbehaving(record) as up:
        config = write_config(tmp_path / "svc", up.url, extra={"upstream": {"headers": spec}})
        async with running_gateway(load_settings(config), serve_admin=False) as running:
            yield running, recorded


def _head_headers(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines if line)]


@pytest.mark.parametrize("path", ANONYMOUS_PATHS)
async def test_an_anonymous_request_never_carries_the_service_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    async with service_gateway(tmp_path, monkeypatch) as (running, recorded):
        for own in ([], [("Authorization", "Bearer own-jwt")]):
            request = http_request("GET", path, [*FORGED_SERVICE_COPIES, *own])
            response = await raw_request(running.proxy_port, request)
            assert response.status == 200, response.body
            head = recorded[-1]
            assert SERVICE_SECRET.encode() not in head and SERVICE_TOKEN.encode() not in head
            assert b"forged" not in head
            received = _head_headers(head)
            # The caller's own login (the backend checks it) passes as sent, nothing else.
            assert values(received, "Authorization") == [v for _, v in own]
            assert values(received, "X-Service-Token") == []


async def test_a_key_caller_carries_the_service_credential_instead_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with service_gateway(tmp_path, monkeypatch) as (running, recorded):
        key = await add_key(running, "service-bot", [ALL_ROLE])
        for credential in (("X-API-Key", key), ("Authorization", f"Bearer {key}")):
            request = http_request("GET", f"{REST}/rules", [*FORGED_SERVICE_COPIES, credential])
            response = await raw_request(running.proxy_port, request)
            assert response.status == 200, response.body
            received = _head_headers(recorded[-1])
            assert values(received, "Authorization") == [SERVICE_SECRET]
            assert values(received, "X-Service-Token") == [SERVICE_TOKEN]
            assert values(received, "X-Acting-User") == ["service-bot"]
            assert b"forged" not in recorded[-1] and key.encode() not in recorded[-1]


# ------------------------------------------------------ issue 19.4: keygate's own cookies

KEYGATE_COOKIES = ["keygate-session", "__Host-keygate-session"]
STOLEN = "Zm9yZ2VkLXNlc3Npb24tdG9rZW4tdGhhdC1tdXN0LW5vdA"


@pytest.mark.parametrize("name", KEYGATE_COOKIES)
@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        (["{c}={t}"], []),
        (["a=1; {c}={t}; b=2"], ["a=1; b=2"]),
        (["{c}={t}; JSESSIONID=own"], ["JSESSIONID=own"]),
        (["JSESSIONID=own;{c}={t}"], ["JSESSIONID=own"]),
        (["theme=dark;  {c}={t};lang=en"], ["theme=dark;lang=en"]),
        (["JSESSIONID=own", "{c}={t}"], ["JSESSIONID=own"]),
        (["{c}={t}; {c}={t}"], []),
    ],
)
async def test_keygates_session_cookie_never_reaches_the_backend(
    gateway: RunningGateway, key: str, name: str, sent: list[str], forwarded: list[str]
) -> None:
    cookies = [("Cookie", value.format(c=name, t=STOLEN)) for value in sent]
    anonymous = await echoed(gateway, cookies)
    # The client's other cookies reach its backend session byte for byte.
    assert values(anonymous, "Cookie") == forwarded
    assert STOLEN not in json.dumps(anonymous) and "keygate-session" not in json.dumps(anonymous)
    keyed = await echoed(gateway, [*cookies, ("X-API-Key", key)])
    assert values(keyed, "Cookie") == []
    assert STOLEN not in json.dumps(keyed)


async def test_keygates_cookie_in_a_cookie_look_alike_is_stripped_too(
    gateway: RunningGateway,
) -> None:
    received = await echoed(gateway, [("Cookie2", f"$Version=1; keygate-session={STOLEN}")])
    assert STOLEN not in json.dumps(received)


# ------------------------------------------- issue 19.8: keys in other Authorization forms

KEYED_FORMS = [
    "Bearer {key}",
    "ApiKey {key}",
    "{key}",
    "Basic {user_only}",
    "Basic {password_only}",
]
REFUSED_FORMS = [
    "Token {key}",
    "Key {key}",
    "X-API-Key {key}",
    'Digest username="{key}"',
    "{key} trailing",
    "Basic {no_colon}",
]


def _forms(form: str, key: str) -> str:
    return form.format(
        key=key,
        user_only=base64.b64encode(f"{key}:".encode()).decode(),
        password_only=base64.b64encode(f"someone:{key}".encode()).decode(),
        no_colon=base64.b64encode(key.encode()).decode(),
    )


@pytest.mark.parametrize("form", KEYED_FORMS)
async def test_a_key_in_an_accepted_authorization_form_is_the_key(
    gateway: RunningGateway, key: str, form: str
) -> None:
    received = await echoed(gateway, [("Authorization", _forms(form, key))])
    assert values(received, "X-Acting-User") == ["integration-bot"]
    assert values(received, "Authorization") == []
    assert key not in json.dumps(received)


@pytest.mark.parametrize("form", REFUSED_FORMS)
async def test_a_key_in_any_other_authorization_form_is_refused_and_not_forwarded(
    gateway: RunningGateway, key: str, form: str
) -> None:
    request = http_request("GET", ECHO, [("Authorization", _forms(form, key))])
    response = await raw_request(gateway.proxy_port, request)
    assert response.status == 400, response.body
    assert response.json()["error"] == "key_misplaced"
    assert key not in response.body.decode()


@pytest.mark.parametrize(
    "header",
    [
        "X-Auth-Token",
        "Cookie",
        "X-Custom",
        "X-Forwarded-Key",
        "Authorization2",
        "X_API_KEY",
        "x.api.key",
        "X-Api-Key-",
        "X-API-Key2",
        "Proxy-Authorization",
    ],
)
async def test_a_key_in_any_other_header_never_reaches_the_backend(
    gateway: RunningGateway, key: str, header: str
) -> None:
    # Either the header is one keygate drops anyway, or the request is refused: never sent on.
    for credential in ([], [("X-API-Key", key)]):
        request = http_request("GET", ECHO, [(header, f"token={key}"), *credential])
        response = await raw_request(gateway.proxy_port, request)
        if response.status == 200:
            assert key not in response.body.decode(), header
        else:
            assert response.status == 400, (header, response.body)
            assert response.json()["error"] == "key_misplaced"


@pytest.mark.parametrize("header", ["X-Auth-Token", "X-Custom", "Authorization2", "X-API-Key2"])
async def test_a_key_in_a_header_that_would_be_forwarded_is_refused(
    gateway: RunningGateway, key: str, header: str
) -> None:
    for credential in ([], [("X-API-Key", key)]):
        request = http_request("GET", ECHO, [(header, f"Bearer {key}"), *credential])
        response = await raw_request(gateway.proxy_port, request)
        assert response.status == 400, (header, response.body)
        assert response.json() == {
            "error": "key_misplaced",
            "message": "an API key goes only in X-API-Key: <key> or Authorization: Bearer <key>",
        }


@pytest.mark.parametrize(
    "target",
    [
        f"{ECHO}?api_key={{key}}",
        f"{ECHO}?a=1&token={{key}}&b=2",
        f"{REST}/_echo/{{key}}",
        f"{ECHO}?api_key={{encoded}}",
        f"{ECHO}?api_key={{twice}}",
    ],
)
async def test_a_key_in_the_target_is_refused_and_never_reaches_the_backend(
    gateway: RunningGateway, key: str, target: str
) -> None:
    """The URL is the backend's to log: a key pasted into it is refused, anonymous or not."""
    body = key[len("kg_") :]
    filled = target.format(key=key, encoded="kg%5F" + body, twice="kg%255F" + body)
    for credential in ([], [("X-API-Key", key)]):
        response = await raw_request(gateway.proxy_port, http_request("GET", filled, credential))
        assert response.status == 400, (filled, response.body)
        assert response.json()["error"] == "key_misplaced"
        assert body not in response.body.decode()
