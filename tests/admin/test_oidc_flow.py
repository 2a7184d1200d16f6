"""The OpenID Connect flow cookie, PKCE and discovery checks, as pure functions (no provider)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
import yaml

from gateway.admin import oidc, oidc_flow
from gateway.admin.oidc_flow import Flow, FlowInvalid, UsedStates
from gateway.settings import settings_from_data

KEY = oidc_flow.flow_key("client-secret-for-tests")
NOW = 1_700_000_000.0
ISSUER = "https://id.example.test/realms/main"


def test_pkce_s256_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert oidc_flow.code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_a_new_flow_has_distinct_long_random_values() -> None:
    first, second = oidc_flow.new_flow(NOW), oidc_flow.new_flow(NOW)
    assert len({first.state, first.nonce, first.verifier, second.state}) == 4
    assert len(first.verifier) >= 43  # RFC 7636: 43 to 128 characters
    assert first.expires == NOW + oidc_flow.FLOW_TTL


def test_a_sealed_flow_comes_back_for_its_own_state() -> None:
    flow = oidc_flow.new_flow(NOW)
    value = oidc_flow.seal(flow, KEY)
    assert len(value) <= oidc_flow.MAX_FLOW_COOKIE
    assert oidc_flow.unseal(value, KEY, flow.state, NOW + 1) == flow


@pytest.mark.parametrize(
    "change",
    ["other_state", "tampered", "other_key", "expired", "missing", "huge", "garbage"],
)
def test_a_flow_cookie_is_refused_when_anything_is_off(change: str) -> None:
    flow = oidc_flow.new_flow(NOW)
    value: str | None = oidc_flow.seal(flow, KEY)
    state, key, now = flow.state, KEY, NOW + 1
    assert value is not None
    if change == "other_state":
        state = oidc_flow.new_flow(NOW).state
    elif change == "tampered":
        mac = value.split(".")[1]
        forged = Flow(flow.state, "attacker-nonce", flow.verifier, flow.expires + 10_000)
        value = oidc_flow.seal(forged, KEY).split(".")[0] + "." + mac
    elif change == "other_key":
        key = oidc_flow.flow_key("another-client-secret")
    elif change == "expired":
        now = flow.expires
    elif change == "missing":
        value = None
    elif change == "huge":
        value = value + "A" * oidc_flow.MAX_FLOW_COOKIE
    elif change == "garbage":
        body = base64.urlsafe_b64encode(b"[1,2]").decode().rstrip("=")
        value = body + "." + oidc_flow._mac(KEY, body)
    with pytest.raises(FlowInvalid):
        oidc_flow.unseal(value, key, state, now)


def test_without_a_client_secret_each_process_signs_with_its_own_random_key() -> None:
    assert oidc_flow.flow_key(None) != oidc_flow.flow_key(None)
    assert oidc_flow.flow_key("s") == oidc_flow.flow_key("s")
    assert oidc_flow.flow_key("s") != hashlib.sha256(b"s").digest()


def test_a_flow_is_consumed_once_and_forgotten_after_it_expires() -> None:
    now = [NOW]
    used = UsedStates(clock=lambda: now[0])
    flow = oidc_flow.new_flow(NOW)
    assert used.consume(flow)
    assert not used.consume(flow)
    now[0] = flow.expires + 1
    other = oidc_flow.new_flow(now[0])
    assert used.consume(other)
    assert len(used._until) == 1  # the expired one was dropped


def test_used_states_are_bounded() -> None:
    used = UsedStates(clock=lambda: NOW)
    for _ in range(oidc_flow.MAX_USED_STATES + 5):
        used.consume(oidc_flow.new_flow(NOW))
    assert len(used._until) <= oidc_flow.MAX_USED_STATES


def discovery_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/auth",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/certs",
        "end_session_endpoint": f"{ISSUER}/logout",
        "code_challenge_methods_supported": ["plain", "S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
    }
    document.update(changes)
    return {name: value for name, value in document.items() if value is not None}


def test_discovery_keeps_the_endpoints_and_prefers_basic_client_auth() -> None:
    found = oidc.parse_discovery(discovery_document(), ISSUER)
    assert found.token_endpoint == f"{ISSUER}/token"
    assert found.end_session_endpoint == f"{ISSUER}/logout"
    assert found.token_auth_method == oidc.AUTH_BASIC
    posted = discovery_document(token_endpoint_auth_methods_supported=["client_secret_post"])
    assert oidc.parse_discovery(posted, ISSUER).token_auth_method == oidc.AUTH_POST
    google_like = discovery_document(end_session_endpoint=None)
    assert oidc.parse_discovery(google_like, ISSUER).end_session_endpoint is None


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"issuer": "https://evil.example.test/realms/main"}, "another issuer"),
        ({"issuer": ISSUER + "/"}, "another issuer"),
        ({"token_endpoint": "http://id.example.test/token"}, "not https"),
        ({"jwks_uri": "file:///etc/passwd"}, "not an http"),
        ({"authorization_endpoint": None}, "no authorization_endpoint"),
        ({"authorization_endpoint": 5}, "no authorization_endpoint"),
        ({"code_challenge_methods_supported": ["plain"]}, "PKCE"),
        ({"token_endpoint_auth_methods_supported": ["private_key_jwt"]}, "no client secret"),
    ],
)
def test_discovery_refuses_what_a_sign_in_cannot_trust(
    changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(oidc.ProviderUnavailable, match=reason):
        oidc.parse_discovery(discovery_document(**changes), ISSUER)
    with pytest.raises(oidc.ProviderUnavailable):
        oidc.parse_discovery(["not", "an", "object"], ISSUER)


@pytest.mark.parametrize(
    ("claims", "nonce", "refused"),
    [
        ({"sub": "a", "nonce": "n", "aud": "kg"}, "n", False),
        ({"sub": "a", "aud": "kg"}, None, False),  # a refreshed ID token
        ({"sub": "a", "nonce": "other", "aud": "kg"}, "n", True),
        ({"sub": "a", "aud": "kg"}, "n", True),
        ({"nonce": "n", "aud": "kg"}, "n", True),
        ({"sub": "", "nonce": "n", "aud": "kg"}, "n", True),
        ({"sub": "a", "nonce": "n", "aud": ["kg", "other"]}, "n", True),
        ({"sub": "a", "nonce": "n", "aud": ["kg", "other"], "azp": "other"}, "n", True),
        ({"sub": "a", "nonce": "n", "aud": ["kg", "other"], "azp": "kg"}, "n", False),
    ],
)
def test_an_id_token_must_be_this_sign_ins(
    claims: dict[str, object], nonce: str | None, refused: bool
) -> None:
    if refused:
        with pytest.raises(oidc.IdTokenRefused):
            oidc.check_id_claims(claims, "kg", nonce)
    else:
        oidc.check_id_claims(claims, "kg", nonce)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("invalid_grant", "invalid_grant"),
        ("<script>", "unknown_error"),
        ("x" * 65, "unknown_error"),
        (None, "unknown_error"),
        ("", "unknown_error"),
    ],
)
def test_provider_error_codes_are_repeated_only_when_plain(value: object, code: str) -> None:
    assert oidc.error_code(value) == code


def test_a_missing_provider_skips_with_advice_or_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from support import oidc_provider

    def missing() -> Path:
        raise oidc_provider.ProviderMissing("node or npm is not on PATH")

    monkeypatch.setattr(oidc_provider, "install", missing)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install nodejs npm"):
        oidc_provider.provider_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true and .*oidc_provider.py install"):
        oidc_provider.provider_or_skip()


def readme_oidc_configs() -> list[str]:
    """The YAML blocks of README's OpenID Connect section (Keycloak, Entra ID, Google)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = text.split("### Sign in with OpenID Connect", 1)[1]
    section = re.split(r"\n##+ ", section, maxsplit=1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.S)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_readme_provider_configurations_load(tmp_path: Path, index: int) -> None:
    blocks = readme_oidc_configs()
    assert len(blocks) == 3
    secret = tmp_path / "entra-secret"
    secret.write_text("entra-client-secret\n")
    secret.chmod(0o600)
    data = yaml.safe_load(blocks[index].replace("/etc/keygate/entra-secret", str(secret)))
    data |= {"upstream": {"url": "http://127.0.0.1:9"}, "store": {"url": "sqlite:///k.db"}}
    environ = {"KEYGATE_OIDC_SECRET": "kc-secret", "KEYGATE_GOOGLE_SECRET": "g-secret"}
    settings = settings_from_data(data, tmp_path / "gateway.yaml", environ=environ)
    oidc_settings = settings.admin.sign_in.oidc
    assert oidc_settings is not None and oidc_settings.client_secret
    assert settings.admin.sign_in.methods == ("oidc", "local")
