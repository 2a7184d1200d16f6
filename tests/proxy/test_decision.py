"""`policy explain` decides exactly as the proxy: the same targets, methods and roles sent to a
real gateway in front of a real upstream and to the admin API's explain get the same answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.config import REST, add_key, write_config
from support.http import http_request, raw_request
from test_bypass_corpus import CASES

from gateway.admin.passwords import hash_password
from gateway.keys import keyformat as keys
from gateway.keys.table import KeyTable
from gateway.policy.rules import policy_from_data
from gateway.proxy import refusals
from gateway.proxy.credentials import Credential
from gateway.proxy.decision import caller_of, decide, explain, roles_caller
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

UPSTREAM_MARK = "X-Upstream-Saw"  # the test upstream answers every request with this header
ADMIN_PASSWORD = "root-password"
ADMIN = {"Authorization": aiohttp.encode_basic_auth("root", ADMIN_PASSWORD)}
TEST_COST = 2**4  # scrypt N for the test admin: fast
THINGS = f"{REST}/things"
POLICY = {
    "roles": {
        "reader": {"allow": [f"GET {THINGS}/**"]},
        "writer": {"include": ["reader"], "allow": [f"PUT,DELETE {THINGS}/**"]},
        "everything": {"allow": ["* /**"]},
    },
    "protected": [f"{REST}/apikeys/**"],
}
ROLE_SETS = {"reader": ["reader"], "writer": ["writer"], "everything": ["everything"]}
METHODS = ("GET", "PUT", "DELETE")

# Targets as they go on the request line, byte for byte. (Those aiohttp's parser refuses before
# the proxy sees them, such as `*` or raw control characters, are no decision of keygate's.)
TARGETS = [
    f"{THINGS}/1",
    f"{THINGS}",
    f"{REST}/%74hings/1",
    f"{REST}/%74hings",
    f"{REST}/%74%68%69%6E%67%73/1",
    f"{REST}/apikeys/1",
    f"{REST}/%61pikeys/1",
    f"{REST}/%61pikeys",
    f"{REST}/ap%69keys",
    f"{THINGS}/../apikeys",
    f"{THINGS}/%2e%2e/apikeys",
    f"{THINGS}/%2E%2E/apikeys",
    f"{THINGS}/./1",
    f"{THINGS}/%2e/1",
    f"{THINGS}/..",
    f"{THINGS}%2F1",
    f"{THINGS}%2f..%2fapikeys",
    f"{THINGS}/1;x",
    f"{THINGS};x/1",
    f"{THINGS}/1%3Bx",
    f"{REST}/apikeys;x",
    f"{REST}/THINGS/1",
    f"{REST}/Things/1",
    f"{REST}/APIKEYS/1",
    f"{REST}/ApiKeys",
    f"{THINGS}/%00",
    f"{THINGS}/1%00",
    f"{THINGS}/1?a=%00",
    "//1Integrate/rest/things/1",
    "/1Integrate//rest/things/1",
    f"{THINGS}//1",
    f"{THINGS}/1?x=1",
    f"{THINGS}/1?_method=DELETE",
    f"{THINGS}/1?%5Fmethod=PUT",
    f"{THINGS}/1?_method=GET,DELETE",
    f"{THINGS}/1#frag",
    f"{THINGS}/%23",
    f"{THINGS}/caf%C3%A9",
    f"{THINGS}/%ff",
    f"{THINGS}/%2",
    f"{THINGS}/1%20",
    f"{THINGS}/%09x",
    f"{THINGS}\\1",
    f"{THINGS}/%5c1",
    f"{REST}/apikeys.json",
    f"{REST}/apikeys.json.bak",
    f"{REST}/apikeys.tar.gz",
    "/api/v1/keys",
    "/API/V1/KEYS/1",
    "/",
    "/" + "a" * 5000,
    *sorted({case.target for case in CASES}),
]


@dataclass(frozen=True)
class Outcome:
    """What became of a request: forwarded, or refused with a status and an error code."""

    allowed: bool
    status: int | None = None
    error: str | None = None


async def catch_all(request: web.BaseRequest) -> web.StreamResponse:
    """The test upstream: 200 for anything, saying which target it saw."""
    return web.Response(text="upstream", headers={UPSTREAM_MARK: request.raw_path})


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A real upstream on a loopback port that answers every request."""
    server = web.Server(catch_all)
    runner = web.ServerRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def decided(
    tmp_path: Path, upstream: str, sqlite_template: Path
) -> AsyncIterator[RunningGateway]:
    """A gateway with the test policy in front of the catch-all upstream, and an admin."""
    config = write_config(tmp_path / "config", upstream, policy=POLICY, store_from=sqlite_template)
    async with running_gateway(load_settings(config)) as running:
        await running.runtime.store.add_admin(
            "root", hash_password(ADMIN_PASSWORD, n=TEST_COST), (), True, "test-setup"
        )
        yield running


