"""The config models: YAML line numbers, did-you-mean, strict types, one secret reader,
forward_auth, and the models' shape equal to every shipped config and the README's reference."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, get_args, get_origin

import msgspec
import pytest
import yaml

from gateway.settings import ConfigError, Settings, load_settings, settings_from_data
from gateway.settings.loading import _unwrap
from gateway.settings.models import Section
from gateway.settings.secrets import MAX_SECRET_FILE_BYTES

REPO = Path(__file__).resolve().parent.parent
WHERE = Path("/etc/keygate/gateway.yaml")
MINIMAL: dict[str, Any] = {
    "upstream": {"url": "http://127.0.0.1:9000"},
    "store": {"url": "sqlite:///keygate.db"},
}
KEY = "k" * 40  # a signing key long enough for HMAC-SHA256


def problems_of(data: Any, environ: dict[str, str] | None = None, where: Path = WHERE) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from_data(data, where, environ or {})
    return caught.value.problems


def file_problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    config = tmp_path / "gateway.yaml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ or {})
    return caught.value.problems


# --- line numbers ---------------------------------------------------------------------------


def test_problems_in_a_file_carry_their_yaml_line(tmp_path: Path) -> None:
    text = (
        "listen:\n"  # 1
        "  port: 8080\n"  # 2
        "upstream:\n"  # 3
        '  url: "http://127.0.0.1:9000"\n'  # 4
        "  pool_size: 2.9\n"  # 5
        "  headers:\n"  # 6
        "    X-T: {env: KEYGATE_TEST_UNSET}\n"  # 7
        "store: {url: 'sqlite:///k.db'}\n"  # 8
        "identity:\n"  # 9
        "  signing_keys:\n"  # 10
        "    - {id: a, env: SHORT}\n"  # 11
        "forward_auth:\n"  # 12
        "  trusted_proxies: [10.0.0.0/8, not-a-network]\n"  # 13
    )
    where = tmp_path / "gateway.yaml"
    assert file_problems(tmp_path, text, {"SHORT": "short"}) == [
        f"{where}:5: upstream.pool_size: expected an integer >= 1, got 2.9",
        f"{where}:7: upstream.headers.X-T: environment variable 'KEYGATE_TEST_UNSET' is not set",
        f"{where}:11: identity.signing_keys[0]: the secret must be at least 32 bytes",
        f"{where}:13: forward_auth.trusted_proxies[1]: 'not-a-network' does not appear to be"
        " an IPv4 or IPv6 network (e.g. 10.0.0.0/8)",
    ]


def test_a_missing_required_setting_points_at_its_section(tmp_path: Path) -> None:
    text = "store: {url: 'sqlite:///k.db'}\nupstream:\n  timeout: 5\n"
    assert file_problems(tmp_path, text) == [
        f"{tmp_path / 'gateway.yaml'}:2: upstream.url: is required (e.g. http://127.0.0.1:9000)"
    ]


def test_yaml_anchors_and_merges_still_locate_problems(tmp_path: Path) -> None:
    text = (
        "base: &limits {head_timeout: 10}\n"
        "client:\n"
        "  <<: *limits\n"
        "  max_connections: many\n"
        "store: {url: 'sqlite:///k.db'}\n"
        "upstream: {url: 'http://b'}\n"
    )
    problems = file_problems(tmp_path, text)
    where = tmp_path / "gateway.yaml"
    assert problems == [
        f"{where}:1: base: unknown setting; known: " + ", ".join(known_keys(Settings)),
        f"{where}:4: client.max_connections: expected an integer >= 1, got 'many'",
    ]


def known_keys(model: type[Section]) -> list[str]:
    return [f.name for f in msgspec.structs.fields(model) if f.name not in model.FILLED]


# --- unknown keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"upstream": {"pool_sise": 3}},
            "upstream.pool_sise: unknown setting; did you mean 'pool_size'?",
        ),
        ({"anonymus": "deny"}, "anonymus: unknown setting; did you mean 'anonymous'?"),
        (
            {"forward_auth": {"prefx": "/k/"}},
            "forward_auth.prefx: unknown setting; did you mean 'prefix'?",
        ),
        (
            {"log": {"colour": True}},
            "log.colour: unknown setting; known: level, access_log, format, file",
        ),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion_or_the_known_keys(
    data: dict[str, Any], problem: str
) -> None:
    merged = {**MINIMAL, **data}
    if "upstream" in data:
        merged["upstream"] = {**MINIMAL["upstream"], **data["upstream"]}
    assert problems_of(merged) == [f"{WHERE}: {problem}"]


def test_keys_the_loader_fills_cannot_be_set_in_yaml() -> None:
    problems = problems_of({**MINIMAL, "path": "/elsewhere.yaml", "deferred_secrets": []})
    assert [p.split(": ")[1] for p in problems] == ["path", "deferred_secrets"]
    keys = [{"id": "a", "env": "K", "secret": "inline"}]
    problems = problems_of({**MINIMAL, "identity": {"signing_keys": keys}}, {"K": KEY})
    assert problems == [
        f"{WHERE}: identity.signing_keys[0].secret: unknown setting; known: id, env, file"
    ]


def test_every_unknown_key_and_bad_type_is_reported_not_just_the_first() -> None:
    data = {
        "upstream": {"url": "http://b", "retries": 1, "pool_size": "3", "timeout": True},
        "store": {"url": "sqlite:///k.db", "pool": 2},
        "listen": {"port": 1.5, "hots": "x"},
        "client": {"max_connections": 2.0},
    }
    located = [p.split(": ")[1] for p in problems_of(data)]
    assert located == [
        "listen.hots",
        "listen.port",
        "upstream.retries",
        "upstream.timeout",
        "upstream.pool_size",
        "store.pool",
        "client.max_connections",
    ]


# --- strict types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"), [(2.9, "2.9"), (2.0, "2.0"), (True, "true"), ("3", "'3'")]
)
def test_integers_are_strict(value: Any, shown: str) -> None:
    data = {**MINIMAL, "upstream": {**MINIMAL["upstream"], "pool_size": value}}
    assert problems_of(data) == [
        f"{WHERE}: upstream.pool_size: expected an integer >= 1, got {shown}"
    ]


@pytest.mark.parametrize("value", [True, "2", None, [1]])
def test_numbers_are_strict_but_take_integers(value: Any) -> None:
    bad = {**MINIMAL, "usage": {"flush_interval": value}}
    assert len(problems_of(bad)) == 1
    good = settings_from_data({**MINIMAL, "usage": {"flush_interval": 3}}, WHERE, {})
    assert good.usage.flush_interval == 3.0 and isinstance(good.usage.flush_interval, float)


@pytest.mark.parametrize("value", [1, "true", "yes", None])
def test_booleans_are_strict(value: Any) -> None:
    assert problems_of({**MINIMAL, "policy_watch": value}) == [
        f"{WHERE}: policy_watch: expected true or false, got {_shown(value)}"
    ]


def _shown(value: Any) -> str:
    return "null" if value is None else repr(value)


def test_a_mapping_of_names_refuses_keys_that_are_not_text() -> None:
    headers = {1: {"value": "x"}, "X-Ok": {"value": "y"}}
    data = {**MINIMAL, "upstream": {"url": "http://b", "headers": headers}}
    assert problems_of(data) == [f"{WHERE}: upstream.headers.1: expected a name, got 1"]


def test_an_empty_section_takes_its_defaults() -> None:
    settings = settings_from_data({**MINIMAL, "listen": None, "forward_auth": None}, WHERE, {})
    assert (settings.listen.port, settings.forward_auth.prefix) == (8080, "/_keygate/")


# --- the one secret reader ------------------------------------------------------------------


def _secret_config(source: dict[str, str]) -> dict[str, Any]:
    """One secret source used as a signing key, a webhook secret and the store password."""
    return {
        "upstream": {"url": "http://b"},
        "store": {"url": "postgresql://keygate@db/keygate", "password": source},
        "identity": {"signing_keys": [{"id": "k", **source}]},
        "notify": {"webhooks": [{"url": "http://127.0.0.1:9/h", "secret": source}]},
    }


# Each raw secret and what every reader must make of it (None: refused, by every reader).
SECRET_CASES = [
    (KEY + "\n", KEY),
    (KEY + "\r\n", KEY),
    (KEY, KEY),
    (KEY + "\n\n", None),  # only one newline is the file's; the other would be the secret's
    (KEY + "\r\n\r\n", None),
    (KEY + "\r", None),
    (KEY[:20] + "\r" + KEY[20:], None),
    (KEY[:20] + "\t" + KEY[20:], None),
    ("\n", None),
    ("", None),
]


@pytest.mark.parametrize(("raw", "read"), SECRET_CASES)
@pytest.mark.parametrize("kind", ["file", "env"])
def test_every_secret_is_read_the_same_way(
    tmp_path: Path, kind: str, raw: str, read: str | None
) -> None:
    """A CRLF (or doubled-newline) secret once gave a signing key, a webhook secret and the
    store password different bytes; now one reader serves all three, alike."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(raw.encode())
    secret_file.chmod(0o600)
    source = {"file": "secret"} if kind == "file" else {"env": "KEYGATE_TEST_SECRET"}
    data = _secret_config(source)
    environ = {"KEYGATE_TEST_SECRET": raw}
    if read is None:
        with pytest.raises(ConfigError) as caught:
            settings_from_data(data, tmp_path / "gateway.yaml", environ)
        located = sorted(p.split(": ")[1] for p in caught.value.problems)
        assert located == [
            "identity.signing_keys[0]",
            "notify.webhooks[0].secret",
            "store.password",
        ]
        assert all(KEY not in problem for problem in caught.value.problems)
        return
    settings = settings_from_data(data, tmp_path / "gateway.yaml", environ)
    assert settings.identity.signing_keys[0].secret == read.encode()
    assert settings.notify.webhooks[0].secret == read.encode()
    assert settings.store.password == read


