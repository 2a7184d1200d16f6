"""The signed acting user: keygate's real header, checked by the shipped verifier."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.config import ALL_ROLE, REST, add_key, write_config
from support.http import http_request, raw_request
from support.upstreams import Backend

from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import ConfigError, load_settings
from gateway.verify import SIGNATURE_HEADER, header_value, verify_acting_user

NEW_KEY = b"n" * 40
OLD_KEY = b"o" * 40
TARGET = f"{REST}/_echo/signed?x=1"


def test_a_signature_verifies_only_for_the_same_request_and_fresh() -> None:
    header = header_value("k2", NEW_KEY, 1_000, "GET", "/a?b=1", "etl")
    keys = {"k2": NEW_KEY}
    assert verify_acting_user(header, "GET", "/a?b=1", "etl", keys, now=1_000)
    assert not verify_acting_user(header, "DELETE", "/a?b=1", "etl", keys, now=1_000)
    assert not verify_acting_user(header, "GET", "/a?b=2", "etl", keys, now=1_000)
    assert not verify_acting_user(header, "GET", "/a?b=1", "mallory", keys, now=1_000)
    assert not verify_acting_user(header, "GET", "/a?b=1", "etl", {"k2": OLD_KEY}, now=1_000)
    assert not verify_acting_user(header, "GET", "/a?b=1", "etl", keys, now=1_000 + 301)
    assert not verify_acting_user("v1=00", "GET", "/a?b=1", "etl", keys, now=1_000)


@pytest.fixture
async def signing_gateway(tmp_path: Path, backend: Backend) -> AsyncIterator[RunningGateway]:
    directory = tmp_path / "signing"
    directory.mkdir()
    (directory / "new.key").write_bytes(NEW_KEY + b"\n")
    (directory / "old.key").write_bytes(OLD_KEY)
    keys = [{"id": "k2", "file": "new.key"}, {"id": "k1", "file": "old.key"}]
    config = write_config(directory, backend.url, extra={"identity": {"signing_keys": keys}})
    async with running_gateway(load_settings(config)) as running:
        yield running


async def test_the_backend_can_verify_the_proxys_real_header(
    signing_gateway: RunningGateway,
) -> None:
    key = await add_key(signing_gateway, "signed-bot", [ALL_ROLE])
    spoofed = [(SIGNATURE_HEADER, "t=1,kid=k2,v1=forged"), ("X-API-Key", key)]
    response = await raw_request(
        signing_gateway.proxy_port, http_request("PUT", TARGET, spoofed, b"{}")
    )
    assert response.status == 200, response.body
    echoed = response.json()
    received = {name.lower(): value for name, value in echoed["headers"]}
    signatures = [v for n, v in echoed["headers"] if n.lower() == SIGNATURE_HEADER.lower()]
    assert len(signatures) == 1 and "forged" not in signatures[0]  # the client's is dropped
    header = signatures[0]
    assert "kid=k2" in header
    acting = received["x-acting-user"]
    assert acting == "signed-bot"
    method, target = echoed["method"], echoed["path"]
    assert (method, target) == ("PUT", TARGET)
    assert verify_acting_user(header, method, target, acting, {"k2": NEW_KEY, "k1": OLD_KEY})
    # During a rotation a backend that knows only the new key verifies too; the old one alone
    # does not (keygate signs with the first key listed).
    assert verify_acting_user(header, method, target, acting, {"k2": NEW_KEY})
    assert not verify_acting_user(header, method, target, acting, {"k1": OLD_KEY})
    assert not verify_acting_user(header, method, target, "mallory", {"k2": NEW_KEY})
    assert abs(int(header.split(",")[0][2:]) - time.time()) < 5


async def test_anonymous_requests_carry_no_signature(signing_gateway: RunningGateway) -> None:
    forged = [(SIGNATURE_HEADER, "t=1,kid=k2,v1=forged")]
    response = await raw_request(signing_gateway.proxy_port, http_request("GET", TARGET, forged))
    names = [name.lower() for name, _ in response.json()["headers"]]
    assert SIGNATURE_HEADER.lower() not in names


def test_signing_keys_are_validated_with_their_location(tmp_path: Path) -> None:
    (tmp_path / "short.key").write_bytes(b"too short")
    keys = [
        {"id": "a", "file": "short.key"},
        {"id": "b", "env": "KEYGATE_NO_SUCH_VARIABLE"},
        {"id": "c", "value": "inline secrets are refused"},
    ]
    config = write_config(
        tmp_path, "http://127.0.0.1:9", extra={"identity": {"signing_keys": keys}}
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    problems = "\n".join(refused.value.problems)
    assert "identity.signing_keys[0]: the secret must be at least 32 bytes" in problems
    assert "identity.signing_keys[1]: environment variable 'KEYGATE_NO_SUCH_VARIABLE'" in problems
    assert "identity.signing_keys[2]: must be {id: NAME, env: VARIABLE}" in problems


def test_a_signing_key_file_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared, private = tmp_path / "shared.key", tmp_path / "private.key"
    shared.write_bytes(NEW_KEY)
    private.write_bytes(OLD_KEY)
    shared.chmod(0o644)
    private.chmod(0o600)
    keys = [{"id": "k2", "file": "shared.key"}, {"id": "k1", "file": "private.key"}]
    config = write_config(
        tmp_path, "http://127.0.0.1:9", extra={"identity": {"signing_keys": keys}}
    )
    with caplog.at_level("WARNING", logger="keygate.settings"):
        settings = load_settings(config)
    # A warning, not a refusal.
    keys = [(key.id, key.secret) for key in settings.identity.signing_keys]
    assert keys == [("k2", NEW_KEY), ("k1", OLD_KEY)]
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1, warnings
    assert str(shared) in warnings[0] and "0644" in warnings[0] and "chmod 600" in warnings[0]
    assert "identity.signing_keys[0]" in warnings[0]
    assert NEW_KEY.decode() not in warnings[0]

    shared.chmod(0o600)
    caplog.clear()
    with caplog.at_level("WARNING", logger="keygate.settings"):
        load_settings(config)
    assert caplog.records == []
