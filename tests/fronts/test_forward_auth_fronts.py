"""Forward-auth through real front proxies: Debian's nginx and Caddy ask keygate, then proxy.

Each test runs twice, once behind nginx (deploy/nginx/keygate-forward-auth.conf) and once
behind Caddy (deploy/caddy/Caddyfile), both started from those files with free loopback
ports, in front of the demo backend, which notes every request it receives. Without nginx
or Caddy the tests skip saying how to install them; under CI=true they fail instead.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from support.config import REST
from support.fronts import (
    ALL_KEY,
    IDENTITY_SPOOFS,
    LIMITED_KEY,
    PROTECTED_VARIANTS,
    READER_KEY,
    SIGNING_KEY_ID,
    TARGET_SPOOFS,
    Decider,
    Front,
    install_hint,
    tool_or_skip,
)
from support.http import RawResponse, http_request, raw_request
from support.processes import arun_cli
from support.upstreams import Received, RecordingBackend

from gateway.verify import SIGNATURE_HEADER, verify_acting_user

pytestmark = pytest.mark.slow

# Seconds within which a revocation must be seen (README: the change feed reaches every
# process "within a second"; the tests poll the feed every 0.05 s).
REVOCATION_BOUND = 1.0
# Seconds a refused request is given to show up at the backend anyway before we say it did not.
SETTLE = 0.2
# Seconds one request through the front proxy may take.
REQUEST_TIMEOUT = 10.0
# Refusal codes keygate's decision gives a protected path or an ambiguous target.
PROTECTED_CODES = {"forbidden_protected", "bad_target"}


async def send(
    front: Front,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> RawResponse:
    """Send one raw request (target bytes exactly as given) to the front proxy."""
    return await raw_request(
        front.port, http_request(method, target, headers or [], body), timeout=REQUEST_TIMEOUT
    )


def only(received: list[Received]) -> Received:
    """The one request the backend got."""
    assert len(received) == 1, [r.target for r in received]
    return received[0]


def assert_json_refusal(response: RawResponse, status: int, codes: set[str]) -> str:
    """The answer is `status` with keygate's JSON error, its code one of `codes`."""
    assert response.status == status, (response.status, response.body[:300])
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] in codes, body
    assert body["message"]
    return str(body["error"])


def assert_no_secret(received: list[Received], secrets: list[str]) -> None:
    """No key secret anywhere the backend could log or keep it."""
    for request in received:
        seen = request.target + "".join(f"{n}:{v}" for n, v in request.headers)
        for secret in secrets:
            assert secret not in seen, f"a key reached the backend in {request.target}"


async def test_a_keyed_request_reaches_the_backend_as_its_key_signed_and_without_the_key(
    front: Front, decider: Decider, recording_backend: RecordingBackend
) -> None:
    secret = decider.secrets[ALL_KEY]
    target = f"{REST}/_echo/sessions?name=a%20b&x=1"
    spoofed = [(name, "mallory") for name in IDENTITY_SPOOFS]
    for credential in (("X-API-Key", secret), ("Authorization", f"Bearer {secret}")):
        recording_backend.received.clear()
        response = await send(front, "POST", target, [credential, *spoofed], b'{"a": 1}')
        assert response.status == 200, (response.status, response.body[:300])
        echoed = response.json()
        assert echoed["body_length"] == len(b'{"a": 1}')
        got = only(recording_backend.received)
        assert (got.method, got.target) == ("POST", target)
        assert got.values("X-Acting-User") == [ALL_KEY]
        assert got.values("X-Keygate-Key-Id") == [decider.key_ids[ALL_KEY]]
        (signature,) = got.values(SIGNATURE_HEADER)
        assert f"kid={SIGNING_KEY_ID}" in signature
        keys = {SIGNING_KEY_ID: decider.signing_key}
        assert verify_acting_user(signature, got.method, got.target, ALL_KEY, keys)
        # Signed over this method and target, not any other.
        assert not verify_acting_user(signature, "GET", got.target, ALL_KEY, keys)
        assert not verify_acting_user(signature, "POST", f"{REST}/_echo/other", ALL_KEY, keys)
        for name in ("X-API-Key", "Authorization", *IDENTITY_SPOOFS):
            if name not in ("X-Acting-User", SIGNATURE_HEADER, "X-Keygate-Key-Id"):
                assert got.values(name) == [], f"{name} reached the backend via {front.name}"
        assert "mallory" not in json.dumps(got.headers)
        assert_no_secret(recording_backend.received, [secret])


async def test_a_route_the_policy_denies_is_refused_before_the_backend(
    front: Front, decider: Decider, recording_backend: RecordingBackend
) -> None:
    reader = [("X-API-Key", decider.secrets[READER_KEY])]
    allowed = await send(front, "GET", f"{REST}/sessions/", reader)
    assert allowed.status == 200, allowed.body[:300]
    assert only(recording_backend.received).values("X-Acting-User") == [READER_KEY]
    recording_backend.received.clear()
    denied = await send(front, "PUT", f"{REST}/rules/r1", reader, b"{}")
    assert_json_refusal(denied, 403, {"forbidden"})
    # A method override the policy does not allow is refused too (the backend would obey it).
    override = await send(
        front, "GET", f"{REST}/sessions/s1", [*reader, ("X-HTTP-Method-Override", "DELETE")]
    )
    assert_json_refusal(override, 403, {"forbidden", "forbidden_override"})
    await asyncio.sleep(SETTLE)
    assert recording_backend.received == []