def test_a_secret_with_control_characters_is_refused_by_name_not_by_value(tmp_path: Path) -> None:
    data = {**MINIMAL, "upstream": {"url": "http://b", "headers": {"X-T": {"env": "T"}}}}
    assert problems_of(data, {"T": "hunter2\x1b[2J"}) == [
        f"{WHERE}: upstream.headers.X-T: value contains control characters"
    ]
    assert problems_of(data, {"T": ""}) == [f"{WHERE}: upstream.headers.X-T: the secret is empty"]


def test_a_secret_file_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    (tmp_path / "max").write_bytes(b"x" * MAX_SECRET_FILE_BYTES)
    for name in ("big", "max"):
        os.chmod(tmp_path / name, 0o600)
    hooks = [
        {"url": "http://127.0.0.1:9/a", "secret": {"file": "max"}},
        {"url": "http://127.0.0.1:9/b", "secret": {"file": "big"}},
    ]
    with pytest.raises(ConfigError) as caught:
        settings_from_data({**MINIMAL, "notify": {"webhooks": hooks}}, tmp_path / "g.yaml", {})
    assert caught.value.problems == [
        f"{tmp_path / 'g.yaml'}: notify.webhooks[1].secret: "
        f"{str(tmp_path / 'big')!r} is larger than {MAX_SECRET_FILE_BYTES} bytes"
    ]


