"""Issue 23: admins sign in with the backend's accounts, behind a sign-in proxy, or with a
bearer token; local accounts stay as break-glass. Real parts: the demo backend on loopback
issuing RS256 tokens (JWKS served), a real SQLite store, the admin app on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from test_admin_api import (
    KEYS,
    POLICY,
    ROOT,
    ROOT_PASSWORD,
    TEST_COST,
    Client,
    ClientFactory,
    assert_documented,
    expect,
    expect_error,
    future,
)

from gateway.admin.app import create_admin_app
from gateway.admin.basic_auth import Authenticator
from gateway.admin.passwords import hash_password
from gateway.admin.sessions import COOKIE, csrf_token
from gateway.admin.throttle import LoginThrottle
from gateway.demo.backend import (
    BASE_PATH,
    DEMO_STATE,
    TOKEN_AUDIENCE,
    TOKEN_ISSUER,
    TOKEN_LIFETIME,
    DemoState,
    create_demo_backend_app,
)
from gateway.runtime.context import Runtime
from gateway.settings import settings_from_data
from gateway.store.sqlite import SqliteKeyStore

SESSION = "/api/v1/session"
JSON = {"Content-Type": "application/json"}
HEADER = "X-Auth-Request-Access-Token"
PASSWORDS = {"ada": "ada-backend-pass-1", "sam": "sam-backend-pass-1", "eve": "eve-backend-pass-1"}
GROUPS = {"ada": ("ops", "staff"), "sam": ("readers",), "eve": ("visitors",)}
GRANTS = {
    "claim": "groups",
    "allowed_groups": ["ops", "readers"],
    "roles": {"ops": ["writer"], "readers": ["reader"]},
}

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture(autouse=True)
def no_cookie_jar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send cookies only where a test says so."""
    monkeypatch.setattr(aiohttp.CookieJar, "filter_cookies", lambda self, url: {})


@pytest.fixture
async def backend(aiohttp_server: ServerFactory) -> TestServer:
    """The demo backend on loopback, with users in groups and real RS256 tokens."""
    app = create_demo_backend_app(users=PASSWORDS, groups=GROUPS)
    return await aiohttp_server(app)


def state_of(server: TestServer) -> DemoState:
    return server.app[DEMO_STATE]  # type: ignore[index]


def backend_url(server: TestServer, path: str) -> str:
    return str(server.make_url(f"{BASE_PATH}/{path}"))


def sign_in_config(
    server: TestServer, *, methods: list[str], trusted: str = "127.0.0.1/32", **backend: Any
) -> dict[str, Any]:
    """admin.sign_in for the demo backend: its token endpoint and JWKS."""
    check = {
        "jwks_url": backend_url(server, "jwks"),
        "issuer": TOKEN_ISSUER,
        "audience": TOKEN_AUDIENCE,
        "leeway": 0,
    }
    config: dict[str, Any] = {"methods": methods, "grants": GRANTS}
    if "backend" in methods:
        config["backend"] = {"token_url": backend_url(server, "token"), **check, **backend}
    if "trusted_header" in methods:
        config["trusted_header"] = {"header": HEADER, "trusted_proxies": [trusted], **check}
    return config


async def runtime_with(tmp_path: Path, sign_in: dict[str, Any]) -> Runtime:
    """A real SQLite store with the local admin root, and the given admin.sign_in."""
    settings = settings_from_data(
        {
            "upstream": {"url": "http://127.0.0.1:9"},
            "store": {"url": "sqlite:///keygate.db"},
            "admin": {"sign_in": sign_in},
        },
        tmp_path / "gateway.yaml",
        environ={},
    )
    store = SqliteKeyStore(tmp_path / "keygate.db")
    await store.open()
    await store.add_admin("root", hash_password(ROOT_PASSWORD, n=TEST_COST), (), True, "setup")
    runtime = Runtime(settings=settings, store=store, policy=POLICY)
    await runtime.load_table()
    return runtime


