"""Deprecation/Sunset headers on the answers to a key within its expiry warning window."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import test_forward_auth
from support.config import add_key
from support.http import RawResponse, http_request, raw_request
from test_forward_auth import ASKS, READER_ROLE, SESSIONS, Upstream, ask, header, serving

from gateway.keys.sunset import SunsetHeaders
from gateway.serve.wiring import RunningGateway
from gateway.store.base import KeyChanges

DAY = 86_400
upstream = test_forward_auth.upstream  # the counting upstream fixture


def iso(days: float) -> str:
    """An ISO-8601 UTC time `days` from now (whole seconds)."""
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    return moment.isoformat().replace("+00:00", "Z")


async def proxied(gateway: RunningGateway, secret: str) -> RawResponse:
    """GET a sessions path through the proxy with the key."""
    request = http_request("GET", SESSIONS, [("X-API-Key", secret)])
    return await raw_request(gateway.proxy_port, request)


async def expiry_of(gateway: RunningGateway, name: str) -> float:
    row = await gateway.runtime.store.get_key_by_name(name)
    assert row is not None and row.expires_at is not None
    return float(row.expires_at)


def assert_notice(response: RawResponse, expires_at: float, warn_days: int = 14) -> None:
    """Deprecation at the window's start (@seconds), Sunset the HTTP-date of the expiry."""
    assert header(response, "Deprecation") == f"@{int(expires_at - warn_days * DAY)}"
    sunset = header(response, "Sunset")
    assert sunset is not None and sunset.endswith(" GMT"), sunset
    assert parsedate_to_datetime(sunset).timestamp() == int(expires_at)


def assert_no_notice(response: RawResponse) -> None:
    assert header(response, "Deprecation") is None
    assert header(response, "Sunset") is None


async def test_proxy_and_forward_auth_carry_them_inside_the_window_only(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with serving(tmp_path, upstream) as gateway:
        soon = await add_key(gateway, "soon", [READER_ROLE], expires_at=iso(3))
        later = await add_key(gateway, "later", [READER_ROLE], expires_at=iso(30))
        never = await add_key(gateway, "never", [READER_ROLE])
        expires = await expiry_of(gateway, "soon")
        answer = await proxied(gateway, soon)
        assert answer.status == 200, answer.body
        assert_notice(answer, expires)
        for secret in (later, never):
            answer = await proxied(gateway, secret)
            assert answer.status == 200, answer.body
            assert_no_notice(answer)
        for how in ASKS.values():
            allowed = await ask(gateway, how, "GET", SESSIONS, [("X-API-Key", soon)])
            assert allowed.status == 200, allowed.body
            assert_notice(allowed, expires)
            for secret in (later, never):
                allowed = await ask(gateway, how, "GET", SESSIONS, [("X-API-Key", secret)])
                assert allowed.status == 200, allowed.body
                assert_no_notice(allowed)
            # A refusal carries none: the decision said no, whatever the key's expiry.
            refused = await ask(gateway, how, "DELETE", SESSIONS, [("X-API-Key", soon)])
            assert refused.status == 403, refused.body
            assert_no_notice(refused)


async def test_the_window_follows_warn_days_and_an_edit(tmp_path: Path, upstream: Upstream) -> None:
    async with serving(tmp_path, upstream, expiry={"warn_days": 40}) as gateway:
        secret = await add_key(gateway, "k", [READER_ROLE], expires_at=iso(30))
        answer = await proxied(gateway, secret)
        assert_notice(answer, await expiry_of(gateway, "k"), warn_days=40)
        # Moved past the window: the next answer has none (the table changed, not a cache).
        row = await gateway.runtime.store.get_key_by_name("k")
        assert row is not None
        await gateway.runtime.store.update_key(
            row.id, KeyChanges(expires_at=time.time() + 60 * DAY), "test", None
        )
        await gateway.runtime.apply_own_writes()
        assert_no_notice(await proxied(gateway, secret))


async def test_off_by_setting(tmp_path: Path, upstream: Upstream) -> None:
    async with serving(tmp_path, upstream, expiry={"sunset_headers": False}) as gateway:
        soon = await add_key(gateway, "soon", [READER_ROLE], expires_at=iso(1))
        answer = await proxied(gateway, soon)
        assert answer.status == 200, answer.body
        assert_no_notice(answer)
        allowed = await ask(gateway, ASKS["forward"], "GET", SESSIONS, [("X-API-Key", soon)])
        assert allowed.status == 200, allowed.body
        assert_no_notice(allowed)


def test_the_window_edges() -> None:
    headers = SunsetHeaders(warn_days=14, enabled=True)
    expires = 2_000_000_000.5
    start = expires - 14 * DAY
    assert headers.for_key(expires, start - 0.001) == ()
    assert dict(headers.for_key(expires, start)) == {
        "Deprecation": f"@{int(start)}",
        "Sunset": "Wed, 18 May 2033 03:33:20 GMT",
    }
    assert headers.for_key(None, expires) == ()
    assert SunsetHeaders(warn_days=14, enabled=False).for_key(expires, start) == ()
