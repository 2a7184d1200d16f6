"""No secret in any log line or answer of the proxy listener, whatever path refuses the request.

Every credential shape (X-API-Key, Bearer, ApiKey, a key in the query or the path, HTTP Basic)
is sent through every refusal path (parser error, bad target, 401, 403, 502) and through a
forwarded request; then every captured log record and every answer is searched for it.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from support.config import ALL_ROLE, REST, add_key, create_key, write_config
from support.http import http_request, raw_request
from support.processes import free_port, reaped, start_serve, wait_for_port
from support.upstreams import Backend

from gateway.admin.passwords import hash_password
from gateway.keys import keyformat as keys
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings
from gateway.store.factory import store_for

PASSWORD = "correct horse battery staple"
READ_ROLE = "1int-sessions-read"
TEST_COST = 2**4  # scrypt N for the test admin: fast, and the stored hash carries it


def shapes(secret: str) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Credential shapes: name -> (target suffix, headers)."""
    basic = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    return {
        "x-api-key": ("", [("X-API-Key", secret)]),
        "bearer": ("", [("Authorization", f"Bearer {secret}")]),
        "apikey": ("", [("Authorization", f"ApiKey {secret}")]),
        "query": (f"?api_key={secret}", []),
        "encoded-query": (f"?k={secret.replace('_', '%5F')}", []),
        "basic": ("", [("Authorization", f"Basic {basic}")]),
    }


def request_bytes(method: str, target: str, headers: list[tuple[str, str]], tail: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + tail).encode("latin-1")


@pytest.fixture
async def live(tmp_path: Path, backend: Backend) -> AsyncIterator[RunningGateway]:
    config = write_config(tmp_path / "live", backend.url)
    async with running_gateway(load_settings(config)) as running:
        yield running