@pytest.fixture
async def make_client(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[tuple[Client, Runtime]]]]:
    runtimes: list[Runtime] = []

    async def make(sign_in: dict[str, Any]) -> tuple[Client, Runtime]:
        runtime = await runtime_with(tmp_path / str(len(runtimes)), sign_in)
        runtimes.append(runtime)
        throttle = LoginThrottle(delay_base=0.001, delay_max=0.001, lockout_base=0.05)
        auth = Authenticator(runtime.store, throttle, dummy_cost=TEST_COST)
        return await aiohttp_client(create_admin_app(runtime, authenticator=auth)), runtime

    for index in range(3):
        (tmp_path / str(index)).mkdir()
    try:
        yield make
    finally:
        for runtime in runtimes:
            await runtime.store.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_not_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No secret in any log line (message or arguments)."""
    text = "\n".join(record.getMessage() for record in caplog.records)
    for secret in secrets:
        assert secret not in text


async def backend_token(server: TestServer, name: str) -> str:
    """A token from the backend's own token endpoint (as a script would get one)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            backend_url(server, "token"), json={"username": name, "password": PASSWORDS[name]}
        ) as resp,
    ):
        assert resp.status == 200
        return str((await resp.json())["token"])


def forged(
    server: TestServer,
    *,
    key: Any = None,
    algorithm: str = "RS256",
    kid: str | None = None,
    **claims: Any,
) -> str:
    """A token signed as the test says (the backend's key unless another is given)."""
    state = state_of(server)
    now = int(time.time())
    payload = {
        "iss": TOKEN_ISSUER,
        "aud": TOKEN_AUDIENCE,
        "sub": "ada",
        "groups": ["ops"],
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    headers = {"kid": state.kid if kid is None else kid}
    return jwt.encode(
        payload, state.signing_key if key is None else key, algorithm=algorithm, headers=headers
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256_with_public_key(server: TestServer) -> str:
    """The classic confusion attack: HS256 keyed with the signer's public key PEM."""
    pem = (
        state_of(server)
        .signing_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": state_of(server).kid}).encode())
    body = {"iss": TOKEN_ISSUER, "aud": TOKEN_AUDIENCE, "sub": "ada", "groups": ["ops"]}
    payload = b64(json.dumps({**body, "iat": now, "exp": now + 600}).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def none_token() -> str:
    now = int(time.time())
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = {"iss": TOKEN_ISSUER, "aud": TOKEN_AUDIENCE, "sub": "ada", "groups": ["ops"]}
    payload = b64(json.dumps({**body, "iat": now, "exp": now + 600}).encode())
    return f"{header}.{payload}."


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={token}"}


async def backend_sign_in(
    client: Client, name: str, password: str | None = None, **extra: Any
) -> aiohttp.ClientResponse:
    body = {"name": name, "password": PASSWORDS[name] if password is None else password, **extra}
    return await client.post(SESSION, json=body)


# ------------------------------------------------------------------ the backend's accounts


async def test_backend_sign_in_runs_end_to_end_with_grants_from_the_token(
    backend: TestServer, make_client: Any, logs: pytest.LogCaptureFixture
) -> None:
    client, runtime = await make_client(sign_in_config(backend, methods=["local", "backend"]))
    resp = await backend_sign_in(client, "ada", method="backend")
    body = await expect(resp, 200)
    assert_documented(SESSION, "post", 200, body)
    assert (body["source"], body["actor"], body["admin"]) == ("backend", "backend:ada", "ada")
    assert body["groups"] == ["ops", "staff"] and body["grants"] == ["writer"]
    assert body["grant_all"] is False and body["expires_at"] > time.time()
    # The session ends with the backend's token (the password is not kept to renew it), and
    # says so: expires_at is the token's exp, the bound on a group narrowed at the backend.
    assert abs(body["expires_at"] - (time.time() + TOKEN_LIFETIME)) < 30
    token = resp.cookies[COOKIE].value

    who = await expect(await client.get(SESSION, headers=cookie(token)), 200)
    assert_documented(SESSION, "get", 200, who)
    assert (who["source"], who["auth"], who["grants"]) == ("backend", "session", ["writer"])
    headers = {**cookie(token), **JSON, "X-CSRF-Token": csrf_token(token)}
    created = await expect(
        await client.post(
            KEYS,
            json={"name": "by-ada", "roles": ["writer"], "expires_at": future()},
            headers=headers,
        ),
        201,
    )
    assert created["key"]["created_by"] == "backend:ada"
    # Grants come from the token: operator is not among them.
    await expect_error(
        await client.post(KEYS, json={"name": "too-much", "roles": ["operator"]}, headers=headers),
        403,
        "grant_forbidden",
    )
    # Without the CSRF token a cookie write is refused, as for local sessions.
    no_csrf = {**cookie(token), **JSON}
    await expect_error(
        await client.post(KEYS, json={"name": "x", "roles": ["writer"]}, headers=no_csrf),
        403,
        "csrf",
    )
    events = await runtime.store.list_audit(actor="backend:ada")
    sign_ins = [e for e in events if e.action == "admin_sign_in"]
    assert sign_ins and sign_ins[0].details["method"] == "backend"
    assert sign_ins[0].details["display_name"] == "ada"
    # The password is never stored or logged; the token is stored sealed only.
    db = sqlite3.connect(runtime.store.path)  # type: ignore[attr-defined]
    try:
        rows = db.execute("SELECT admin, source, subject, sealed FROM admin_sessions").fetchall()
        dump = "\n".join(line for line in db.iterdump())
    finally:
        db.close()
    assert [(r[0], r[1], r[2]) for r in rows] == [("backend:ada", "backend", "ada")]
    assert PASSWORDS["ada"] not in dump
    backend_tokens = list(state_of(backend).tokens)
    assert backend_tokens and all(t not in dump and t not in str(rows) for t in backend_tokens)
    assert_not_logged(logs, PASSWORDS["ada"], *backend_tokens)

    await expect(await client.delete(SESSION, headers=headers), 204)
    await expect_error(await client.get(SESSION, headers=cookie(token)), 401, "session_ended")


async def test_backend_wrong_password_is_401_without_the_password_anywhere(
    backend: TestServer, make_client: Any, logs: pytest.LogCaptureFixture
) -> None:
    client, runtime = await make_client(sign_in_config(backend, methods=["backend", "local"]))
    wrong = "not-adas-password-9"
    resp = await backend_sign_in(client, "ada", wrong)
    error = await expect_error(resp, 401, "unauthorized")
    assert COOKIE not in resp.cookies and "WWW-Authenticate" not in resp.headers
    assert wrong not in json.dumps(error)
    failed = [e for e in await runtime.store.list_audit() if e.action == "admin_login_failed"]
    assert len(failed) == 1 and wrong not in json.dumps(failed[0].details)
    assert_not_logged(logs, wrong)


async def test_a_group_not_allowed_to_sign_in_is_refused(
    backend: TestServer, make_client: Any
) -> None:
    client, _ = await make_client(sign_in_config(backend, methods=["backend"]))
    resp = await backend_sign_in(client, "eve")
    error = await expect_error(resp, 403, "sign_in_refused")
    assert "groups" in error["message"] and COOKIE not in resp.cookies


async def test_backend_down_is_a_clear_503_and_local_break_glass_still_works(
    backend: TestServer, make_client: Any, logs: pytest.LogCaptureFixture
) -> None:
    config = sign_in_config(backend, methods=["local", "backend"], timeout=1)
    await backend.close()  # nothing listens on its port any more
    client, _ = await make_client(config)
    resp = await backend_sign_in(client, "ada", method="backend")
    error = await expect_error(resp, 503, "sign_in_unavailable")
    assert "not answering" in error["message"] and "local" in error["message"]
    assert_not_logged(logs, PASSWORDS["ada"])
    local = await client.post(
        SESSION, json={"name": "root", "password": ROOT_PASSWORD, "method": "local"}
    )
    body = await expect(local, 200)
    assert (body["source"], body["actor"], body["grant_all"]) == ("local", "local:root", True)


# Seconds past a token's exp before a test counts on it being expired: the sleep runs on the
# monotonic clock, PyJWT reads the wall clock.
PAST_EXPIRY = 0.05
# Seconds a token minted for the expiry test stays valid at least: a sign-in and one request.
SIGN_IN_WINDOW = 0.5
# Seconds such a token lives, by its iat and exp: more than SIGN_IN_WINDOW plus the whole
# second an integer exp may round to, so its iat is never ahead of the real clock.
EXPIRING_LIFETIME = 2


def expiring_soon() -> float:
    """The test backend's clock: a token minted now (EXPIRING_LIFETIME) expires at the first
    whole second at least SIGN_IN_WINDOW ahead, so the test waits 0.5-1.5 s for its end.

    JWT times are whole seconds (PyJWT truncates exp): on the real clock a 1 s token expires
    anywhere from at once (before the sign-in is done) to a second later.
    """
    return math.ceil(time.time() + SIGN_IN_WINDOW) - EXPIRING_LIFETIME + 0.001


async def test_a_session_whose_token_expires_is_signed_out(
    aiohttp_server: ServerFactory, make_client: Any
) -> None:
    app = create_demo_backend_app(
        users=PASSWORDS, groups=GROUPS, token_lifetime=EXPIRING_LIFETIME, clock=expiring_soon
    )
    server = await aiohttp_server(app)
    client, _ = await make_client(sign_in_config(server, methods=["backend"]))
    resp = await backend_sign_in(client, "ada")
    body = await expect(resp, 200)
    assert 0 < body["expires_at"] - time.time() <= SIGN_IN_WINDOW + 1
    token = resp.cookies[COOKIE].value
    await expect(await client.get(SESSION, headers=cookie(token)), 200)
    # The session's expires_at is the token's exp; PyJWT (leeway 0) refuses it from then on.
    await asyncio.sleep(max(0.0, body["expires_at"] - time.time()) + PAST_EXPIRY)
    error = await expect_error(
        await client.get(SESSION, headers=cookie(token)), 401, "session_ended"
    )
    assert "expired" in error["message"]
    # Signed out for good: the session is gone from the store.
    await expect_error(await client.get(SESSION, headers=cookie(token)), 401, "session_ended")


# ------------------------------------------------------------------ bearer tokens (scripts)


async def test_a_bearer_token_from_the_backend_works_for_scripts_and_follows_the_groups(
    backend: TestServer, make_client: Any
) -> None:
    client, _ = await make_client(sign_in_config(backend, methods=["local", "backend"]))
    token = await backend_token(backend, "ada")
    who = await expect(await client.get(SESSION, headers=bearer(token)), 200)
    assert (who["auth"], who["actor"], who["grants"]) == ("bearer", "backend:ada", ["writer"])
    assert who["csrf_token"] is None
    created = await expect(
        await client.post(
            KEYS, json={"name": "ci", "roles": ["writer"]}, headers={**bearer(token), **JSON}
        ),
        201,
    )
    assert created["key"]["created_by"] == "backend:ada"
    # The group is narrowed at the backend: the next token carries the narrower grants.
    state_of(backend).groups["ada"] = ("readers",)
    narrowed = await backend_token(backend, "ada")
    who = await expect(await client.get(SESSION, headers=bearer(narrowed)), 200)
    assert who["grants"] == ["reader"]
    await expect_error(
        await client.post(
            KEYS, json={"name": "ci-2", "roles": ["writer"]}, headers={**bearer(narrowed), **JSON}
        ),
        403,
        "grant_forbidden",
    )
    # Removed from every allowed group: refused at once.
    state_of(backend).groups["ada"] = ("visitors",)
    gone = await backend_token(backend, "ada")
    await expect_error(await client.get(SESSION, headers=bearer(gone)), 403, "sign_in_refused")


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("other_issuer", "another issuer"),
        ("other_audience", "another audience"),
        ("expired", "expired"),
        ("alg_none", "algorithm"),
        ("hs256_public_key", "algorithm"),
        ("tampered", "signature"),
        ("unknown_kid", "does not publish"),
        ("other_key_same_kid", "signature"),
        ("garbage", "well-formed"),
    ],
)
async def test_bearer_tokens_that_must_not_verify_are_401(
    backend: TestServer,
    make_client: Any,
    logs: pytest.LogCaptureFixture,
    attack: str,
    reason: str,
) -> None:
    client, runtime = await make_client(sign_in_config(backend, methods=["local", "backend"]))
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tokens = {
        "other_issuer": lambda: forged(backend, iss="https://evil.example"),
        "other_audience": lambda: forged(backend, aud="someone-else"),
        "expired": lambda: forged(backend, exp=int(time.time()) - 60),
        "alg_none": none_token,
        "hs256_public_key": lambda: hs256_with_public_key(backend),
        "tampered": lambda: (
            forged(backend)[:-4] + ("AAAA" if forged(backend)[-4:] != "AAAA" else "BBBB")
        ),
        "unknown_kid": lambda: forged(backend, key=stranger, kid="not-published"),
        "other_key_same_kid": lambda: forged(backend, key=stranger),
        "garbage": lambda: "not.a.jwt",
    }
    token = tokens[attack]()
    for path, method in ((SESSION, "get"), (KEYS, "get")):
        resp = await client.request(method, path, headers=bearer(token))
        error = await expect_error(resp, 401, "token_invalid")
        assert reason in error["message"], error
        assert token not in json.dumps(error)
    # A forged token for an allowed identity changed nothing and created no session.
    assert await runtime.store.list_sessions() == []
    assert_not_logged(logs, token)


async def test_an_api_key_as_bearer_is_still_refused_and_bearer_needs_a_configured_source(
    backend: TestServer, make_client: Any
) -> None:
    client, _ = await make_client({"methods": ["local"]})
    key = "kg_" + "A" * 36
    await expect_error(await client.get(KEYS, headers=bearer(key)), 403, "api_key_forbidden")
    token = await backend_token(backend, "ada")
    error = await expect_error(await client.get(KEYS, headers=bearer(token)), 401, "unauthorized")
    assert "bearer" in error["message"]


# ------------------------------------------------------------------ behind a sign-in proxy


async def test_a_trusted_proxys_verified_token_header_signs_in_and_follows_the_groups(
    backend: TestServer, make_client: Any
) -> None:
    client, runtime = await make_client(sign_in_config(backend, methods=["trusted_header"]))
    token = await backend_token(backend, "ada")
    who = await expect(await client.get(SESSION, headers={HEADER: token}), 200)
    assert (who["auth"], who["source"], who["actor"]) == ("header", "header", "header:ada")
    assert who["grants"] == ["writer"]
    created = await expect(
        await client.post(
            KEYS, json={"name": "via-proxy", "roles": ["writer"]}, headers={HEADER: token, **JSON}
        ),
        201,
    )
    assert created["key"]["created_by"] == "header:ada"
    # The proxy's next token carries the narrowed groups: the next request has fewer grants.
    state_of(backend).groups["ada"] = ("readers",)
    narrowed = await backend_token(backend, "ada")
    who = await expect(await client.get(SESSION, headers={HEADER: narrowed}), 200)
    assert who["grants"] == ["reader"]
    # A forged header value is refused.
    await expect_error(
        await client.get(SESSION, headers={HEADER: forged(backend, aud="x")}), 401, "token_invalid"
    )
    assert await runtime.store.list_sessions() == []


async def test_the_token_header_from_an_untrusted_peer_is_refused(
    backend: TestServer, make_client: Any
) -> None:
    config = sign_in_config(backend, methods=["local", "trusted_header"], trusted="10.9.0.0/16")
    client, _ = await make_client(config)
    token = await backend_token(backend, "ada")
    error = await expect_error(
        await client.get(SESSION, headers={HEADER: token}), 403, "untrusted_proxy"
    )
    assert "trusted_proxies" in error["message"]
    # Not even with a forwarded-for header naming a trusted address.
    forwarded = {HEADER: token, "X-Forwarded-For": "10.9.0.1", "X-Real-IP": "10.9.0.1"}
    await expect_error(await client.get(SESSION, headers=forwarded), 403, "untrusted_proxy")


@pytest.mark.parametrize(
    "bare", ["X-Auth-Request-User", "X-Forwarded-User", "X-Remote-User", "Remote-User"]
)
async def test_a_bare_user_name_header_never_signs_anyone_in(
    backend: TestServer, make_client: Any, bare: str
) -> None:
    client, _ = await make_client(sign_in_config(backend, methods=["trusted_header"]))
    resp = await client.get(SESSION, headers={bare: "ada", "X-Auth-Request-Email": "ada@x"})
    await expect_error(resp, 401, "unauthorized")
    await expect_error(await client.get(KEYS, headers={bare: "root"}), 401, "unauthorized")


# ------------------------------------------------------------------ local accounts disabled


async def test_local_accounts_disabled_refuse_the_form_and_basic_with_a_clear_message(
    backend: TestServer, make_client: Any
) -> None:
    client, _ = await make_client(sign_in_config(backend, methods=["backend"]))
    form = await client.post(
        SESSION, json={"name": "root", "password": ROOT_PASSWORD, "method": "local"}
    )
    error = await expect_error(form, 403, "sign_in_method_disabled")
    assert "local admin accounts are disabled" in error["message"]
    basic = await expect_error(await client.get(KEYS, headers=ROOT), 403, "sign_in_method_disabled")
    assert "local admin accounts are disabled" in basic["message"]
    await expect_error(await client.get(KEYS), 401, "unauthorized")
    # The form's default is then the backend: root is not a backend account.
    await expect_error(
        await client.post(SESSION, json={"name": "root", "password": ROOT_PASSWORD}),
        401,
        "unauthorized",
    )
    body = await expect(await backend_sign_in(client, "ada"), 200)
    assert body["actor"] == "backend:ada"


async def test_a_local_session_ends_when_local_accounts_are_disabled(
    backend: TestServer, tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    runtime = await runtime_with(tmp_path, {"methods": ["local"]})
    try:
        client = await aiohttp_client(create_admin_app(runtime))
        resp = await client.post(SESSION, json={"name": "root", "password": ROOT_PASSWORD})
        token = (resp.cookies[COOKIE].value, await expect(resp, 200))[0]
        disabled = settings_from_data(
            {
                "upstream": {"url": "http://127.0.0.1:9"},
                "store": {"url": "sqlite:///keygate.db"},
                "admin": {"sign_in": sign_in_config(backend, methods=["backend"])},
            },
            tmp_path / "gateway.yaml",
            environ={},
        )
        runtime.settings = disabled
        other = await aiohttp_client(create_admin_app(runtime))
        error = await expect_error(
            await other.get(SESSION, headers=cookie(token)), 401, "session_ended"
        )
        assert "disabled" in error["message"]
    finally:
        await runtime.store.close()


async def test_a_pem_public_key_verifies_instead_of_a_jwks(
    backend: TestServer, make_client: Any, tmp_path: Path
) -> None:
    pem = (
        state_of(backend)
        .signing_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "0").mkdir(exist_ok=True)
    (tmp_path / "0" / "backend.pem").write_bytes(pem)
    config = sign_in_config(backend, methods=["backend"])
    config["backend"] = {
        **{k: v for k, v in config["backend"].items() if k != "jwks_url"},
        "public_key_file": "backend.pem",
    }
    client, _ = await make_client(config)
    body = await expect(await backend_sign_in(client, "sam"), 200)
    assert (body["actor"], body["grants"]) == ("backend:sam", ["reader"])
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await expect_error(
        await client.get(SESSION, headers=bearer(forged(backend, key=stranger))),
        401,
        "token_invalid",
    )
    await expect_error(
        await client.get(SESSION, headers=bearer(hs256_with_public_key(backend))),
        401,
        "token_invalid",
    )


def _part(data: object) -> str:
    return b64(json.dumps(data).encode())


@pytest.mark.parametrize(
    "value",
    [
        "Bearer",
        "Bearer  ",
        "Bearer a.b",
        "Bearer é.é.é",
        "Bearer " + "x" * 8_000,  # near the listener's header limit (8,190 bytes)
        "Bearer " + _part({"alg": "RS256"}) + "." + _part(["not", "an", "object"]) + ".c2ln",
        "Bearer " + _part(["alg"]) + "." + _part({"sub": "ada"}) + ".c2ln",
        "Bearer " + _part({"alg": ["RS256"]}) + "." + _part({"sub": "ada"}) + ".c2ln",
        "Bearer " + _part({"alg": "RS256", "kid": 5}) + "." + _part({"sub": "ada"}) + ".c2ln",
        "Bearer " + _part({"alg": "RS256", "kid": {"a": 1}}) + "." + _part({}) + ".c2ln",
        "Bearer " + _part({"alg": "RS256"}) + ".%%%." + "c2ln",
        "Bearer x.y.z extra",
    ],
)
async def test_hostile_bearer_values_are_a_clear_4xx_never_a_500(
    backend: TestServer, make_client: Any, value: str, logs: pytest.LogCaptureFixture
) -> None:
    client, runtime = await make_client(sign_in_config(backend, methods=["local", "backend"]))
    resp = await client.get(SESSION, headers={"Authorization": value})
    assert 400 <= resp.status < 500, (resp.status, await resp.text())
    body = await resp.json()
    assert body["error"] and body["message"]
    assert await runtime.store.list_sessions() == []


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": ["ada"]},
        {"sub": {"name": "ada"}},
        {"sub": "ada\nforged log line"},
        {"sub": "x" * 1000},
        {"groups": {"ops": True}},
        {"groups": [1, None, {"a": 1}, "ops"]},
        {"groups": ["ops", *(f"g{n}" for n in range(600))]},  # over MAX_GROUPS
        {"name": ["Ada"]},
        {"exp": "tomorrow"},
        {"iat": "yesterday"},
        {"nbf": 10**20},
    ],
)
async def test_signed_tokens_with_hostile_claims_are_a_clear_4xx_or_sane(
    backend: TestServer, make_client: Any, claims: dict[str, Any]
) -> None:
    client, _ = await make_client(sign_in_config(backend, methods=["local", "backend"]))
    token = forged(backend, **claims)
    resp = await client.get(SESSION, headers=bearer(token))
    assert resp.status != 500, await resp.text()
    body = await resp.json()
    if resp.status == 200:  # only a usable subject and groups may sign in
        assert body["admin"] == "ada" and "ops" in body["groups"]
        assert all(isinstance(group, str) for group in body["groups"])
    else:
        assert 400 <= resp.status < 500 and body["error"], body
