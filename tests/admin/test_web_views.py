"""Issue 24.2 and 24.5 in a real browser: views with their own URLs, a page per key (settings,
roles, a usage chart checked against requests sent through the real proxy, history), and the
list's density (page X of Y, unbroken names, clamped descriptions, folded sign-ins).

Drives Debian's Chromium like tests/admin/test_web_page.py (whose helpers it reuses);
screenshots at 1280 and 390 px go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import expect as page_expect
from support.config import REST, policy_data
from support.upstreams import Backend, start_backend
from test_web_page import (
    CHROMIUM_ARGS,
    NARROW,
    PASSWORDS,
    WIDE,
    Site,
    chromium_or_skip,
    row,
    running_site,
    screenshot,
    search,
    signed_in,
)

pytestmark = pytest.mark.slow

STATUS_ROLE = "test-status"  # may GET the test upstream's /_status/{code} (an upstream 5xx)
LONG_NAME = "warehouse-export-nightly-eu-west-reconciliation-job"  # 52 characters, 6 hyphens
LONG_DESCRIPTION = (
    "Exports the nightly reconciliation of every warehouse in eu-west to the finance "
    "data lake; owned by the data-platform team, paged through the on-call rota. "
) * 3
MIX_KEY = "mix-key"
FLUSH_BOUND = 10.0  # seconds within which the proxy's usage counts reach the store
VIEW_KEYS: list[dict[str, Any]] = [
    {"name": LONG_NAME, "roles": ["1int-sessions-read"], "description": LONG_DESCRIPTION.strip()},
    {"name": "other-key", "roles": ["1int-sessions-read"]},
    *({"name": f"bulk-{n:02d}", "roles": ["1int-sessions-read"]} for n in range(55)),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One system Chromium for the module (as test_web_page's; missing: skip, or fail under CI)."""
    executable = chromium_or_skip()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Backend]:
    """The test upstream (demo backend and `_status`) on a loop of its own thread: the
    sync Playwright API owns this thread's loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    backend = asyncio.run_coroutine_threadsafe(start_backend(), loop).result(10)
    try:
        yield backend
    finally:
        asyncio.run_coroutine_threadsafe(backend.runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, browser: Browser, upstream: Backend
) -> Iterator[Site]:
    """A gateway in front of the real test upstream; the policy adds a role for `_status`."""
    policy = policy_data()
    policy["roles"][STATUS_ROLE] = {
        "description": "the test upstream's chosen-status route",
        "allow": [f"GET {REST}/_status/*"],
    }
    with running_site(
        tmp_path_factory.mktemp("views") / "config", VIEW_KEYS, upstream=upstream.url, policy=policy
    ) as running:
        yield running


def basic(name: str = "root") -> dict[str, str]:
    """HTTP Basic credentials of an admin (the admin API takes them like a session)."""
    token = base64.b64encode(f"{name}:{PASSWORDS[name]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def admin_get(site: Site, path: str) -> Any:
    """GET an admin API path as root; return the JSON (it must succeed)."""
    request = urllib.request.Request(f"http://127.0.0.1:{site.admin_port}{path}", headers=basic())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def through_proxy(site: Site, secret: str, method: str, path: str) -> int:
    """One request through the real proxy with `secret`; return its status."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{site.proxy_port}{path}", method=method, headers={"X-API-Key": secret}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)


def key_id(site: Site, name: str) -> int:
    """A key's id, by name."""
    return int(admin_get(site, f"/api/v1/keys/{name}")["id"])


def heading_focused(page: Page, text: str) -> None:
    """The focused element is the view's heading, saying `text`."""
    focused = page.locator("[data-view-heading]:focus")
    page_expect(focused).to_have_text(text)


# --------------------------------------------------------------------------- views and URLs


@pytest.mark.parametrize("width", [WIDE, NARROW])
def test_views_have_urls_and_back_forward_reload_and_focus_follow(
    browser: Browser, site: Site, width: int
) -> None:
    other = key_id(site, "other-key")
    with signed_in(browser, site, width=width) as page:
        nav = page.get_by_role("navigation", name="Views")
        page_expect(nav.get_by_role("link", name="Keys")).to_have_attribute("aria-current", "page")
        nav.get_by_role("link", name="Audit").click()
        assert page.url.endswith("/#/audit")
        heading_focused(page, "Audit log")
        page_expect(page.locator("#view-keys")).to_be_hidden()
        page_expect(nav.get_by_role("link", name="Audit")).to_have_attribute("aria-current", "page")
        assert page.title() == "Audit log · keygate"
        screenshot(page, f"view-audit-{width}.png")

        nav.get_by_role("link", name="Check access").click()
        assert page.url.endswith("/#/check")
        heading_focused(page, "Can this key call…?")
        page_expect(page.locator("#view-audit")).to_be_hidden()

        page.go_back()
        page_expect(page.locator("#view-audit")).to_be_visible()
        heading_focused(page, "Audit log")
        page.go_back()
        page_expect(page.locator("#view-keys")).to_be_visible()
        heading_focused(page, "API Keys")
        page.go_forward()
        page_expect(page.locator("#view-audit")).to_be_visible()
        assert page.url.endswith("/#/audit")

        page.reload()  # the session cookie signs the page in again, on the same view
        page_expect(page.locator("#view-audit")).to_be_visible()
        page_expect(page.locator("#view-keys")).to_be_hidden()

        nav.get_by_role("link", name="Keys").click()
        search(page, "other-key")
        row(page, "other-key").get_by_role("link", name="other-key").click()
        assert page.url.endswith(f"/#/keys/{other}")
        heading_focused(page, "other-key")
        assert page.title() == "other-key · API key · keygate"
        page.go_back()
        page_expect(row(page, "other-key")).to_be_visible()
        heading_focused(page, "API Keys")
        page.go_forward()
        heading_focused(page, "other-key")
        page.reload()
        page_expect(page.locator("#key-page-title")).to_have_text("other-key")

        page.goto(site.url + "#/keys/999999")  # no such key: said, not an error
        page_expect(page.locator("#key-page-title")).to_have_text("Key not found")
        page_expect(page.locator("#key-page-missing")).to_be_visible()