def test_a_secret_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bin").write_bytes(b"\xff" * 40)
    os.chmod(tmp_path / "bin", 0o600)
    keys = [{"id": "a", "file": "bin"}]
    with pytest.raises(ConfigError) as caught:
        settings_from_data({**MINIMAL, "identity": {"signing_keys": keys}}, tmp_path / "g.yaml", {})
    assert caught.value.problems == [
        f"{tmp_path / 'g.yaml'}: identity.signing_keys[0]: "
        f"{str(tmp_path / 'bin')!r} is not UTF-8 text"
    ]


def test_an_inline_password_is_refused_without_being_shown() -> None:
    data = {**MINIMAL, "store": {"url": "postgresql://k@db/k", "password": "hunter2"}}
    problems = problems_of(data)
    assert problems == [f"{WHERE}: store.password: must be {{env: VARIABLE}} or {{file: path}}"]


# --- forward_auth ---------------------------------------------------------------------------


def test_forward_auth_defaults_and_settings() -> None:
    settings = settings_from_data(MINIMAL, WHERE, {})
    forward = settings.forward_auth
    assert (forward.prefix, forward.cache_control) == ("/_keygate/", "no-store")
    assert forward.networks() == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    custom = {
        "prefix": "/auth/v1/",
        "trusted_proxies": ["10.0.0.0/8", "192.168.1.7", "fd00::/8", "10.0.0.0/8"],
        "cache_control": "private, max-age=5",
    }
    forward = settings_from_data({**MINIMAL, "forward_auth": custom}, WHERE, {}).forward_auth
    # Normalised, each network once.
    assert forward.trusted_proxies == ("10.0.0.0/8", "192.168.1.7/32", "fd00::/8")
    assert forward.networks()[1] == ipaddress.ip_network("192.168.1.7/32")
    assert (forward.prefix, forward.cache_control) == ("/auth/v1/", "private, max-age=5")
    none = settings_from_data({**MINIMAL, "forward_auth": {"trusted_proxies": []}}, WHERE, {})
    assert none.forward_auth.networks() == ()


