"""Issue 23: OpenID Connect sign-in against a real provider (panva's oidc-provider on loopback).

The admin app runs in this process on a loopback port, a real SQLite store behind it; the
provider is a real Node process (tests/support/oidc_provider.py). The code flow is driven
headlessly through the provider's own login and consent pages; scripts' bearer tokens
through the API. Attack cases: a wrong state, a callback from another browser, a replayed
callback and a replayed code, a provider-issued token re-signed for another issuer or
audience, expired, `none`-signed and HS256-with-the-public-key tokens, a token from another
real provider, a group not allowed to sign in, grants narrowed at the provider, the
provider down (local break-glass still works).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from support.oidc_provider import Client, Provider, provider_login, running_provider
from support.processes import free_port
from test_admin_api import POLICY, ROOT_PASSWORD, TEST_COST
from yarl import URL

from gateway.admin.access_log import AdminAccessLogger
from gateway.admin.app import create_admin_app
from gateway.admin.basic_auth import Authenticator
from gateway.admin.identity import GrantMapping
from gateway.admin.oidc_handlers import FLOW_COOKIE, OIDC_CALLBACK, OIDC_START
from gateway.admin.oidc_sign_in import REGRANT_INTERVAL, OidcSignIn
from gateway.admin.passwords import hash_password
from gateway.admin.sessions import COOKIE, SessionManager
from gateway.admin.throttle import LoginThrottle
from gateway.runtime.context import Runtime
from gateway.settings import settings_from_data
from gateway.store.sqlite import SqliteKeyStore

# Starts a Node process per module (and more for some tests).
pytestmark = pytest.mark.slow

CLIENT_ID = "keygate-test"
SECRET = "keygate-test-client-secret-0123456789"
SECRET_ENV = "KEYGATE_TEST_OIDC_SECRET"
USERS: dict[str, dict[str, Any]] = {
    "alice": {"name": "Alice Admin", "groups": ["kg-admins"]},
    "rita": {"name": "Rita Reader", "groups": ["kg-readers", "staff"]},
    "mallory": {"name": "Mallory", "groups": ["contractors"]},
}
# The API audience of keygate's JWT access tokens, and another API's at the same provider.
API_AUDIENCE = "urn:keygate:admin"
OTHER_API = "urn:example:billing"
CI_CLIENT, CI_SECRET = "ci-deployer", "ci-deployer-secret-0123456789abcdef"
STRANGER_CLIENT = "ci-stranger"  # a workload the mapping names nowhere
GRANTS = {
    "claim": "groups",
    # A CI job's client-credentials token has no user and no groups: its client is the group.
    "allowed_groups": ["kg-admins", "kg-readers", "client:" + CI_CLIENT],
    "roles": {"kg-admins": ["*"], "kg-readers": ["reader"], "client:" + CI_CLIENT: ["reader"]},
}
SESSION = "/api/v1/session"


class Clock:
    """A wall clock the test moves by hand (starts at the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    """The provider (shared by the module) and the admin port its client redirects to."""

    provider: Provider
    port: int

    @property
    def base(self) -> str:
        """The admin listener's address."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def callback(self) -> str:
        """The registered redirect URL."""
        return self.base + OIDC_CALLBACK


def client_for(port: int) -> Client:
    """The test client registration for an admin app on `port`."""
    base = f"http://127.0.0.1:{port}"
    return Client(CLIENT_ID, SECRET, [base + OIDC_CALLBACK], [base + "/"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One provider for the module; each test's admin app listens on the same port."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("oidc-provider")
    clients = [
        client_for(port),
        Client(CI_CLIENT, CI_SECRET, [], workload=True),
        Client(STRANGER_CLIENT, CI_SECRET, [], workload=True),
    ]
    with running_provider(workdir, clients, USERS, resources=[API_AUDIENCE, OTHER_API]) as provider:
        yield Setup(provider, port)


@pytest.fixture(autouse=True)
def fresh_users(setup: Setup) -> None:
    """Every test starts with the module's users and groups."""
    setup.provider.set_users(USERS)


def settings_for(tmp_path: Path, issuer: str, port: int, methods: list[str]) -> Any:
    """The gateway's settings with this provider configured (secret from the environment)."""
    data = {
        "upstream": {"url": "http://127.0.0.1:9"},
        "store": {"url": "sqlite:///keygate.db"},
        "admin": {
            "sign_in": {
                "methods": methods,
                "grants": GRANTS,
                "oidc": {
                    "name": "Test IdP",
                    "issuer": issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": {"env": SECRET_ENV},
                    "redirect_url": f"http://127.0.0.1:{port}{OIDC_CALLBACK}",
                    "scopes": ["openid", "profile", "groups"],
                    "leeway": 0,
                    "name_claim": "name",
                    "access_token_audience": API_AUDIENCE,
                },
            }
        },
    }
    return settings_from_data(data, tmp_path / "gateway.yaml", environ={SECRET_ENV: SECRET})


@dataclass
class Admin:
    """A running admin app and what the test needs of it."""

    runtime: Runtime
    clock: Clock
    oidc: OidcSignIn
    base: str


@pytest.fixture
async def admin(tmp_path: Path, setup: Setup) -> AsyncIterator[Admin]:
    """The admin app with the provider configured, on the registered port."""
    async with serving_admin(tmp_path, setup.provider.issuer, setup.port) as running:
        yield running


class serving_admin:
    """Serve an admin app with OIDC configured on 127.0.0.1:port (async context manager)."""

    def __init__(
        self, tmp_path: Path, issuer: str, port: int, methods: tuple[str, ...] = ("oidc", "local")
    ) -> None:
        self.tmp_path, self.issuer, self.port, self.methods = tmp_path, issuer, port, methods
        self.runner: web.AppRunner | None = None
        self.store: SqliteKeyStore | None = None

    async def __aenter__(self) -> Admin:
        settings = settings_for(self.tmp_path, self.issuer, self.port, list(self.methods))
        self.store = SqliteKeyStore(self.tmp_path / "keygate.db")
        await self.store.open()
        await self.store.add_admin(
            "root", hash_password(ROOT_PASSWORD, n=TEST_COST), (), True, "test-setup"
        )
        runtime = Runtime(settings=settings, store=self.store, policy=POLICY)
        await runtime.load_table()
        clock = Clock()
        sessions = SessionManager(runtime.store, settings.sessions)
        oidc_settings = settings.admin.sign_in.oidc
        assert oidc_settings is not None
        oidc = OidcSignIn(
            oidc_settings, GrantMapping.from_settings(settings.admin.sign_in.grants), clock=clock
        )
        sessions.sources["oidc"] = oidc
        throttle = LoginThrottle(delay_base=0.001, delay_max=0.001)
        authenticator = Authenticator(runtime.store, throttle, dummy_cost=TEST_COST)
        app = create_admin_app(runtime, authenticator=authenticator, sessions=sessions)
        # The access log as `keygate serve` writes it for the admin listener.
        self.runner = web.AppRunner(
            app, access_log=logging.getLogger("keygate.access"), access_log_class=AdminAccessLogger
        )
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return Admin(runtime, clock, oidc, f"http://127.0.0.1:{self.port}")

    async def __aexit__(self, *exc: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.store is not None:
            await self.store.close()


def browser() -> aiohttp.ClientSession:
    """A cookie-keeping HTTP client, as a browser (cookies for IP hosts too)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def start(http: aiohttp.ClientSession, base: str) -> str:
    """Start a sign-in at keygate; return the provider URL it sends the browser to."""
    async with http.get(base + OIDC_START, allow_redirects=False) as answer:
        assert answer.status == 303, await answer.text()
        return answer.headers["Location"]


async def come_back(http: aiohttp.ClientSession, url: str) -> str:
    """Follow the provider's redirect to keygate's callback; return where keygate sends us."""
    async with http.get(url, allow_redirects=False) as answer:
        assert answer.status == 303, await answer.text()
        assert answer.headers["Cache-Control"] == "no-store"
        return answer.headers["Location"]


async def sign_in(http: aiohttp.ClientSession, setup: Setup, user: str) -> str:
    """The whole code flow for `user`; return where keygate finally sends the browser."""
    authorize = await start(http, setup.base)
    callback = await provider_login(http, authorize, user, setup.callback)
    return await come_back(http, callback)


async def who(http: aiohttp.ClientSession, base: str, **headers: str) -> tuple[int, Any]:
    """GET /api/v1/session: (status, body)."""
    async with http.get(base + SESSION, headers=headers) as answer:
        return answer.status, await answer.json()


async def audit(admin: Admin) -> list[dict[str, Any]]:
    """The audit log, newest first, as the admin API shows it."""
    root = {"Authorization": aiohttp.encode_basic_auth("root", ROOT_PASSWORD)}
    async with (
        aiohttp.ClientSession() as http,
        http.get(admin.base + "/api/v1/audit", headers=root) as answer,
    ):
        assert answer.status == 200
        items: list[dict[str, Any]] = (await answer.json())["items"]
        return items


# ------------------------------------------------------------------------ the code flow


async def test_the_code_flow_signs_in_with_grants_from_the_providers_groups(
    setup: Setup, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with browser() as http:
        async with http.get(setup.base + OIDC_START, allow_redirects=False) as started:
            assert started.status == 303
            authorize = started.headers["Location"]
            flow_cookie = started.cookies[FLOW_COOKIE]
        query = parse_qs(urlsplit(authorize).query)
        assert authorize.startswith(setup.provider.issuer + "/auth?")
        assert query["code_challenge_method"] == ["S256"]
        assert query["response_type"] == ["code"]
        assert query["redirect_uri"] == [setup.callback]
        assert len(query["state"][0]) >= 43 and len(query["nonce"][0]) >= 43
        assert SECRET not in authorize
        assert flow_cookie["httponly"] and flow_cookie["samesite"] == "Lax"
        assert flow_cookie["path"] == "/api/v1/session/oidc"
        assert 0 < int(flow_cookie["max-age"]) <= 600

        callback = await provider_login(http, authorize, "rita", setup.callback)
        async with http.get(callback, allow_redirects=False) as back:
            assert back.status == 303 and back.headers["Location"] == "/"
            # The flow cookie is spent; the session cookie is keygate's usual one.
            assert back.cookies[FLOW_COOKIE]["max-age"] == "0"
            session_cookie = back.cookies[COOKIE]
        assert session_cookie["samesite"] == "Strict" and session_cookie["httponly"]
        assert session_cookie["path"] == "/api/v1"
        assert FLOW_COOKIE not in http.cookie_jar.filter_cookies(URL(setup.callback))

        status, body = await who(http, setup.base)
        assert status == 200, body
        assert body["source"] == "oidc" and body["actor"] == "oidc:rita"
        assert body["display_name"] == "Rita Reader"
        assert body["grants"] == ["reader"] and body["grant_all"] is False
        assert set(body["groups"]) == {"kg-readers", "staff"}
        assert body["csrf_token"]

        # A write needs the session's CSRF token, as for a local session.
        key = {"name": "by-oidc", "roles": ["reader"]}
        async with http.post(setup.base + "/api/v1/keys", json=key) as refused:
            assert refused.status == 403
        csrf = {"X-CSRF-Token": body["csrf_token"]}
        async with http.post(setup.base + "/api/v1/keys", json=key, headers=csrf) as made:
            assert made.status == 201, await made.text()
            assert (await made.json())["key"]["created_by"] == "oidc:rita"
        # Rita may not grant what her groups do not map to.
        writer = {"name": "too-much", "roles": ["writer"]}
        async with http.post(setup.base + "/api/v1/keys", json=writer, headers=csrf) as refused:
            assert refused.status == 403

    # Neither the code nor the state reaches a log line (the access line's query is cut).
    code = parse_qs(urlsplit(callback).query)["code"][0]
    assert "GET /api/v1/session/oidc/callback?redacted HTTP/1.1" in caplog.text
    for secret in (code, query["state"][0], query["nonce"][0], SECRET):
        assert secret not in caplog.text
    events = await audit(admin)
    sign_ins = [e for e in events if e["action"] == "admin_sign_in"]
    assert sign_ins and sign_ins[0]["actor"] == "oidc:rita"
    assert sign_ins[0]["details"]["display_name"] == "Rita Reader"


async def test_sign_out_ends_the_session_and_offers_the_providers_logout(
    setup: Setup, admin: Admin
) -> None:
    async with browser() as http:
        assert await sign_in(http, setup, "alice") == "/"
        status, body = await who(http, setup.base)
        assert status == 200
        headers = {"X-CSRF-Token": body["csrf_token"], "Content-Type": "application/json"}
        async with http.delete(setup.base + SESSION, headers=headers) as answer:
            assert answer.status == 204
        assert (await who(http, setup.base))[0] == 401
        async with http.get(setup.base + "/api/v1/session/methods") as answer:
            methods = await answer.json()
        assert methods["oidc"]["name"] == "Test IdP" and methods["local"] is True
        async with http.get(setup.base + methods["oidc"]["logout"], allow_redirects=False) as out:
            assert out.status == 303
            logout = out.headers["Location"]
        assert logout.startswith(setup.provider.issuer + "/session/end?")
        assert parse_qs(urlsplit(logout).query) == {
            "client_id": [CLIENT_ID],
            "post_logout_redirect_uri": [setup.base + "/"],
        }
        # The provider accepts it: its logout page asks to confirm.
        async with http.get(logout) as page:
            assert page.status == 200
            assert "logout" in (await page.text()).lower()


async def test_a_wrong_state_is_refused_and_spends_the_flow(setup: Setup, admin: Admin) -> None:
    async with browser() as http:
        authorize = await start(http, setup.base)
        callback = await provider_login(http, authorize, "alice", setup.callback)
        parts = urlsplit(callback)
        query = parse_qs(parts.query)
        forged = {**{k: v[0] for k, v in query.items()}, "state": secrets.token_urlsafe(32)}
        url = f"{setup.callback}?{urlencode(forged)}"
        assert await come_back(http, url) == "/#sign-in-error=sign_in_expired"
        assert (await who(http, setup.base))[0] == 401
        # The real callback no longer completes either: the failed attempt ended the flow.
        assert await come_back(http, callback) == "/#sign-in-error=sign_in_expired"
        assert (await who(http, setup.base))[0] == 401


async def test_a_callback_from_another_browser_is_refused(setup: Setup, admin: Admin) -> None:
    async with browser() as victim_provider, browser() as attacker:
        # The attacker signs in at the provider and hands the callback URL to someone else.
        authorize = await start(attacker, setup.base)
        callback = await provider_login(attacker, authorize, "mallory", setup.callback)
        assert await come_back(victim_provider, callback) == "/#sign-in-error=sign_in_expired"
        assert (await who(victim_provider, setup.base))[0] == 401


async def test_a_replayed_callback_and_a_replayed_code_are_refused(
    setup: Setup, admin: Admin
) -> None:
    async with browser() as http:
        authorize = await start(http, setup.base)
        flow_value = http.cookie_jar.filter_cookies(URL(setup.callback))[FLOW_COOKIE].value
        callback = await provider_login(http, authorize, "alice", setup.callback)
        assert await come_back(http, callback) == "/"
    async with browser() as replay:
        # The same callback with the flow cookie put back: the flow was used.
        replay.cookie_jar.update_cookies({FLOW_COOKIE: flow_value}, URL(setup.callback))
        assert await come_back(replay, callback) == "/#sign-in-error=sign_in_expired"
        assert (await who(replay, setup.base))[0] == 401
    async with browser() as http:
        # The used code under a fresh flow of this browser: the provider refuses it.
        fresh = await start(http, setup.base)
        state = parse_qs(urlsplit(fresh).query)["state"][0]
        code = parse_qs(urlsplit(callback).query)["code"][0]
        url = f"{setup.callback}?{urlencode({'code': code, 'state': state})}"
        assert await come_back(http, url) == "/#sign-in-error=provider_refused&reason=invalid_grant"
        assert (await who(http, setup.base))[0] == 401


async def test_a_group_not_allowed_to_sign_in_is_refused_and_audited(
    setup: Setup, admin: Admin
) -> None:
    async with browser() as http:
        assert await sign_in(http, setup, "mallory") == "/#sign-in-error=not_allowed"
        assert (await who(http, setup.base))[0] == 401
    refused = [e for e in await audit(admin) if e["action"] == "admin_sign_in_refused"]
    assert refused and refused[0]["actor"] == "oidc:mallory"


async def test_grants_narrowed_at_the_provider_take_effect_and_removal_signs_out(
    setup: Setup, admin: Admin
) -> None:
    async with browser() as http:
        assert await sign_in(http, setup, "alice") == "/"
        status, body = await who(http, setup.base)
        assert status == 200 and body["grant_all"] is True
        setup.provider.set_groups("alice", ["kg-readers"])
        # Within REGRANT_INTERVAL the verified ID token still speaks for her...
        admin.clock.now += REGRANT_INTERVAL / 2
        assert (await who(http, setup.base))[1]["grant_all"] is True
        # ...after it, the session refreshes at the provider and reads the narrowed groups.
        admin.clock.now += REGRANT_INTERVAL
        status, body = await who(http, setup.base)
        assert status == 200, body
        assert body["grant_all"] is False and body["grants"] == ["reader"]
        assert body["groups"] == ["kg-readers"]
        # Removed from every allowed group: signed out at the next refresh.
        setup.provider.set_groups("alice", ["former-staff"])
        admin.clock.now += REGRANT_INTERVAL + 1
        status, body = await who(http, setup.base)
        assert status == 401, body
        assert (await who(http, setup.base))[0] == 401


async def test_the_provider_down_is_a_clear_message_and_local_break_glass_still_works(
    tmp_path: Path,
) -> None:
    port = free_port()
    with contextlib.ExitStack() as provider_running:
        provider = provider_running.enter_context(
            running_provider(tmp_path / "idp", [client_for(port)], USERS)
        )
        async with serving_admin(tmp_path, provider.issuer, port) as running, browser() as http:
            # Up: a sign-in starts at the provider (and its discovery is now cached).
            assert (await start(http, running.base)).startswith(provider.issuer + "/auth?")
            provider_running.close()  # the provider goes away
            async with http.get(running.base + OIDC_START, allow_redirects=False) as answer:
                assert answer.status == 303
                assert answer.headers["Location"] == "/#sign-in-error=provider_unavailable"
            local = {"name": "root", "password": ROOT_PASSWORD}
            async with http.post(running.base + SESSION, json=local) as answer:
                assert answer.status == 200, await answer.text()
                assert (await answer.json())["source"] == "local"


# ------------------------------------------------------------------------ bearer tokens


async def id_token_of(setup: Setup, user: str, client_id: str = CLIENT_ID) -> str:
    """Get a real ID token for `user` from the provider, as a script's CI job would."""
    return (await tokens_of(setup, user, client_id))["id_token"]


async def tokens_of(
    setup: Setup, user: str, client_id: str = CLIENT_ID, resource: str | None = None
) -> dict[str, str]:
    """Sign `user` in at the provider (code flow); return the token endpoint's answer."""
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = {
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": setup.callback,
        "scope": "openid profile groups" + (" api" if resource else ""),
        "state": "s",
        "nonce": "n",
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    if resource is not None:
        query["resource"] = resource
    issuer = setup.provider.issuer
    async with browser() as http:
        url = await provider_login(http, f"{issuer}/auth?{urlencode(query)}", user, setup.callback)
        code = parse_qs(urlsplit(url).query)["code"][0]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": setup.callback,
            "code_verifier": verifier,
        }
        if resource is not None:
            form["resource"] = resource
        auth = {"Authorization": aiohttp.encode_basic_auth(CLIENT_ID, SECRET)}
        async with http.post(f"{issuer}/token", data=form, headers=auth) as answer:
            assert answer.status == 200, await answer.text()
            answered: dict[str, str] = await answer.json()
            return answered


def claims_of(token: str) -> dict[str, Any]:
    """The claims of a token (unverified: the test only reads what the provider put there)."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def signed(setup: Setup, claims: dict[str, Any], **header: Any) -> str:
    """Sign claims with the provider's own key (as only the provider could)."""
    return jwt.encode(
        claims, setup.provider.key, algorithm="RS256", headers={"kid": setup.provider.kid, **header}
    )


def unsigned(claims: dict[str, Any]) -> str:
    """A `none`-algorithm token (RFC 7519 section 6): header and claims, no signature."""

    def part(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def hs256_with_public_key(setup: Setup, claims: dict[str, Any]) -> str:
    """The algorithm-confusion token: HS256 keyed with the provider's public key PEM."""
    pem = (
        setup.provider.key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    import hmac

    mac = hmac.new(pem.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


async def bearer_status(setup: Setup, token: str) -> tuple[int, Any]:
    """GET /api/v1/session with `Authorization: Bearer <token>`."""
    async with aiohttp.ClientSession() as http:
        return await who(http, setup.base, Authorization=f"Bearer {token}")


async def test_a_providers_id_token_works_as_a_bearer_token(setup: Setup, admin: Admin) -> None:
    token = await id_token_of(setup, "rita")
    status, body = await bearer_status(setup, token)
    assert status == 200, body
    assert body["source"] == "oidc" and body["actor"] == "oidc:rita"
    assert body["grants"] == ["reader"] and body["auth"] == "bearer"
    assert body["csrf_token"] is None


async def test_a_group_not_allowed_is_refused_as_a_bearer_too(setup: Setup, admin: Admin) -> None:
    token = await id_token_of(setup, "mallory")
    status, body = await bearer_status(setup, token)
    assert status == 403, body


@pytest.mark.parametrize(
    "attack",
    ["other_issuer", "other_audience", "expired", "none_algorithm", "hs256_public_key", "garbage"],
)
async def test_forged_and_misdirected_bearer_tokens_are_refused(
    setup: Setup, admin: Admin, attack: str
) -> None:
    genuine = claims_of(await id_token_of(setup, "alice"))
    now = int(time.time())
    if attack == "other_issuer":
        token = signed(setup, {**genuine, "iss": "http://127.0.0.1:1"})
    elif attack == "other_audience":
        token = signed(setup, {**genuine, "aud": "another-client"})
    elif attack == "expired":
        token = signed(setup, {**genuine, "iat": now - 7200, "exp": now - 3600})
    elif attack == "none_algorithm":
        token = unsigned(genuine)
    elif attack == "hs256_public_key":
        token = hs256_with_public_key(setup, genuine)
    else:
        token = "not.a.token"
    # The same claims signed properly are accepted: only the attack differs.
    assert (await bearer_status(setup, signed(setup, genuine)))[0] == 200
    status, body = await bearer_status(setup, token)
    assert status == 401, body
    assert token not in json.dumps(body)


async def test_a_token_from_another_real_provider_is_refused(
    setup: Setup, admin: Admin, tmp_path: Path
) -> None:
    with running_provider(tmp_path / "other", [client_for(setup.port)], USERS) as other:
        foreign = await id_token_of(Setup(other, setup.port), "alice")
    assert claims_of(foreign)["aud"] == CLIENT_ID  # same client id, same user: other issuer
    status, body = await bearer_status(setup, foreign)
    assert status == 401, body


# ------------------------------------------------------------- access tokens (workloads)


async def access_token_of(
    setup: Setup, client_id: str = CI_CLIENT, resource: str = API_AUDIENCE
) -> str:
    """Get a real JWT access token by client credentials, as a CI job's workload would."""
    form = {"grant_type": "client_credentials", "resource": resource, "scope": "api"}
    auth = {"Authorization": aiohttp.encode_basic_auth(client_id, CI_SECRET)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{setup.provider.issuer}/token", data=form, headers=auth) as answer,
    ):
        assert answer.status == 200, await answer.text()
        token: str = (await answer.json())["access_token"]
        return token


async def test_a_ci_jobs_client_credentials_access_token_works_as_a_bearer_token(
    setup: Setup, admin: Admin
) -> None:
    token = await access_token_of(setup)
    claims = claims_of(token)  # the provider's JWT access token (RFC 9068), not an ID token
    assert claims["aud"] == API_AUDIENCE and claims["sub"] == CI_CLIENT
    assert "groups" not in claims
    status, body = await bearer_status(setup, token)
    assert status == 200, body
    assert (body["source"], body["actor"], body["auth"]) == ("oidc", "oidc:ci-deployer", "bearer")
    assert body["groups"] == ["client:ci-deployer"] and body["grants"] == ["reader"]
    assert body["grant_all"] is False
    # It may act within its grants: a key with a role it may grant, audited as the client.
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        made = {"name": "ci-made", "roles": ["reader"]}
        async with http.post(admin.base + "/api/v1/keys", json=made, headers=headers) as answer:
            assert answer.status == 201, await answer.text()
        beyond = {"name": "ci-beyond", "roles": ["writer"]}
        async with http.post(admin.base + "/api/v1/keys", json=beyond, headers=headers) as answer:
            assert answer.status == 403, await answer.text()
    assert any(
        item["actor"] == "oidc:ci-deployer" and item["action"] == "create"
        for item in await audit(admin)
    )


async def test_a_workload_the_mapping_does_not_name_is_refused(setup: Setup, admin: Admin) -> None:
    status, body = await bearer_status(setup, await access_token_of(setup, STRANGER_CLIENT))
    assert status == 403, body


@pytest.mark.parametrize(
    "attack",
    ["other_api", "other_issuer", "expired", "none_algorithm", "user_token_posing_as_client"],
)
async def test_forged_and_misdirected_access_tokens_are_refused(
    setup: Setup, admin: Admin, attack: str
) -> None:
    genuine = claims_of(await access_token_of(setup))
    now = int(time.time())
    if attack == "other_api":  # a real token of the same provider, for another API
        token = await access_token_of(setup, resource=OTHER_API)
        assert claims_of(token)["aud"] == OTHER_API
    elif attack == "other_issuer":
        token = signed(setup, {**genuine, "iss": "http://127.0.0.1:1"})
    elif attack == "expired":
        token = signed(setup, {**genuine, "iat": now - 7200, "exp": now - 3600})
    elif attack == "none_algorithm":
        token = unsigned(genuine)
    else:
        # A user's token issued to the CI client is the user's, not the client's: no
        # `client:` group for it (and this user is in no allowed group).
        token = signed(setup, {**genuine, "sub": "mallory"})
    # The same claims signed properly are accepted: only the attack differs.
    assert (await bearer_status(setup, signed(setup, genuine, typ="at+jwt")))[0] == 200
    status, body = await bearer_status(setup, token)
    assert status == (403 if attack == "user_token_posing_as_client" else 401), body
    assert token not in json.dumps(body)


async def test_an_id_token_is_not_taken_as_an_access_token_nor_the_reverse(
    setup: Setup, admin: Admin
) -> None:
    # An ID token names the client as its audience; one claiming the API's audience must
    # pass the access-token check, which a user token without an allowed group does not.
    id_claims = claims_of(await id_token_of(setup, "mallory"))
    status, body = await bearer_status(setup, signed(setup, {**id_claims, "aud": API_AUDIENCE}))
    assert status == 403, body
    # An access token re-labelled with the client as audience is checked as an ID token:
    # its `sub` is the client, no groups, so it gets no `client:` group and is refused.
    access = claims_of(await access_token_of(setup))
    status, body = await bearer_status(setup, signed(setup, {**access, "aud": CLIENT_ID}))
    assert status == 403, body


async def test_a_users_jwt_access_token_works_with_the_users_groups(
    setup: Setup, admin: Admin
) -> None:
    token = (await tokens_of(setup, "rita", resource=API_AUDIENCE))["access_token"]
    claims = claims_of(token)
    assert claims["aud"] == API_AUDIENCE and claims["sub"] == "rita"
    status, body = await bearer_status(setup, token)
    assert status == 200, body
    assert body["actor"] == "oidc:rita" and body["grants"] == ["reader"]
    assert body["groups"] == ["kg-readers", "staff"]  # no `client:` group: a user's token