async def test_protected_paths_and_every_variant_stay_closed(
    front: Front, decider: Decider, recording_backend: RecordingBackend
) -> None:
    secret = decider.secrets[ALL_KEY]
    problems = []
    for variant in PROTECTED_VARIANTS:
        for method in ("GET", "POST"):
            recording_backend.received.clear()
            response = await send(front, method, variant, [("X-API-Key", secret)], b"{}")
            await asyncio.sleep(0.02)
            if recording_backend.received:
                problems.append(
                    f"{method} {variant}: the backend got {recording_backend.received[0].target}"
                )
            if not 400 <= response.status < 500:
                problems.append(f"{method} {variant}: {response.status} {response.body[:200]!r}")
                continue
            try:
                code = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                problems.append(f"{method} {variant}: not keygate's JSON: {response.body[:200]!r}")
                continue
            if code not in PROTECTED_CODES:
                problems.append(f"{method} {variant}: refused as {code!r}")
    await asyncio.sleep(SETTLE)
    assert recording_backend.received == []
    assert problems == [], "\n".join(problems)


async def test_the_target_the_decision_reads_cannot_be_chosen_by_the_client(
    front: Front, decider: Decider, recording_backend: RecordingBackend
) -> None:
    secret = decider.secrets[ALL_KEY]
    spoof = [(name, f"{REST}/sessions/") for name in TARGET_SPOOFS]
    spoof += [("X-Original-Method", "GET"), ("X-Forwarded-Method", "GET")]
    response = await send(front, "DELETE", f"{REST}/apikeys/1", [("X-API-Key", secret), *spoof])
    assert_json_refusal(response, 403, PROTECTED_CODES)
    reader = [("X-API-Key", decider.secrets[READER_KEY]), *spoof]
    response = await send(front, "DELETE", f"{REST}/sessions/s1", reader)
    assert_json_refusal(response, 403, {"forbidden"})
    await asyncio.sleep(SETTLE)
    assert recording_backend.received == []


async def test_anonymous_requests_pass_without_any_identity_and_bad_keys_do_not(
    front: Front, decider: Decider, recording_backend: RecordingBackend
) -> None:
    spoofed = [(name, "mallory") for name in IDENTITY_SPOOFS]
    response = await send(front, "GET", f"{REST}/sessions/", spoofed)
    # anonymous: passthrough, and the backend asks for its own login.
    assert response.status == 401 and response.json()["error"] == "unauthenticated"
    got = only(recording_backend.received)
    assert got.target == f"{REST}/sessions/"
    assert "mallory" not in json.dumps(got.headers)
    for name in ("X-Acting-User", SIGNATURE_HEADER, "X-Keygate-Key-Id"):
        assert got.values(name) == [], f"{name} reached the backend via {front.name}"
    assert "{http." not in json.dumps(got.headers)  # no unfilled Caddy placeholder
    recording_backend.received.clear()
    unknown = "kg_" + "A" * 36
    for credential in (("X-API-Key", unknown), ("Authorization", f"Bearer {unknown}")):
        refused = await send(front, "GET", f"{REST}/sessions/", [credential])
        assert_json_refusal(refused, 401, {"key_unknown", "key_malformed"})
    await asyncio.sleep(SETTLE)
    assert recording_backend.received == []


async def test_a_revoked_key_is_refused_within_the_revocation_bound(
    front: Front, decider: Decider, recording_backend: RecordingBackend
) -> None:
    key = [("X-API-Key", decider.secrets[READER_KEY])]
    assert (await send(front, "GET", f"{REST}/sessions/", key)).status == 200
    code, out, err = await arun_cli("keys", "revoke", READER_KEY, "--config", str(decider.config))
    assert code == 0, err or out
    revoked_at = time.monotonic()
    while True:
        response = await send(front, "GET", f"{REST}/sessions/", key)
        if response.status != 200:
            break
        assert time.monotonic() - revoked_at < REVOCATION_BOUND, "revoked key still allowed"
        await asyncio.sleep(0.02)
    assert_json_refusal(response, 401, {"key_revoked"})
    recording_backend.received.clear()
    again = await send(front, "GET", f"{REST}/sessions/", key)
    assert_json_refusal(again, 401, {"key_revoked"})
    await asyncio.sleep(SETTLE)
    assert recording_backend.received == []


async def test_a_rate_limited_key_is_refused_with_retry_after_the_proxy_relays(
    front: Front, decider: Decider, recording_backend: RecordingBackend
) -> None:
    key = [("X-API-Key", decider.secrets[LIMITED_KEY])]
    assert (await send(front, "GET", f"{REST}/sessions/", key)).status == 200
    recording_backend.received.clear()
    refused = await send(front, "GET", f"{REST}/sessions/", key)
    assert_json_refusal(refused, front.rate_limited_status, {"rate_limited"})
    (retry_after,) = refused.header_values("Retry-After")
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 3600
    if front.rate_limited_status == 429:
        assert refused.header_values("RateLimit-Limit") or refused.header_values("RateLimit")
    else:
        assert refused.header_values("X-Keygate-Reason") == ["rate_limited"]
    await asyncio.sleep(SETTLE)
    assert recording_backend.received == []


def test_a_missing_front_proxy_skips_with_advice_or_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y caddy"):
        tool_or_skip("caddy", None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true and .*apt-get install -y nginx"):
        tool_or_skip("nginx", None)
    assert "apt-get install -y nginx" in install_hint("nginx")