PREFIX_PROBLEM = (
    "forward_auth.prefix: must start and end with '/', hold path segments of letters, digits, "
    "'.', '_', '~' or '-' (none starting with '.'), at most 128 characters"
)
CACHE_CONTROL_PROBLEM = (
    "forward_auth.cache_control: must be printable ASCII (no CR or LF), at most 256 characters"
)


@pytest.mark.parametrize(
    ("forward_auth", "problem"),
    [
        *(
            ({"prefix": prefix}, PREFIX_PROBLEM)
            for prefix in (
                "_keygate/",
                "/_keygate",
                "/",
                "//x/",
                "/a/../b/",
                "/./",
                "/.hidden/",
                "/a%2e/",
                "/a%2Fb/",
                "/a;b/",
                "/a b\u00e9/",
                "/" + "a" * 200 + "/",
            )
        ),
        ({"prefix": ""}, "forward_auth.prefix: expected a non-empty string, got ''"),
        ({"prefix": 5}, "forward_auth.prefix: expected a non-empty string, got 5"),
        (
            {"trusted_proxies": ["10.0.0.0/8", "10.0.0.0/33"]},
            "forward_auth.trusted_proxies[1]: '10.0.0.0/33' does not appear to be an IPv4 or "
            "IPv6 network (e.g. 10.0.0.0/8)",
        ),
        (
            {"trusted_proxies": ["10.0.0.1/8"]},  # host bits set: a typo more often than not
            "forward_auth.trusted_proxies[0]: 10.0.0.1/8 has host bits set (e.g. 10.0.0.0/8)",
        ),
        (
            {"trusted_proxies": ["localhost"]},
            "forward_auth.trusted_proxies[0]: 'localhost' does not appear to be an IPv4 or "
            "IPv6 network (e.g. 10.0.0.0/8)",
        ),
        (
            {"trusted_proxies": "127.0.0.1/32"},
            "forward_auth.trusted_proxies: expected a list, got '127.0.0.1/32'",
        ),
        (
            {"trusted_proxies": [7]},
            "forward_auth.trusted_proxies[0]: expected a non-empty string, got 7",
        ),
        ({"cache_control": "no-store\r\nSet-Cookie: a=b"}, CACHE_CONTROL_PROBLEM),
        ({"cache_control": "no-store\n"}, CACHE_CONTROL_PROBLEM),
        ({"cache_control": "max-age=5 \u00fc"}, CACHE_CONTROL_PROBLEM),
        ({"cache_control": "x" * 257}, CACHE_CONTROL_PROBLEM),
        ({"cache_control": ""}, "forward_auth.cache_control: expected a non-empty string, got ''"),
    ],
)
def test_bad_forward_auth_settings_are_located(forward_auth: dict[str, Any], problem: str) -> None:
    assert problems_of({**MINIMAL, "forward_auth": forward_auth}) == [f"{WHERE}: {problem}"]


