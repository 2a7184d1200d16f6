"""Behaviour of config loading: the shipped config, located problems, env values, paths."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from gateway.policy.rules import load_policy
from gateway.settings import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    DEFAULT_STRIP_HEADERS,
    ConfigError,
    Settings,
    UpstreamTLS,
    config_path_from,
    is_header_name,
    load_settings,
    settings_from_data,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "gateway.yaml"
WHERE = Path("/etc/keygate/gateway.yaml")
MINIMAL: dict[str, Any] = {
    "upstream": {"url": "http://127.0.0.1:9000"},
    "store": {"url": "sqlite:///keygate.db"},
}


def build(data: Any, environ: dict[str, str] | None = None) -> Settings:
    return settings_from_data(data, WHERE, environ or {})


def problems_of(data: Any, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build(data, environ)
    return caught.value.problems


def with_(**sections: Any) -> dict[str, Any]:
    """MINIMAL with some top-level settings replaced or added."""
    return {**MINIMAL, **sections}


def test_shipped_config_loads_with_its_policy() -> None:
    settings = load_settings(SHIPPED, environ={})
    assert settings.path == SHIPPED.resolve()
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", 8080)
    assert (settings.admin.host, settings.admin.port) == ("127.0.0.1", 8081)
    assert settings.upstream.url == "http://127.0.0.1:9000"
    assert settings.upstream.headers == {}
    assert settings.store.url.startswith("sqlite:///")
    assert settings.policy == (REPO / "config" / "policy.yaml").resolve()
    assert settings.base_dir == SHIPPED.resolve().parent
    assert settings.anonymous == "passthrough"
    assert settings.identity.acting_user_header == "X-Acting-User"
    assert "X-Remote-User" in settings.identity.strip_headers
    assert "1int-admin" in load_policy(settings.policy).roles


def test_minimal_config_takes_the_documented_defaults() -> None:
    # The defaults the README and config/gateway.yaml document, written out here so a changed
    # model default fails this test instead of passing by comparison with itself.
    settings = build(MINIMAL)
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", 8080)
    assert (settings.admin.host, settings.admin.port) == ("127.0.0.1", 8081)
    assert settings.upstream.timeout == 60
    assert settings.upstream.connect_timeout == 5
    assert settings.upstream.pool_size == 256
    assert settings.identity.acting_user_header == "X-Acting-User"
    assert settings.identity.strip_headers == DEFAULT_STRIP_HEADERS
    assert "X-Authenticated-User" in DEFAULT_STRIP_HEADERS
    assert settings.anonymous == "passthrough"
    assert settings.feed.poll_interval == 0.1
    assert settings.usage.flush_interval == 2
    assert settings.shutdown.grace_period == 30
    assert (settings.log.level, settings.log.access_log) == ("info", True)
    assert settings.policy == WHERE.parent / "policy.yaml"
    assert settings.forward_auth.prefix == "/_keygate/"
    assert settings.forward_auth.trusted_proxies == ("127.0.0.1/32", "::1/128")
    assert settings.forward_auth.cache_control == "no-store"


def test_every_problem_is_reported_at_once_with_its_location() -> None:
    data = {
        "listen": {"host": "0.0.0.0", "port": 70000, "backlog": 5},
        "admin": {"port": "8081"},
        "upstream": {
            "url": "http://backend:9000/1Integrate",
            "timeout": -1,
            "retries": 3,
            "headers": {
                "Bad Header": {"value": "x"},
                "X-Service-Token": {"env": "KEYGATE_TEST_MISSING"},
                "X-Injected": {"value": "a\r\nX-Acting-User: admin"},
                "X-Shape": {"env": "A", "value": "b"},
            },
        },
        "store": {"path": "keygate.db"},
        "identity": {"acting_user_header": "X Acting User", "strip_headers": ["ok", "not ok"]},
        "anonymous": "allow",
        "feed": {"poll_interval": 0},
        "log": {"level": "verbose", "access_log": "yes"},
        "shutdown": 30,
        "listener": {},
    }
    problems = problems_of(data)
    assert all(problem.startswith(f"{WHERE}: ") for problem in problems)
    expected = [
        "listener: unknown setting; did you mean 'listen'?",
        "listen.backlog: unknown setting; known: host, port",
        "listen.port: expected an integer 0-65535, got 70000",
        "admin.port: expected an integer 0-65535, got '8081'",
        "upstream.retries: unknown setting",
        "upstream.url: must have no path",
        "upstream.timeout: expected a number >= 0.1, got -1",
        "upstream.headers.Bad Header: is not a valid header name",
        "upstream.headers.X-Service-Token: environment variable 'KEYGATE_TEST_MISSING' is not set",
        "upstream.headers.X-Injected: value contains control characters",
        "upstream.headers.X-Shape: must be {env: VARIABLE} or {value: text}",
        "store.path: unknown setting",
        "store.url: is required",
        "identity.acting_user_header: 'X Acting User' is not a valid header name",
        "identity.strip_headers[1]: 'not ok' is not a valid header name",
        "anonymous: expected one of 'passthrough', 'deny', got 'allow'",
        "feed.poll_interval: expected a number >= 0.01, got 0",
        "log.level: must be debug, info, warning or error",
        "log.access_log: expected true or false, got 'yes'",
        "shutdown: expected a mapping, got 30",
    ]
    for fragment in expected:
        matching = [p for p in problems if f"{WHERE}: {fragment}" in p]
        assert len(matching) == 1, (fragment, problems)
    assert len(problems) == len(expected)


@pytest.mark.parametrize(
    ("port", "shown"),
    [
        (-1, "-1"),
        (65536, "65536"),
        ("8080", "'8080'"),
        (True, "true"),
        (80.5, "80.5"),
        (None, "null"),
    ],
)
def test_bad_ports(port: Any, shown: str) -> None:
    assert problems_of(with_(listen={"port": port})) == [
        f"{WHERE}: listen.port: expected an integer 0-65535, got {shown}"
    ]


def test_port_zero_means_pick_a_free_port() -> None:
    assert build(with_(listen={"port": 0}, admin={"port": 65535})).listen.port == 0


@pytest.mark.parametrize("anonymous", ["Passthrough", "allow", "", None, True, ["deny"]])
def test_bad_anonymous(anonymous: Any) -> None:
    problems = problems_of(with_(anonymous=anonymous))
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{WHERE}: anonymous: expected one of 'passthrough', 'deny', got "
    )


def test_anonymous_deny() -> None:
    assert build(with_(anonymous="deny")).anonymous == "deny"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://backend:9000/1Integrate/rest", "must have no path"),
        ("http://backend:9000?x=1", "must have no path"),
        ("http://backend:9000#top", "must have no path"),
        ("ftp://backend", "must be an http:// or https:// URL with a host"),
        ("backend:9000", "must be an http:// or https:// URL with a host"),
        ("http://", "must be an http:// or https:// URL with a host"),
        ("http://[::1", "is not a valid URL"),
        ("http://backend:99999", "is not a valid URL"),
        ("http://backend:port", "is not a valid URL"),
        ("", "expected a non-empty string, got ''"),
        (9000, "expected a non-empty string, got 9000"),
    ],
)
def test_bad_upstream_urls(url: Any, fragment: str) -> None:
    problems = problems_of(with_(upstream={"url": url}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{WHERE}: upstream.url: ")
    assert fragment in problems[0]


def test_upstream_url_keeps_no_trailing_slash() -> None:
    assert build(with_(upstream={"url": "https://backend:8443/"})).upstream.url == (
        "https://backend:8443"
    )


def test_missing_required_settings_are_each_reported_once() -> None:
    assert problems_of({}) == [
        f"{WHERE}: upstream.url: is required (e.g. http://127.0.0.1:9000)",
        f"{WHERE}: store.url: is required (e.g. sqlite:///keygate.db)",
    ]
    assert problems_of(None) == problems_of({})


@pytest.mark.parametrize(
    "url", ["mysql://db/keygate", "sqlite://relative.db", "keygate.db", "SQLITE:///x.db"]
)
def test_bad_store_urls(url: str) -> None:
    assert problems_of(with_(store={"url": url})) == [
        f"{WHERE}: store.url: must start with sqlite:/// or postgresql:// "
        "(e.g. sqlite:///keygate.db)"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://keygate@db/keygate",
        "postgres://db:5433/keygate?sslmode=verify-full",
        "POSTGRESQL://u:p@[::1]/k?application_name=edge",
    ],
)
def test_postgres_store_urls_are_accepted(url: str) -> None:
    settings = build(with_(store={"url": url}))
    assert (settings.store.url, settings.store.password, settings.store.schema) == (url, None, None)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://db/", "must name one database (postgresql://user@host:5432/database)"),
        ("postgresql:///keygate", "names no server (postgresql://user@host:5432/database)"),
        ("postgresql://db:99999/k", "is not a valid URL: Port out of range 0-65535"),
        (
            "postgresql://db/k?sslmode=maybe",
            "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        (
            "postgresql://db/k?search_path=x",
            "parameter 'search_path' is not supported (only sslmode, application_name)",
        ),
    ],
)
def test_bad_postgres_store_urls(url: str, problem: str) -> None:
    assert problems_of(with_(store={"url": url})) == [f"{WHERE}: store.url: {problem}"]


def test_postgres_password_from_the_environment_or_a_file(tmp_path: Path) -> None:
    url = "postgresql://keygate@db/keygate"
    from_env = settings_from_data(
        with_(store={"url": url, "password": {"env": "DB_PW"}, "schema": "fleet"}),
        tmp_path / "gateway.yaml",
        {"DB_PW": "s3cret"},
    )
    assert (from_env.store.password, from_env.store.schema) == ("s3cret", "fleet")
    (tmp_path / "db-password").write_text("from-file\n", encoding="utf-8")
    from_file = settings_from_data(
        with_(store={"url": url, "password": {"file": "db-password"}}),
        tmp_path / "gateway.yaml",
        {},
    )
    assert from_file.store.password == "from-file"


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        (
            {"url": "postgresql://db/k", "password": {"env": "NOPE"}},
            "store.password: environment variable 'NOPE' is not set",
        ),
        (
            {"url": "postgresql://db/k", "password": "inline"},
            "store.password: must be {env: VARIABLE} or {file: path}",
        ),
        (
            {"url": "postgresql://db/k", "schema": "no-dashes"},
            "store.schema: must be a plain identifier (letters, digits, _)",
        ),
        (
            {"url": "sqlite:///k.db", "password": {"env": "X"}},
            "store.password: is for a postgresql:// store only",
        ),
    ],
)
def test_bad_postgres_store_settings(store: dict[str, object], problem: str) -> None:
    assert problems_of(with_(store=store), {"X": "set"}) == [f"{WHERE}: {problem}"]


@pytest.mark.parametrize("url", ["sqlite:///keygate.db", "sqlite:////var/lib/k.db"])
def test_good_store_urls(url: str) -> None:
    assert build(with_(store={"url": url})).store.url == url


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("feed", "poll_interval", math.nan),
        ("feed", "poll_interval", True),
        ("feed", "poll_interval", "0.2"),
        ("usage", "flush_interval", 0.01),
        ("shutdown", "grace_period", -1),
        ("upstream", "pool_size", 0),
        ("upstream", "connect_timeout", math.nan),
    ],
)
def test_bad_numbers(section: str, key: str, value: Any) -> None:
    base = dict(MINIMAL[section]) if section in MINIMAL else {}
    problems = problems_of(with_(**{section: {**base, key: value}}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{WHERE}: {section}.{key}: expected a")
    assert " >= " in problems[0]


def test_header_values_from_environment_and_literals() -> None:
    data = with_(
        upstream={
            "url": "http://backend",
            "headers": {
                "Authorization": {"env": "KEYGATE_UPSTREAM_AUTH"},
                "X-Static": {"value": "literal text"},
            },
        }
    )
    settings = build(data, {"KEYGATE_UPSTREAM_AUTH": "Basic c3ZjOnB3"})
    assert settings.upstream.headers == {
        "Authorization": "Basic c3ZjOnB3",
        "X-Static": "literal text",
    }


def test_header_value_from_environment_with_control_characters_is_refused() -> None:
    data = with_(upstream={"url": "http://b", "headers": {"X-T": {"env": "T"}}})
    assert problems_of(data, {"T": "ok\nX-Acting-User: admin"}) == [
        f"{WHERE}: upstream.headers.X-T: value contains control characters"
    ]
    assert problems_of(data, {"T": "nul\x00"}) == problems_of(data, {"T": "del\x7f"})


def test_missing_environment_variable_is_named() -> None:
    data = with_(upstream={"url": "http://b", "headers": {"X-T": {"env": "KEYGATE_NOPE"}}})
    assert problems_of(data, {"OTHER": "1"}) == [
        f"{WHERE}: upstream.headers.X-T: environment variable 'KEYGATE_NOPE' is not set"
    ]


@pytest.mark.parametrize("name", ["X-Acting-User", "x_user", "A", "!#$%&'*+-.^_`|~"])
def test_header_names_accepted(name: str) -> None:
    assert is_header_name(name)
    settings = build(with_(identity={"acting_user_header": name}))
    assert settings.identity.acting_user_header == name


@pytest.mark.parametrize("name", ["X Acting", "X:User", "", "X-\u00e9", "X\r\nY", "X(1)"])
def test_header_names_refused(name: str) -> None:
    assert not is_header_name(name)


def test_relative_policy_path_resolves_against_the_config_directory(tmp_path: Path) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    config = config_dir / "gateway.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL, "policy": "../policies/p.yaml"}), "utf-8")
    assert load_settings(config).policy == tmp_path / "policies" / "p.yaml"
    absolute = tmp_path / "abs.yaml"
    config.write_text(yaml.safe_dump({**MINIMAL, "policy": str(absolute)}), "utf-8")
    assert load_settings(config).policy == absolute
    config.write_text(yaml.safe_dump(MINIMAL), "utf-8")
    assert load_settings(config).policy == config_dir / "policy.yaml"


def test_relative_config_path_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(MINIMAL), "utf-8")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("gateway.yaml"))
    assert settings.path == tmp_path / "gateway.yaml"
    assert settings.policy == tmp_path / "policy.yaml"


def test_policy_must_be_a_path() -> None:
    assert problems_of(with_(policy=["a.yaml"])) == [
        f"{WHERE}: policy: expected a file path, got a list"
    ]


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    assert config_path_from(None) == DEFAULT_CONFIG_PATH == Path("config/gateway.yaml")
    assert config_path_from("/x/arg.yaml") == Path("/x/arg.yaml")
    monkeypatch.setenv(CONFIG_ENV_VAR, "/x/env.yaml")
    assert config_path_from(None) == Path("/x/env.yaml")
    assert config_path_from("") == Path("/x/env.yaml")
    assert config_path_from("/x/arg.yaml") == Path("/x/arg.yaml")
    monkeypatch.setenv(CONFIG_ENV_VAR, "")
    assert config_path_from(None) == DEFAULT_CONFIG_PATH


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as caught:
        build(["listen"])
    assert caught.value.problems == [f"{WHERE}: top level must be a mapping"]


def test_unreadable_invalid_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("listen: {port: [\n", "utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(broken)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"listen:\n  host: \xff\n")
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_settings(binary)
    assert len(caught.value.problems) == 1


@pytest.mark.parametrize("literal", [None, True, ["a"], {"k": "v"}])
def test_a_literal_header_value_must_be_text(literal: Any) -> None:
    data = with_(upstream={"url": "http://b", "headers": {"X-T": {"value": literal}}})
    assert problems_of(data, {}) == [
        f"{WHERE}: upstream.headers.X-T: value must be text (or a number)"
    ]


def test_an_upstream_header_named_twice_in_any_case_is_a_problem() -> None:
    data = with_(
        upstream={
            "url": "http://b",
            "headers": {"X-Service": {"value": "a"}, "x-service": {"value": "b"}},
        }
    )
    assert problems_of(data, {}) == [
        f"{WHERE}: upstream.headers.x-service: is set twice (header names ignore case)"
    ]


def test_upstream_bounds_and_limits_default_and_can_be_set() -> None:
    upstream = build(MINIMAL).upstream
    assert (upstream.pool_timeout, upstream.idle_timeout) == (10, 15)
    assert (upstream.client_body_timeout, upstream.read_timeout) == (30, 60)
    assert (upstream.max_line_size, upstream.max_headers) == (8190, 128)
    assert upstream.tls == UpstreamTLS()
    values = {
        "pool_timeout": 1,
        "idle_timeout": 2.5,
        "client_body_timeout": 3,
        "read_timeout": 4,
        "max_line_size": 100,
        "max_headers": 10,
    }
    upstream = build(with_(upstream={**MINIMAL["upstream"], **values})).upstream
    assert (upstream.pool_timeout, upstream.idle_timeout) == (1.0, 2.5)
    assert (upstream.client_body_timeout, upstream.read_timeout) == (3.0, 4.0)
    assert (upstream.max_line_size, upstream.max_headers) == (100, 10)


def test_bad_upstream_bounds_are_each_reported_with_their_location() -> None:
    bad = {
        "url": "http://127.0.0.1:9000",
        "pool_timeout": 0,
        "idle_timeout": "15",
        "client_body_timeout": -1,
        "read_timeout": math.nan,
        "max_line_size": 10,
        "max_headers": 1.5,
    }
    problems = problems_of(with_(upstream=bad))
    assert [p.split(": ")[1] for p in problems] == [
        "upstream.pool_timeout",
        "upstream.idle_timeout",
        "upstream.client_body_timeout",
        "upstream.read_timeout",
        "upstream.max_line_size",
        "upstream.max_headers",
    ]


def test_upstream_tls_files_resolve_against_the_config_and_must_exist(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    issued = ca.issue_cert("keygate.client")
    (tmp_path / "client.pem").write_bytes(
        issued.private_key_pem.bytes() + issued.cert_chain_pems[0].bytes()
    )
    data = with_(
        upstream={
            "url": "https://backend.internal",
            "tls": {"ca_file": "ca.pem", "cert_file": "client.pem", "server_name": "b.example"},
        }
    )
    tls = settings_from_data(data, tmp_path / "gateway.yaml", {}).upstream.tls
    assert tls == UpstreamTLS(
        ca_file=str(tmp_path / "ca.pem"),
        cert_file=str(tmp_path / "client.pem"),
        server_name="b.example",
    )
    bad = with_(
        upstream={
            "url": "http://backend.internal",
            "tls": {"ca_file": "missing.pem", "key_file": "client.pem", "verify": False},
        }
    )
    with pytest.raises(ConfigError) as caught:
        settings_from_data(bad, tmp_path / "gateway.yaml", {})
    located = [p.split(": ")[1] for p in caught.value.problems]
    assert located == [
        "upstream.tls",
        "upstream.tls.verify",
        "upstream.tls.ca_file",
        "upstream.tls.key_file",
    ]


def test_expiry_and_webhooks_default_to_warnings_only() -> None:
    settings = build(MINIMAL)
    assert (settings.expiry.warn_days, settings.expiry.notify_days) == (14, (14, 7, 1))
    assert settings.notify.webhooks == ()


def test_webhooks_read_their_secrets_from_env_or_file(tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text("from-file\n")
    settings = settings_from_data(
        with_(
            expiry={"warn_days": 30, "notify_days": [1, 30, 7, 7]},
            notify={
                "webhooks": [
                    {"url": "https://hooks.example/a", "secret": {"env": "HOOK"}},
                    {"url": "http://127.0.0.1:9/b", "secret": {"file": "hook.secret"}},
                ],
                "poll_interval": 0.5,
            },
        ),
        tmp_path / "gateway.yaml",
        {"HOOK": "from-env"},
    )
    assert settings.expiry.warn_days == 30
    assert settings.expiry.notify_days == (30, 7, 1)
    assert [(h.url, h.secret) for h in settings.notify.webhooks] == [
        ("https://hooks.example/a", b"from-env"),
        ("http://127.0.0.1:9/b", b"from-file"),
    ]
    assert settings.notify.poll_interval == 0.5


def test_webhook_urls_may_come_from_env_or_file_like_other_secrets(tmp_path: Path) -> None:
    (tmp_path / "hook.url").write_bytes(b"https://u:pw@hooks.example/services/T1/B2/tok\r\n")
    hook = {"env": "HOOK"}
    settings = settings_from_data(
        with_(
            notify={
                "webhooks": [
                    {"url": {"file": "hook.url"}, "secret": hook},
                    {"url": {"env": "HOOK_URL"}, "secret": hook},
                ]
            }
        ),
        tmp_path / "gateway.yaml",
        {"HOOK": "s", "HOOK_URL": "http://127.0.0.1:9/hook?token=abc"},
    )
    assert [h.url for h in settings.notify.webhooks] == [
        "https://u:pw@hooks.example/services/T1/B2/tok",
        "http://127.0.0.1:9/hook?token=abc",
    ]
    problems = problems_of(
        with_(
            notify={
                "webhooks": [
                    {"url": {"env": "BAD_URL"}, "secret": hook},
                    {"url": {"env": "UNSET"}, "secret": hook},
                    {"url": {"value": "x"}, "secret": hook},
                    {"url": {"env": "TWO_LINES"}, "secret": hook},
                ]
            }
        ),
        {"HOOK": "s", "BAD_URL": "ftp://user:hunter2@x/", "TWO_LINES": "http://x/a\nhttp://y/"},
    )
    assert problems == [
        f"{WHERE}: notify.webhooks[0].url: must be an http:// or https:// URL",
        f"{WHERE}: notify.webhooks[1].url: environment variable 'UNSET' is not set",
        f"{WHERE}: notify.webhooks[2].url: must be {{env: VARIABLE}} or {{file: path}}",
        f"{WHERE}: notify.webhooks[3].url: value contains control characters",
    ]
    assert "hunter2" not in "".join(problems)


def test_bad_expiry_and_webhooks_are_each_reported() -> None:
    problems = problems_of(
        with_(
            expiry={"warn_days": 0, "notify_days": [7, "x"], "later": 1},
            notify={
                "webhooks": [
                    {"url": "ftp://x", "secret": {"env": "HOOK"}},
                    {"url": "http://x/", "secret": {"env": "UNSET"}},
                    {"url": "http://x/"},
                ]
            },
        ),
        {"HOOK": "x"},
    )
    assert problems == [
        f"{WHERE}: expiry.later: unknown setting; known: warn_days, notify_days, check_interval, "
        "sunset_headers",
        f"{WHERE}: expiry.warn_days: expected a whole number of days, 1-3650, got 0",
        f"{WHERE}: expiry.notify_days[1]: expected a whole number of days, 1-3650, got 'x'",
        f"{WHERE}: notify.webhooks[0].url: must be an http:// or https:// URL",
        f"{WHERE}: notify.webhooks[1].secret: environment variable 'UNSET' is not set",
        f"{WHERE}: notify.webhooks[2].secret: is required",
    ]


# Service header names that would let a caller choose the value, collide with a header keygate
# sets or strips itself, or frame the request (issue 19.1): refused at load, in any spelling.
REFUSED_SERVICE_HEADERS = [
    "X-Acting-User",
    "x_acting_user",
    "X-Acting-User-Signature",
    "X-Request-Id",
    "X-Forwarded-Host",
    "X_Forwarded_For",
    "X-Forwarded-Proto",
    "Forwarded",
    "Host",
    "Content-Length",
    "Content-Type",
    "Transfer-Encoding",
    "Connection",
    "Proxy-Authorization",
    "Expect",
    "X-API-Key",
    "X_Api_Key",
    "Authorization_",
    "AUTHORIZATION-",
    "Cookie2",
    "Remote-User",
    "X-Forwarded-User",
    "X-Real-IP",
    "X-Original-URL",
    "X-HTTP-Method-Override",
]


@pytest.mark.parametrize("name", REFUSED_SERVICE_HEADERS)
def test_service_headers_keygate_sets_strips_or_frames_are_refused(name: str) -> None:
    data = with_(upstream={"url": "http://b", "headers": {name: {"value": "service"}}})
    for anonymous in ("passthrough", "deny"):
        problems = problems_of({**data, "anonymous": anonymous})
        assert len(problems) == 1 and problems[0].startswith(
            f"{WHERE}: upstream.headers.{name}: cannot be a service header"
        ), problems


def test_a_service_header_named_like_a_custom_identity_header_is_refused() -> None:
    data = with_(
        upstream={"url": "http://b", "headers": {"X-Company-User": {"value": "svc"}}},
        identity={"acting_user_header": "X-Integrate-User", "strip_headers": ["X-Company-User"]},
    )
    assert problems_of(data)[0].startswith(f"{WHERE}: upstream.headers.X-Company-User: cannot")
    data = with_(upstream={"url": "http://b", "headers": {"x_integrate_user": {"value": "svc"}}})
    data["identity"] = {"acting_user_header": "X-Integrate-User"}
    assert problems_of(data)[0].startswith(f"{WHERE}: upstream.headers.x_integrate_user: cannot")


@pytest.mark.parametrize("name", ["Authorization", "authorization", "Cookie", "X-Service-Token"])
def test_service_credentials_in_ordinary_headers_load(name: str) -> None:
    data = with_(upstream={"url": "http://b", "headers": {name: {"value": "service"}}})
    assert build(data).upstream.headers == {name: "service"}