async def proxy_outcome(gateway: RunningGateway, method: str, target: str, key: str) -> Outcome:
    """Send the request to the proxy byte for byte and say what became of it."""
    request = http_request(method, target, [("X-API-Key", key)])
    response = await raw_request(gateway.proxy_port, request)
    if response.header_values(UPSTREAM_MARK):
        return Outcome(True)
    return Outcome(False, response.status, response.json()["error"])


def explain_outcome(body: dict[str, Any]) -> Outcome:
    """Read an explain answer as an outcome."""
    if body["allowed"]:
        return Outcome(True)
    refusal = body.get("refusal") or {}
    return Outcome(False, refusal.get("status"), refusal.get("error"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("role_set", sorted(ROLE_SETS))
async def test_explain_decides_exactly_as_the_proxy(
    decided: RunningGateway, role_set: str, method: str
) -> None:
    roles = ROLE_SETS[role_set]
    key = await add_key(decided, f"differential-{role_set}", roles)
    row = await decided.runtime.store.get_key_by_name(f"differential-{role_set}")
    assert row is not None
    key_id = row.id
    explain_url = f"http://127.0.0.1:{decided.admin_port}/api/v1/policy/explain"
    mismatches = []
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        for target in TARGETS:
            proxied = await proxy_outcome(decided, method, target, key)
            for caller in ({"roles": roles}, {"key_id": key_id}):
                body = {"method": method, "path": target, **caller}
                async with session.post(explain_url, json=body) as response:
                    answer = await response.json()
                    # Anything but 200 is explain failing to decide at all: never a match.
                    explained = (
                        explain_outcome(answer)
                        if response.status == 200
                        else Outcome(True, response.status, answer["error"])
                    )
                if explained != proxied:
                    mismatches.append((target[:80], list(caller), proxied, explained))
    assert mismatches == []


async def forward_auth_outcomes(
    gateway: RunningGateway, method: str, target: str, key: str
) -> dict[str, Outcome]:
    """Ask each forward-auth endpoint about METHOD TARGET for `key`, as its front proxy asks."""
    asks = {
        "nginx": http_request(
            "GET",
            "/_keygate/nginx",
            [("X-Original-Method", method), ("X-Original-URI", target), ("X-API-Key", key)],
        ),
        "forward": http_request(
            "GET",
            "/_keygate/forward",
            [("X-Forwarded-Method", method), ("X-Forwarded-Uri", target), ("X-API-Key", key)],
        ),
        # Envoy sends no body (Content-Length: 0); http_request writes that for PUT itself.
        "envoy": http_request(
            method,
            f"/_keygate/envoy{target}",
            [("X-API-Key", key)] + ([] if method == "PUT" else [("Content-Length", "0")]),
        ),
    }
    outcomes = {}
    for name, request in asks.items():
        response = await raw_request(gateway.proxy_port, request)
        assert not response.header_values(UPSTREAM_MARK), (name, target)  # never forwarded
        if response.status == 200 and response.header_values("X-Acting-User"):
            outcomes[name] = Outcome(True)
        else:
            outcomes[name] = Outcome(False, response.status, response.json()["error"])
    return outcomes


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("role_set", sorted(ROLE_SETS))
async def test_forward_auth_decides_exactly_as_the_proxy(
    decided: RunningGateway, role_set: str, method: str
) -> None:
    key = await add_key(decided, f"forward-auth-{role_set}", ROLE_SETS[role_set])
    mismatches = []
    for target in TARGETS:
        proxied = await proxy_outcome(decided, method, target, key)
        for name, outcome in (await forward_auth_outcomes(decided, method, target, key)).items():
            expected = proxied
            if name == "nginx" and not proxied.allowed and proxied.status != 401:
                # nginx makes any status but 2xx, 401 and 403 a 500: every other refusal is 403.
                expected = Outcome(False, 403, proxied.error)
            if outcome != expected:
                mismatches.append((target[:80], name, proxied, outcome))
    assert mismatches == []


# --------------------------------------------------------------------------- the function itself


def test_decide_checks_the_target_first_then_the_caller_then_the_policy() -> None:
    policy = policy_from_data(POLICY, "test-policy")
    reader = roles_caller(["reader"])
    bad = decide(policy, "GET", f"{THINGS}/../apikeys", refusals.KEY_UNKNOWN)
    assert bad is not None and (bad.status, bad.code) == (400, "bad_target")
    assert decide(policy, "GET", f"{THINGS}/1", refusals.CREDENTIAL_CONFLICT) == (
        refusals.CREDENTIAL_CONFLICT
    )
    assert decide(policy, "GET", f"{THINGS}/1", None) is None  # anonymous passthrough
    assert decide(policy, "GET", f"{THINGS}/1", None, deny_anonymous=True) == refusals.KEY_MISSING
    assert decide(policy, "GET", f"{REST}/%61pikeys", reader) == refusals.PROTECTED
    assert decide(policy, "PUT", f"{REST}/%74hings/1", reader) == refusals.FORBIDDEN
    assert decide(policy, "GET", f"{REST}/%74hings/1", reader) is None


def test_decide_decides_every_method_override() -> None:
    policy = policy_from_data(POLICY, "test-policy")
    reader, writer = roles_caller(["reader"]), roles_caller(["writer"])
    assert decide(policy, "GET", f"{THINGS}/1", reader, ["get"]) is None
    assert decide(policy, "GET", f"{THINGS}/1", reader, ["DELETE"]) == refusals.OVERRIDE_FORBIDDEN
    assert decide(policy, "GET", f"{THINGS}/1", writer, [" delete "]) is None
    assert decide(policy, "GET", f"{THINGS}/1", writer, ["GET, DELETE"]) == refusals.BAD_OVERRIDE
    assert decide(policy, "GET", f"{THINGS}/1?_method=PUT", reader) == (refusals.OVERRIDE_FORBIDDEN)
    assert decide(policy, "GET", f"{THINGS}/1?%5Fmethod=PUT", writer) is None
    # Anonymous callers keep their overrides: the backend authenticates its own users.
    assert decide(policy, "GET", f"{THINGS}/1?_method=DELETE", None, ["PUT"]) is None


def test_caller_of_resolves_a_credential_to_its_key_or_refusal() -> None:
    table = KeyTable()
    secret = keys.generate_key()
    assert caller_of(table, None, 0.0) is None
    assert caller_of(table, refusals.CREDENTIAL_CONFLICT, 0.0) == refusals.CREDENTIAL_CONFLICT
    assert caller_of(table, Credential("kg_garbage", False), 0.0) == refusals.KEY_MALFORMED
    assert caller_of(table, Credential(secret, False), 0.0) == refusals.KEY_UNKNOWN


def test_explain_names_the_rule_only_when_the_request_goes_through() -> None:
    policy = policy_from_data(POLICY, "test-policy")
    writer = roles_caller(["writer"])
    allowed = explain(policy, "GET", f"{REST}/%74hings/1?x=1", writer)
    assert allowed.refusal is None and allowed.reason == "allowed"
    assert allowed.path == f"{THINGS}/1" and allowed.rule is not None
    assert allowed.rule.text == f"GET {THINGS}/**"
    overridden = explain(policy, "GET", f"{THINGS}/1?_method=POST", writer)
    assert overridden.reason == "override_forbidden" and overridden.rule is None
    refused = explain(policy, "GET", f"{THINGS}%2F1", writer)
    assert refused.reason == "bad_target" and refused.path is None