_SIGNER = {"jwks_url": "https://login.example/certs", "issuer": "https://login.example"}
_GRANTS = {"allowed_groups": ["ops"], "roles": {"ops": ["reader"]}}


@pytest.mark.parametrize(
    ("sign_in", "problem"),
    [
        ({"methods": []}, "admin.sign_in.methods: expected a non-empty list of local, oidc"),
        (
            {
                "methods": ["backend"],
                "grants": _GRANTS,
                "backend": {"token_url": "http://b/t", **_SIGNER, "algorithms": []},
            },
            "admin.sign_in.backend.algorithms: expected a non-empty list of algorithms",
        ),
        ({"methods": ["local", "local"]}, "admin.sign_in.methods: lists a method twice"),
        (
            {
                "methods": ["oidc"],
                "grants": _GRANTS,
                "oidc": {
                    "issuer": "https://login.example",
                    "client_id": "keygate",
                    "redirect_url": "https://k.example/api/v1/session/oidc/callback",
                    "access_token_audience": "keygate",
                },
            },
            "admin.sign_in.oidc.access_token_audience: must be the API's own audience",
        ),
        (
            {"methods": ["backend"], "grants": _GRANTS},
            "admin.sign_in.backend: is required when methods lists backend",
        ),
        (
            {"methods": ["local"], "backend": {"token_url": "http://b/t", **_SIGNER}},
            "admin.sign_in.backend: is set but methods does not list backend",
        ),
        (
            {"methods": ["backend"], "backend": {"token_url": "http://b/t", **_SIGNER}},
            "admin.sign_in.grants.allowed_groups: must list the groups that may sign in",
        ),
        (
            {"methods": ["backend"], "grants": _GRANTS, "backend": {"token_url": "http://b/t"}},
            "admin.sign_in.backend: needs exactly one of jwks_url and public_key_file",
        ),
        (
            {
                "methods": ["backend"],
                "grants": _GRANTS,
                "backend": {"token_url": "ftp://b/t", **_SIGNER},
            },
            "admin.sign_in.backend.token_url: 'ftp://b/t' must be an http:// or https:// URL",
        ),
        (
            {
                "methods": ["backend"],
                "grants": _GRANTS,
                "backend": {"token_url": "http://b/t", **_SIGNER, "algorithms": ["HS256"]},
            },
            "admin.sign_in.backend.algorithms[0]: expected one of",
        ),
        (
            {
                "methods": ["backend"],
                "grants": _GRANTS,
                "backend": {"token_url": "http://b/t", **_SIGNER, "algorithms": ["none"]},
            },
            "admin.sign_in.backend.algorithms[0]: expected one of",
        ),
        (
            {
                "methods": ["trusted_header"],
                "grants": _GRANTS,
                "trusted_header": {"header": "Authorization", **_SIGNER},
            },
            "admin.sign_in.trusted_header.header: must not be Authorization, Cookie or X-API-Key",
        ),
        (
            {
                "methods": ["trusted_header"],
                "grants": _GRANTS,
                "trusted_header": {"trusted_proxies": ["10.0.0.1/8"], **_SIGNER},
            },
            "admin.sign_in.trusted_header.trusted_proxies[0]: 10.0.0.1/8 has host bits set",
        ),
    ],
)
def test_bad_sign_in_settings_are_located(sign_in: dict[str, Any], problem: str) -> None:
    problems = problems_of({**MINIMAL, "admin": {"sign_in": sign_in}})
    assert len(problems) == 1 and problems[0].startswith(f"{WHERE}: {problem}"), problems