@pytest.fixture
async def dead_upstream(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    config = write_config(tmp_path / "dead", f"http://127.0.0.1:{free_port()}")
    async with running_gateway(load_settings(config)) as running:
        yield running


def assert_nowhere(caplog: pytest.LogCaptureFixture, answers: list[bytes], *secrets: str) -> None:
    # "aiohttp.access" is the demo backend's own access log (keygate's is "keygate.access"):
    # a key the client put in a query reaches the backend as sent, and what the backend logs
    # is the backend's affair.
    records = [record for record in caplog.records if record.name != "aiohttp.access"]
    logged = "\n".join(record.getMessage() for record in records)
    logged += "\n".join(str(record.exc_info) for record in records if record.exc_info)
    for secret in secrets:
        encoded = secret.replace("_", "%5F")
        assert secret not in logged and encoded not in logged, logged
        for answer in answers:
            assert secret.encode() not in answer and encoded.encode() not in answer, answer


@pytest.mark.parametrize(
    "shape", ["x-api-key", "bearer", "apikey", "query", "encoded-query", "basic"]
)
async def test_no_secret_in_logs_or_answers_on_any_path(
    live: RunningGateway,
    dead_upstream: RunningGateway,
    caplog: pytest.LogCaptureFixture,
    shape: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    known = await add_key(live, "reader-bot", [READ_ROLE])
    known_there = await add_key(dead_upstream, "reader-bot", [READ_ROLE])
    unknown = keys.generate_key()
    answers: list[bytes] = []
    for secret, gateway in ((known, live), (unknown, live), (known_there, dead_upstream)):
        suffix, headers = shapes(secret)[shape]
        targets = [
            f"{REST}/sessions/s1{suffix}",  # allowed for the known key: forwarded or 502
            f"{REST}/rules/r1{suffix}",  # 403 for the known key
            f"{REST}/apikeys{suffix}",  # 403 protected
            f"{REST}/a%2fb{suffix}",  # 400 bad target
        ]
        for target in targets:
            for method in ("GET", "DELETE"):
                raw = request_bytes(method, target, headers, "\r\nConnection: close\r\n\r\n")
                answers.append((await raw_request(gateway.proxy_port, raw)).body)
        # Parser refusals: a control byte in a header, and bare LF line endings.
        bad = request_bytes("GET", f"{REST}/sessions{suffix}", headers, "\r\nX-Bad: a\x01b\r\n\r\n")
        answers.append((await raw_request(gateway.proxy_port, bad)).body)
        lf = request_bytes("GET", f"{REST}/sessions{suffix}", headers, "\n\n").replace(
            b"\r\n", b"\n"
        )
        answers.append((await raw_request(gateway.proxy_port, lf)).body)
    if shape in ("query", "encoded-query"):  # a key in the target is refused before anything
        assert any(b"key_misplaced" in answer for answer in answers)
        assert not any(b"upstream_unavailable" in answer for answer in answers)
    else:
        assert any(b"upstream_unavailable" in answer for answer in answers)
    assert any(b"bad_request" in answer for answer in answers)
    assert_nowhere(caplog, answers, known, known_there, unknown, PASSWORD)


async def test_access_log_names_the_key_on_refusals_and_shows_only_a_prefix(
    live: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keygate.access")
    known = await add_key(live, "reader-bot", [READ_ROLE])
    unknown = keys.generate_key()
    for secret, target in (
        (known, f"{REST}/sessions/s1"),  # forwarded
        (known, f"{REST}/rules/r1"),  # 403 forbidden
        (known, f"{REST}/apikeys"),  # 403 protected
        (unknown, f"{REST}/sessions/s1"),  # 401 unknown
    ):
        raw = request_bytes(
            "GET", f"{target}?again={secret}", [("X-API-Key", secret)], "\r\n\r\n"
        ).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        await raw_request(live.proxy_port, raw)
    lines = [r.getMessage() for r in caplog.records if r.name == "keygate.access"]
    assert len(lines) == 4, lines
    assert [line.rsplit("key=", 1)[1] for line in lines[:3]] == ["reader-bot"] * 3
    assert lines[3].rsplit("key=", 1)[1] == f"?{keys.display_prefix(unknown)}..."
    for line, secret in zip(lines, (known, known, known, unknown), strict=True):
        assert secret not in line
        assert f"again={keys.display_prefix(secret)}..." in line


async def test_server_header_names_no_versions(live: RunningGateway, backend: Backend) -> None:
    # keygate's own answers say only "keygate"; relayed ones carry the upstream's, as sent.
    for target in (f"{REST}/a%2fb", f"{REST}/apikeys"):
        headers = [] if "%" in target else [("X-API-Key", keys.generate_key())]
        raw = request_bytes("GET", target, headers, "\r\nConnection: close\r\n\r\n")
        response = await raw_request(live.proxy_port, raw)
        assert response.status in (400, 401)
        assert response.header_values("Server") == ["keygate"]
    raw = request_bytes("GET", f"{REST}/_echo/x", [], "\r\nConnection: close\r\n\r\n")
    relayed = await raw_request(live.proxy_port, raw)
    direct = await raw_request(backend.port, raw)
    assert relayed.header_values("Server") == direct.header_values("Server")


def encoded_forms(secret: str) -> list[str]:
    """A key as a URL may carry it: raw, `_` percent-encoded (once, twice), a body character
    percent-encoded."""
    body = secret[len(keys.KEY_PREFIX) :]
    return [
        secret,
        "kg%5F" + body,
        "kg%5f" + body,
        "kg%255F" + body,
        secret[:12] + f"%{ord(secret[12]):02X}" + secret[13:],
    ]


async def add_admin(config: Path, name: str, password: str) -> None:
    """Add an admin (all grants) to the config's store, as `keygate admins add` does."""
    store = store_for(load_settings(config))
    await store.open()
    try:
        await store.add_admin(name, hash_password(password, n=TEST_COST), (), True, "test")
    finally:
        await store.close()


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_key_in_any_log_line_of_either_listener(
    tmp_path: Path, backend: Backend, log_format: str
) -> None:
    port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path / log_format,
        backend.url,
        listen_port=port,
        admin_port=admin_port,
        extra={"log": {"level": "debug", "access_log": True, "format": log_format}},
    )
    secret = await create_key(config, "searched-bot", [ALL_ROLE])
    other = await create_key(config, "other-bot", [ALL_ROLE])
    unknown = keys.generate_key()
    await add_admin(config, "root", PASSWORD)
    root = [("Authorization", aiohttp.encode_basic_auth("root", PASSWORD))]
    serve = start_serve(config, port, tmp_path / f"{log_format}.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        await wait_for_port(admin_port, process=serve.process)
        for form in encoded_forms(secret) + encoded_forms(unknown):
            for target in (
                f"/api/v1/keys?q={form}",
                f"/api/v1/audit?key_name={form}",
                f"/anything/{form}",
                f"/api/v1/keys/{form}",
            ):
                headers = [*root, ("Referer", f"http://x/?q={form}"), ("User-Agent", form)]
                answer = await raw_request(admin_port, http_request("GET", target, headers))
                # 403: a working key in User-Agent makes the admin listener refuse the caller.
                assert answer.status in (200, 403, 404), (target, answer.body)
            unauthenticated = http_request("GET", f"/api/v1/keys?q={form}")
            assert (await raw_request(admin_port, unauthenticated)).status == 401
            # The proxy listener: a key in the query, in the request id, as the credential.
            proxy_headers = [("X-API-Key", other), ("X-Request-Id", form)]
            target = f"{REST}/_echo/x?api_key={form}"
            answer = await raw_request(port, http_request("GET", target, proxy_headers))
            assert form not in answer.header_values("X-Request-Id")
            assert answer.status == 400, answer.body
            # A key-shaped request id is refused first; else the key in the target.
            code = "bad_request_id" if keys.holds_key_shape(form) else "key_misplaced"
            assert answer.json()["error"] == code
        found = await raw_request(admin_port, http_request("GET", f"/api/v1/keys?q={secret}", root))
        assert [item["name"] for item in found.json()["items"]] == ["searched-bot"]
        # A key typed as the admin name: a failed login, logged (once: more would throttle).
        sign_in = json.dumps({"name": secret, "password": "wrong"}).encode()
        json_type = [("Content-Type", "application/json")]
        answer = await raw_request(
            admin_port, http_request("POST", "/api/v1/session", json_type, sign_in)
        )
        assert answer.status == 401, answer.body
        assert serve.stop() == 0
    logged = serve.log_text()
    if log_format == "json":
        assert all(json.loads(line) for line in logged.splitlines() if line.strip())
    assert "/api/v1/audit?key_name=" in logged and "/anything/" in logged  # the lines are there
    assert "failed admin login" in logged
    for key in (secret, other, unknown):
        assert key[keys.DISPLAY_PREFIX_LENGTH :] not in logged
        assert key[keys.DISPLAY_PREFIX_LENGTH + 3 :] not in logged  # after an encoded character
    assert f"{keys.display_prefix(secret)}..." in logged