def test_a_sign_in_public_key_file_must_be_a_pem_public_key(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    backend = {"token_url": "http://b/t", "public_key_file": "key.pem", "issuer": "b"}
    data = {
        **MINIMAL,
        "admin": {"sign_in": {"methods": ["backend"], "grants": _GRANTS, "backend": backend}},
    }
    where = tmp_path / "gateway.yaml"
    problems = problems_of(data, where=where)
    assert problems == [f"{where}: admin.sign_in.backend.public_key_file: is not a PEM public key"]


# --- the models' shape is the files' shape ----------------------------------------------------


def model_paths(annotation: Any, at: str = "") -> set[str]:
    """Every key path the models accept (list items as `[]`, mapping values as `*`)."""
    inner, _ = _unwrap(annotation)
    args = [a for a in get_args(inner) if a is not type(None)]
    if get_origin(inner) is not None and len(args) == 1 and get_origin(inner) not in (tuple, list):
        return model_paths(args[0], at)  # X | None
    if isinstance(inner, type) and issubclass(inner, Section):
        found: set[str] = set()
        for name in known_keys(inner):
            field = next(f for f in msgspec.structs.fields(inner) if f.name == name)
            path = f"{at}.{name}" if at else name
            found |= {path} | model_paths(field.type, path)
        return found
    if get_origin(inner) in (tuple, list):
        return model_paths(get_args(inner)[0], f"{at}[]")
    return set()


def yaml_paths(value: Any, at: str = "", mapping_values: set[str] | None = None) -> set[str]:
    """Every key path in parsed YAML; the values of a free mapping (headers) are leaves."""
    if isinstance(value, dict):
        if at in (mapping_values or set()):
            return set()
        found: set[str] = set()
        for key, item in value.items():
            path = f"{at}.{key}" if at else str(key)
            found |= {path} | yaml_paths(item, path, mapping_values)
        return found
    if isinstance(value, list):
        return set().union(*(yaml_paths(item, f"{at}[]", mapping_values) for item in value))
    return set()


FREE_MAPPINGS = {"upstream.headers", "admin.sign_in.grants.roles"}
SECRET_LEAVES = {
    "store.url",
    "store.password",
    "notify.webhooks[].url",
    "notify.webhooks[].secret",
    "admin.sign_in.oidc.client_secret",
}


def _readme_config() -> Any:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


SHIPPED = {
    "config/gateway.yaml": lambda: yaml.safe_load((REPO / "config/gateway.yaml").read_text()),
    "deploy/gateway.yaml": lambda: yaml.safe_load((REPO / "deploy/gateway.yaml").read_text()),
    "deploy/fleet/gateway.yaml": lambda: yaml.safe_load(
        (REPO / "deploy/fleet/gateway.yaml").read_text()
    ),
    "deploy/k8s/configmap.yaml": lambda: yaml.safe_load(
        yaml.safe_load((REPO / "deploy/k8s/configmap.yaml").read_text())["data"]["gateway.yaml"]
    ),
    "README.md": _readme_config,
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_config_has_only_keys_the_models_know(name: str) -> None:
    accepted = model_paths(Settings)
    used = {p for p in yaml_paths(SHIPPED[name](), mapping_values=FREE_MAPPINGS)}
    # A secret leaf's own {env|file} keys are its spelling, not settings.
    used = {p for p in used if not any(p.startswith(f"{leaf}.") for leaf in SECRET_LEAVES)}
    assert sorted(used - accepted) == []


def test_the_readme_reference_documents_every_setting_of_the_models() -> None:
    documented = yaml_paths(_readme_config(), mapping_values=FREE_MAPPINGS)
    # Signing keys, the store's PostgreSQL settings and the decision listener have sections
    # of their own.
    elsewhere = {
        "identity.signing_keys",
        "identity.signing_keys[].id",
        "identity.signing_keys[].env",
        "identity.signing_keys[].file",
        "store.password",
        "store.schema",
        "forward_auth.listen.host",  # the README's forward-auth section shows them
        "forward_auth.listen.port",
    }
    assert sorted(model_paths(Settings) - documented - elsewhere) == []


@pytest.mark.parametrize("name", ["config/gateway.yaml", "deploy/gateway.yaml"])
def test_the_example_configs_load(name: str) -> None:
    settings = load_settings(REPO / name, environ={})
    assert settings.forward_auth.prefix == "/_keygate/"
    assert settings.upstream.url.startswith("http://")


def test_the_settings_repr_shows_no_secret(tmp_path: Path) -> None:
    """Settings reach tracebacks and debug output: their repr names each secret's place but
    never its value, and URLs lose their credentials, path and query (the repr showed the
    signing key, webhook secret, store password and service headers verbatim before)."""
    data = {
        "upstream": {
            "url": "http://b",
            "headers": {"Authorization": {"value": "Basic c2VydmljZTpodW50ZXIy"}},
        },
        "store": {
            "url": "postgresql://keygate:urlpass@db:5432/keygate",
            "password": {"env": "KEYGATE_TEST_SECRET"},
        },
        "identity": {"signing_keys": [{"id": "k", "env": "KEYGATE_TEST_SECRET"}]},
        "rate_limits": {"redis_url": "redis://:redispass@cache:6379/0"},
        "notify": {
            "webhooks": [
                {
                    "url": "https://hooks.example/T0/tokenpath?sig=q",
                    "secret": {"env": "KEYGATE_TEST_SECRET"},
                }
            ]
        },
    }
    settings = settings_from_data(data, tmp_path / "gateway.yaml", {"KEYGATE_TEST_SECRET": KEY})
    shown = repr(settings)
    for secret in (KEY, "c2VydmljZTpodW50ZXIy", "urlpass", "redispass", "tokenpath", "sig=q"):
        assert secret not in shown
    assert "password='<redacted>'" in shown
    assert "url='postgresql://db:5432/…'" in shown
    assert "'Authorization': '<redacted>'" in shown
    assert "redis_url='redis://cache:6379/…'" in shown
    assert settings.store.password == KEY  # the values themselves are intact


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        (
            {"forward_auth": {"listen": {"port": 8081}}},
            "forward_auth.listen.port: 8081 is also admin",
        ),
        ({"admin": {"port": 8080}}, "admin.port: 8080 is also listen"),
        (
            {
                "listen": {"host": "0.0.0.0", "port": 9000},
                "forward_auth": {"listen": {"port": 9000}},
            },
            "forward_auth.listen.port: 9000 is also listen",
        ),
    ],
)
def test_two_listeners_on_one_port_are_refused(sections: dict[str, Any], problem: str) -> None:
    """The decision listener's default once was the admin listener's port (8081): enabling it
    with `listen: {}` failed at start with a bind error instead of a located config problem."""
    found = problems_of({**MINIMAL, **sections})
    assert len(found) == 1 and found[0].startswith(f"{WHERE}: {problem}"), found


def test_the_decision_listener_default_port_is_its_own() -> None:
    settings = settings_from_data({**MINIMAL, "forward_auth": {"listen": {}}}, WHERE, {})
    ports = {settings.listen.port, settings.admin.port}
    assert settings.forward_auth.listen is not None
    assert settings.forward_auth.listen.port not in ports
    # Different addresses may share a port number (0.0.0.0 would be every address).
    other = {"listen": {"host": "127.0.0.1"}, "admin": {"host": "127.0.0.2", "port": 8080}}
    assert settings_from_data({**MINIMAL, **other}, WHERE, {}).admin.port == 8080


@pytest.mark.parametrize("value", [0, 3651, -1, "90", 1.5, None])
def test_usage_keep_days_is_bounded(value: Any) -> None:
    problems = problems_of({**MINIMAL, "usage": {"keep_days": value}})
    assert len(problems) == 1 and "usage.keep_days" in problems[0]


def test_usage_keep_days_defaults_to_ninety() -> None:
    assert settings_from_data(MINIMAL, WHERE, {}).usage.keep_days == 90
    kept = settings_from_data({**MINIMAL, "usage": {"keep_days": 7}}, WHERE, {})
    assert kept.usage.keep_days == 7
