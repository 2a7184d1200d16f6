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
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import expect as page_expect
from support.config import REST, policy_data
from support.upstreams import Backend, start_backend
from test_web_page import (
    CHROMIUM_ARGS,
    LIVE_BOUND,
    NARROW,
    PASSWORDS,
    WIDE,
    Site,
    chromium_or_skip,
    cli,
    open_settings,
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

        # The row menu's "Check access…" and "Audit history" go to those views (back returns).
        nav.get_by_role("link", name="Keys").click()
        search(page, "other-key")
        open_settings(page, "other-key").get_by_role("menuitem", name="Check access…").click()
        assert page.url.endswith("/#/check")
        page_expect(page.get_by_label("Key", exact=True)).to_have_value("other-key")
        page_expect(page.get_by_label("Path", exact=True)).to_be_focused()
        page.go_back()
        open_settings(page, "other-key").get_by_role("menuitem", name="Audit history").click()
        assert page.url.endswith("/#/audit")
        heading_focused(page, "Audit log")
        page_expect(page.locator("#audit-body tr").first).to_contain_text("other-key")

        page.goto(site.url + "#/keys/999999")  # no such key: said, not an error
        page_expect(page.locator("#key-page-title")).to_have_text("Key not found")
        page_expect(page.locator("#key-page-missing")).to_be_visible()


# --------------------------------------------------------------------------- a key's page

# (method, path) sent through the proxy, in order: sessions reads (forwarded, 200), upstream
# 503s (forwarded, counted as upstream 5xx), writes (refused by the policy, 403), then reads
# past the key's rate limit (429 once its burst is spent).
MIX = [
    *[("GET", f"{REST}/sessions/")] * 3,
    *[("GET", f"{REST}/_status/503")] * 2,
    *[("PUT", f"{REST}/sessions/")] * 2,
    *[("GET", f"{REST}/sessions/")] * 4,
]
MIX_LIMIT = "6/hour,burst=6"  # six admitted requests, then 429 (an hour's slack: no refill)


def send_mix(site: Site, secret: str) -> dict[str, int]:
    """Send MIX through the proxy; return the counts the usage API must show for it."""
    statuses = [through_proxy(site, secret, method, path) for method, path in MIX]
    seen = Counter(statuses)
    expected = {
        "forwarded": sum(n for status, n in seen.items() if status not in (403, 429)),
        "denied": seen[403],
        "limited": seen[429],
        "upstream_errors": sum(n for status, n in seen.items() if status >= 500),
    }
    # The mix covers every layer of the chart: each count is non-zero.
    assert seen[200] >= 1 and all(expected.values()), statuses
    return expected


def usage_totals(site: Site, ident: int, query: str = "") -> dict[str, int]:
    """The usage API's sums over the window of `query` (default: the last 24 hours)."""
    points = admin_get(site, f"/api/v1/keys/{ident}/usage{query}")["points"]
    return {name: sum(p[name] for p in points) for name in ("forwarded", "denied", "limited",
                                                               "upstream_errors")}  # fmt: skip


def test_key_page_shows_settings_roles_usage_and_history(browser: Browser, site: Site) -> None:
    created = cli(site.config, "keys", "create", "--name", "mix-old", "--role",
                  "1int-sessions-read", "--role", STATUS_ROLE, "--rate-limit", MIX_LIMIT,
                  "--description", "Mixed traffic for the chart", "--json")  # fmt: skip
    secret = json.loads(created)["secret"]
    ident = int(json.loads(created)["id"])
    cli(site.config, "keys", "edit", "mix-old", "--name", MIX_KEY)  # a rename: same id
    deadline = time.monotonic() + FLUSH_BOUND  # the proxy follows the CLI's write by the feed
    while through_proxy(site, secret, "HEAD", f"{REST}/nothing") == 401:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    expected = send_mix(site, secret)
    expected["denied"] += 1  # the probe that found the key known (403: no rule allows it)
    while usage_totals(site, ident) != expected:  # flushed every usage.flush_interval
        assert time.monotonic() < deadline + FLUSH_BOUND, usage_totals(site, ident)
        time.sleep(0.1)
    cli(site.config, "keys", "revoke", MIX_KEY)
    cli(site.config, "keys", "reinstate-all")  # a batch: it names no single key
    cli(site.config, "keys", "roll", MIX_KEY, "--overlap", "7200")

    for width in (WIDE, NARROW):
        with signed_in(browser, site, width=width) as page:
            search(page, MIX_KEY)
            row(page, MIX_KEY).get_by_role("link", name=MIX_KEY).click()
            heading_focused(page, MIX_KEY)
            settings = page.locator("#key-settings")
            page_expect(settings.locator("[data-setting='Description']")).to_have_text(
                "Mixed traffic for the chart"
            )
            page_expect(settings.locator("[data-setting='Prefix']")).to_contain_text("kg_")
            page_expect(settings.locator("[data-setting='Created']")).to_contain_text("by cli:")
            page_expect(settings.locator("[data-setting='Rate limit']")).to_have_text(
                "6 per hour, burst 6"
            )
            page_expect(settings.locator("[data-setting='Secret']")).to_contain_text(
                "old secret valid until"
            )
            roles = page.locator("#key-roles")
            status_role = roles.locator(f"[data-role='{STATUS_ROLE}']")
            page_expect(status_role).to_contain_text(f"GET {REST}/_status/*")
            page_expect(status_role).to_contain_text("chosen-status route")
            page_expect(roles.locator("[data-role='1int-sessions-read']")).to_contain_text(
                f"GET {REST}/sessions/**"
            )

            check_chart(page, expected)
            for label, name, points in (("7 days", "7d", (168,)), ("90 days", "90d", (90, 91))):
                page.get_by_role("button", name=label).click()
                page_expect(page.get_by_role("button", name=label)).to_have_attribute(
                    "aria-pressed", "true"
                )
                page_expect(page.locator(f"#usage-chart svg[data-range='{name}']")).to_be_visible()
                check_chart(page, expected)
                # Whole hours of 7 days; days touched by the last 90 days' hours.
                assert page.locator("#usage-chart g.bar").count() in points
            page.get_by_role("button", name="24 hours").click()
            page_expect(page.locator("#usage-chart svg[data-range='24h']")).to_be_visible()
            page_expect(page.locator("#usage-chart g.bar")).to_have_count(24)  # whole hours
            check_chart(page, expected)

            history = page.locator("#key-history-body tr")
            page_expect(history.filter(has_text="Reinstated all")).to_have_count(1)
            page_expect(history.filter(has_text="Rolled")).to_have_count(1)
            page_expect(history.filter(has_text=f"name: mix-old → {MIX_KEY}")).to_have_count(1)
            page_expect(
                history.filter(has_text="Created").filter(has_text="mix-old")
            ).to_have_count(1)  # the entry under the key's earlier name
            page_expect(history).to_have_count(5)
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            screenshot(page, f"key-page-{width}.png", full_page=True)
            page.get_by_role("button", name="Show as table").click()
            table = page.locator(".usage-table")
            page_expect(table).to_be_visible()
            wrap = page.locator("#usage-table-wrap")
            assert wrap.evaluate("n => n.scrollWidth <= n.clientWidth"), "the table scrolls"
            table.scroll_into_view_if_needed()
            screenshot(page, f"key-page-table-{width}.png")


def check_chart(page: Page, expected: dict[str, int]) -> None:
    """The chart's legend, its bars and its table (shown or not) carry the expected counts."""
    table = page.locator(".usage-table")
    totals = table.locator("tfoot td")
    page_expect(totals).to_have_text(
        [str(expected[name]) for name in ("forwarded", "upstream_errors", "denied", "limited")]
    )
    legend = page.locator("#usage-legend")
    ok = expected["forwarded"] - expected["upstream_errors"]
    refused = expected["denied"] + expected["limited"]
    page_expect(legend.locator("[data-total='ok']")).to_have_text(str(ok))
    page_expect(legend.locator("[data-total='upstream']")).to_have_text(
        str(expected["upstream_errors"])
    )
    page_expect(legend.locator("[data-total='refused']")).to_have_text(str(refused))
    chart = page.locator("#usage-chart svg")
    page_expect(chart).to_have_attribute(
        "aria-label", re.compile(rf"{expected['forwarded']} forwarded.*{refused} refused")
    )
    # Every request falls in one bar (all were sent within a minute or two): its three
    # layers' heights are in proportion to the counts.
    heights = chart.evaluate(
        """svg => {
            const bars = [...svg.querySelectorAll("g.bar")].filter(g => g.querySelector("rect"));
            const sum = (g, name) => [...g.querySelectorAll(`rect.layer-${name}`)]
                .reduce((total, rect) => total + Number(rect.getAttribute("height")), 0);
            return bars.map(g => [sum(g, "ok"), sum(g, "upstream"), sum(g, "refused")]);
        }"""
    )
    assert len(heights) in (1, 2), heights  # two when the mix straddled an hour
    ok_h, upstream_h, refused_h = (sum(h[i] for h in heights) for i in range(3))
    assert ok_h > 0 and upstream_h > 0 and refused_h > 0
    if len(heights) == 1:
        assert abs(ok_h / upstream_h - ok / expected["upstream_errors"]) < 0.01
        assert abs(refused_h / upstream_h - refused / expected["upstream_errors"]) < 0.01


# --------------------------------------------------------------------------- density


def sign_in_by_api(site: Site, times: int) -> None:
    """Sign root in `times` times through the API (each an audit entry "Signed in")."""
    for _ in range(times):
        request = urllib.request.Request(
            f"http://127.0.0.1:{site.admin_port}/api/v1/session",
            method="POST",
            data=json.dumps({"name": "root", "password": PASSWORDS["root"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status in (200, 201)


@pytest.mark.parametrize("width", [WIDE, NARROW])
def test_page_x_of_y_unbroken_names_and_clamped_descriptions(
    browser: Browser, site: Site, width: int
) -> None:
    with signed_in(browser, site, width=width) as page:
        search(page, "bulk-")
        body = page.locator("#keys-body tr")
        page_expect(body).to_have_count(50)
        label = page.locator("#page-label")
        page_expect(label).to_have_text("Page 1 of 2")
        page.get_by_role("button", name="Next page").click()
        page_expect(body).to_have_count(5)
        page_expect(label).to_have_text("Page 2 of 2")
        search(page, "bulk-0")
        page_expect(label).to_have_text("Page 1 of 1")
        search(page, "")
        page_expect(label).to_have_text(re.compile(r"Page 1 of 2"))  # 57+ keys, 50 a page

        search(page, "warehouse")
        name = row(page, LONG_NAME).get_by_role("link", name=LONG_NAME)
        # One line box: the name is not broken at its hyphens (nor anywhere else).
        lines = name.evaluate("a => a.getClientRects().length")
        assert lines == 1, f"the name is broken into {lines} lines"
        height = name.evaluate("a => a.getBoundingClientRect().height")
        line = name.evaluate("a => parseFloat(getComputedStyle(a).lineHeight)")
        assert height <= line * 1.2
        clamp = row(page, LONG_NAME).locator(".clamp")
        page_expect(clamp).to_have_attribute("title", LONG_DESCRIPTION.strip())
        box = clamp.evaluate(
            "n => [n.clientHeight, n.scrollHeight, parseFloat(getComputedStyle(n).lineHeight)]"
        )
        assert box[1] > box[0], "the long description is not clamped"
        assert box[0] <= 2 * box[2] + 1, "more than two lines shown"
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        wrap = page.locator("#view-keys .table-wrap")  # the row's controls in view, no scrolling
        assert wrap.evaluate("n => n.scrollWidth <= n.clientWidth")
        page_expect(
            row(page, LONG_NAME).get_by_role("button", name=f"Settings for {LONG_NAME}")
        ).to_be_in_viewport()
        screenshot(page, f"density-{width}.png")

        name.click()  # the whole description on the key's page
        description = page.locator("#key-settings [data-setting='Description']")
        page_expect(description).to_have_text(LONG_DESCRIPTION.strip())
        full = description.evaluate("n => n.scrollHeight <= n.clientHeight + 1")
        assert full, "the key's page cuts the description"
        title = page.locator("#key-page-title")
        assert title.evaluate("h => h.getClientRects().length") == 1
        assert title.evaluate("h => h.getBoundingClientRect().height") < 60  # one line
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        screenshot(page, f"density-key-{width}.png")


def test_sign_ins_fold_into_one_expandable_row(browser: Browser, site: Site) -> None:
    cli(site.config, "keys", "edit", "other-key", "--description", "between the sign-ins")
    sign_in_by_api(site, 4)
    for signed, width in ((5, WIDE), (6, NARROW)):
        with signed_in(browser, site, width=width) as page:  # a fifth, then a sixth
            page.get_by_role("navigation", name="Views").get_by_role("link", name="Audit").click()
            audit = page.locator("#audit-body")
            label = f"{signed} sign-ins by local:root"
            toggle = audit.get_by_role("button", name=label, exact=True)
            page_expect(toggle).to_have_attribute("aria-expanded", "false")
            folded = audit.locator("tr.folded-item")
            page_expect(folded.first).to_be_hidden()
            first_rows = audit.locator("tr:visible")
            page_expect(first_rows.nth(0)).to_contain_text(label)
            page_expect(first_rows.nth(1)).to_contain_text("other-key")  # the key event shows
            page_expect(first_rows.nth(1)).to_contain_text("between the sign-ins")
            screenshot(page, f"audit-folded-{width}.png")
            toggle.click()
            page_expect(toggle).to_have_attribute("aria-expanded", "true")
            items = audit.locator("tr.folded-item:visible")  # other runs stay folded
            page_expect(items).to_have_count(signed)
            page_expect(items.first).to_contain_text("Signed in")
            screenshot(page, f"audit-unfolded-{width}.png")
            toggle.click()
            page_expect(items.first).to_be_hidden()


# --------------------------------------------------------------------------- the rules, pure


def test_routes_folding_axis_and_summary_rules(browser: Browser, site: Site) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(site.url)
        shown = page.evaluate(
            """async () => {
                const router = await import("/static/router.js");
                const audit = await import("/static/auditview.js");
                const chart = await import("/static/chart.js");
                const density = await import("/static/density.js");
                const e = (id, action, actor = "local:alice") => ({ id, action, actor });
                const folded = audit.foldSignIns([
                    e(9, "admin_sign_in"), e(8, "admin_sign_out"), e(7, "admin_sign_in"),
                    e(6, "edit"), e(5, "admin_sign_in"), e(4, "admin_login_failed"),
                    e(3, "admin_sign_in", "local:bob"), e(2, "admin_sign_in"),
                ]);
                return {
                    routes: ["", "#/keys", "#/audit", "#/check", "#/keys/12", "#/keys/0",
                             "#/keys/x", "#sign-in-error=cancelled", "#/nope"]
                        .map(hash => router.routeHash(router.parseRoute(hash))),
                    folds: folded.map(item => item.fold
                        ? audit.foldLabel(item.fold) : item.event.action),
                    nice: [0, 1, 3, 12, 20, 21, 480, 999].map(chart.niceCeiling),
                    summary: density.summaryText({ total: 73, active: 69, revoked: 0,
                        expired: 1, expiring: 2, unused: 5, unused_days: 30 }),
                    one: density.summaryText({ total: 1, revoked: 0, expired: 0, expiring: 0,
                        unused: 0, unused_days: 30 }),
                    pages: [[0, 0, false], [0, 50, false], [1, 51, false], [0, 10000, true]]
                        .map(([at, count, capped]) => density.pageLabel(at, 50, { count, capped })),
                };
            }"""
        )
    finally:
        context.close()
    assert shown["routes"] == [
        "#/keys", "#/keys", "#/audit", "#/check", "#/keys/12", "#/keys", "#/keys", "#/keys",
        "#/keys",
    ]  # fmt: skip
    assert shown["folds"] == [
        "2 sign-ins, 1 sign-out by local:alice",
        "edit",
        "admin_sign_in",  # one alone is not folded
        "admin_login_failed",  # failed sign-ins are never folded
        "2 sign-ins by local:bob, local:alice",
    ]
    assert shown["nice"] == [1, 1, 5, 20, 20, 50, 500, 1000]
    assert shown["summary"] == "73 keys · 1 expired · 2 expiring · 5 unused for 30 days"
    assert shown["one"] == "1 key"
    assert shown["pages"] == ["Page 1 of 1", "Page 1 of 1", "Page 2 of 2", "Page 1 of 200+"]


def test_key_page_follows_changes_made_elsewhere(browser: Browser, site: Site) -> None:
    ident = key_id(site, "other-key")
    with signed_in(browser, site) as page:
        page.goto(f"{site.url}#/keys/{ident}")
        description = page.locator("#key-settings [data-setting='Description']")
        page_expect(page.locator("#key-page-title")).to_have_text("other-key")
        cli(site.config, "keys", "edit", "other-key", "--description", "changed by the CLI")
        written = time.monotonic()
        page_expect(description).to_have_text("changed by the CLI", timeout=5_000)
        assert time.monotonic() - written <= LIVE_BOUND
        history = page.locator("#key-history-body tr")
        page_expect(history.first).to_contain_text("changed by the CLI")

        page.get_by_role("button", name="Edit", exact=True).click()  # the page's own Edit
        dialog = page.get_by_role("dialog", name="Edit API key other-key")
        dialog.get_by_label("Description", exact=True).fill("changed on its page")
        dialog.get_by_role("button", name="Save").click()
        page_expect(dialog).to_be_hidden()
        page_expect(page.get_by_role("button", name="Edit", exact=True)).to_be_focused()
        page_expect(description).to_have_text("changed on its page")


def test_without_the_insight_endpoints_the_page_degrades(browser: Browser, site: Site) -> None:
    ident = key_id(site, "other-key")
    missing = {"error": "not_found", "message": "no such resource"}
    for width in (WIDE, NARROW):
        with signed_in(browser, site, width=width) as page:
            # An older keygate: no OpenAPI document to read, no summary, advice, rules or
            # addresses endpoints (404, as the admin listener answers an unknown path).
            for pattern in ("**/api/v1/openapi.json", "**/api/v1/keys/summary*",
                            "**/api/v1/keys/*/advice*", "**/api/v1/keys/*/rules*",
                            "**/api/v1/keys/*/addresses*"):  # fmt: skip
                page.route(pattern, lambda route: route.fulfill(status=404, json=missing))
            page.reload()
            page_expect(
                row(page, "other-key").or_(page.locator("#keys-body tr").first)
            ).to_be_visible()
            page_expect(page.locator("#keys-summary")).to_be_hidden()
            page_expect(page.get_by_label("Role", exact=True)).to_be_hidden()  # undocumented
            page_expect(page.get_by_label("Created by", exact=True)).to_be_hidden()
            page_expect(page.locator("#page-label")).to_have_text(re.compile(r"Page 1 of \d+"))
            page.goto(f"{site.url}#/keys/{ident}")
            page_expect(page.locator("#key-page-title")).to_have_text("other-key")
            page_expect(page.locator("#usage-chart svg")).to_be_visible()
            page_expect(page.locator("#key-history-body tr").first).to_be_visible()
            for section in ("#key-advice", "#key-rules-used", "#key-addresses"):
                page_expect(page.locator(section)).to_be_hidden()
            page.get_by_role("navigation", name="Views").get_by_role("link", name="Audit").click()
            page_expect(page.get_by_role("link", name="Export CSV")).to_be_hidden()
            page_expect(page.get_by_label("Text", exact=True)).to_be_hidden()
            screenshot(page, f"degraded-{width}.png")


# --------------------------------------------------------------------------- insight (24.3, 24.5)

ADVICE_ROLES = ["1int-sessions-read", STATUS_ROLE, "1int-rules-read"]


def summary_line(summary: dict[str, Any]) -> str:
    """The summary line the page must show for a GET /api/v1/keys/summary answer."""
    parts = [f"{summary['total']} key{'s' if summary['total'] != 1 else ''}"]
    parts += [
        f"{summary[name]} {name}" for name in ("revoked", "expired", "expiring") if summary[name]
    ]
    if summary["unused"]:
        parts.append(f"{summary['unused']} unused for {summary['unused_days']} days")
    return " · ".join(parts)


def test_summary_line_and_role_and_creator_filters(browser: Browser, site: Site) -> None:
    summary = admin_get(site, "/api/v1/keys/summary?unused_days=30")
    for width in (WIDE, NARROW):
        with signed_in(browser, site, width=width) as page:
            line = page.locator("#keys-summary")
            page_expect(line).to_be_visible()
            page_expect(line).to_have_text(summary_line(summary))
            assert summary["total"] >= len(VIEW_KEYS)
            cli(site.config, "keys", "create", "--name", f"filter-{width}", "--role", STATUS_ROLE)
            page_expect(line).to_contain_text(f"{summary['total'] + 1} keys", timeout=5_000)
            summary["total"] += 1

            body = page.locator("#keys-body tr")
            page.get_by_label("Role", exact=True).select_option(STATUS_ROLE)
            page_expect(row(page, f"filter-{width}")).to_be_visible()
            page_expect(body.filter(has_not_text=STATUS_ROLE)).to_have_count(0)
            page_expect(row(page, "other-key")).to_have_count(0)
            page_expect(page.locator("#page-label")).to_have_text("Page 1 of 1")
            page.get_by_label("Role", exact=True).select_option("")
            page.get_by_label("Created by", exact=True).fill("cli:root")
            page_expect(body.filter(has_not_text="by cli:root")).to_have_count(0)
            page_expect(row(page, f"filter-{width}")).to_be_visible()
            page_expect(row(page, LONG_NAME)).to_have_count(0)  # minted by "test"
            screenshot(page, f"summary-filters-{width}.png")


def test_advice_rules_used_and_addresses_on_the_key_page(browser: Browser, site: Site) -> None:
    args = [arg for role in ADVICE_ROLES for arg in ("--role", role)]
    answer = cli(site.config, "keys", "create", "--name", "advice-key", *args, "--json")
    created = json.loads(answer)
    secret, ident = created["secret"], int(created["id"])
    deadline = time.monotonic() + FLUSH_BOUND
    while through_proxy(site, secret, "GET", f"{REST}/sessions/") == 401:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(2):
        assert through_proxy(site, secret, "GET", f"{REST}/sessions/") == 200
    while admin_get(site, f"/api/v1/keys/{ident}/advice?days=30")["requests"] != 3:
        assert time.monotonic() < deadline + FLUSH_BOUND
        time.sleep(0.1)
    for width in (WIDE, NARROW):
        with signed_in(browser, site, width=width) as page:
            page.goto(f"{site.url}#/keys/{ident}")
            advice = page.locator("#key-advice")
            page_expect(advice).to_contain_text(
                "In the last 30 days this key used only role '1int-sessions-read'"
            )
            page_expect(advice.locator("[data-advice='Roles not used']")).to_contain_text(
                STATUS_ROLE
            )
            rules = page.locator("#key-rules-used")
            used = rules.locator("tbody tr")
            page_expect(used).to_have_count(1)
            page_expect(used.first).to_contain_text(f"GET {REST}/sessions/**")
            page_expect(used.first.locator("td.num")).to_have_text("3")
            page_expect(page.locator("#key-addresses")).to_contain_text("127.0.0.1")
            wrap = page.locator("#key-rules-used-body")
            assert wrap.evaluate("n => n.scrollWidth <= n.clientWidth"), "the rules table scrolls"
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            screenshot(page, f"key-advice-{width}.png", full_page=True)

            apply = advice.get_by_role("button", name="Edit roles to 1int-sessions-read…")
            apply.click()
            dialog = page.get_by_role("dialog", name="Edit API key advice-key")
            page_expect(dialog.get_by_role("checkbox", name="1int-sessions-read")).to_be_checked()
            page_expect(dialog.get_by_role("checkbox", name=STATUS_ROLE)).not_to_be_checked()
            page_expect(dialog.get_by_role("checkbox", name="1int-rules-read")).not_to_be_checked()
            page.keyboard.press("Escape")  # nothing changes without saving
            page_expect(dialog).to_be_hidden()
            page_expect(apply).to_be_focused()
            assert sorted(admin_get(site, f"/api/v1/keys/{ident}")["roles"]) == sorted(ADVICE_ROLES)
    with signed_in(browser, site) as page:  # and saving it narrows the key
        page.goto(f"{site.url}#/keys/{ident}")
        page.locator("#key-advice").get_by_role("button", name=re.compile("Edit roles to")).click()
        page.get_by_role("dialog").get_by_role("button", name="Save").click()
        page_expect(page.locator("#key-roles > li")).to_have_count(1)
        assert admin_get(site, f"/api/v1/keys/{ident}")["roles"] == ["1int-sessions-read"]


def test_audit_filters_and_csv_export(browser: Browser, site: Site) -> None:
    cli(site.config, "keys", "edit", "other-key", "--description", "audit-filter-marker")
    for width in (WIDE, NARROW):
        with signed_in(browser, site, width=width) as page:
            page.get_by_role("navigation", name="Views").get_by_role("link", name="Audit").click()
            body = page.locator("#audit-body tr:visible")
            page.get_by_label("Action", exact=True).select_option(label="Sign-ins and sign-outs")
            page.get_by_role("button", name="Filter").click()
            page_expect(body.filter(has_not_text=re.compile("sign-in|Signed"))).to_have_count(0)
            page.get_by_label("Action", exact=True).select_option("")

            page.get_by_label("Text", exact=True).fill("filter-marker")  # part of a detail
            page.get_by_role("button", name="Filter").click()
            page_expect(body).to_have_count(1)
            page_expect(body.first).to_contain_text("other-key")
            today = time.strftime("%Y-%m-%d")
            page.get_by_label("From", exact=True).fill(today)
            page.get_by_label("Until", exact=True).fill(today)
            page.get_by_role("button", name="Filter").click()
            page_expect(body).to_have_count(1)
            tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 86_400))
            page.get_by_label("From", exact=True).fill(tomorrow)
            page.get_by_label("Until", exact=True).fill(tomorrow)
            page.get_by_role("button", name="Filter").click()
            page_expect(page.locator("#audit-empty")).to_be_visible()
            page.get_by_label("From", exact=True).fill(today)
            page.get_by_label("Until", exact=True).fill(today)
            page.get_by_role("button", name="Filter").click()
            page_expect(body).to_have_count(1)

            link = page.get_by_role("link", name="Export CSV")
            page_expect(link).to_be_visible()
            href = link.get_attribute("href") or ""
            assert "format=csv" in href and "q=filter-marker" in href and "limit" not in href
            answer = page.request.get(site.url.rstrip("/") + href)  # the page's cookie
            assert answer.status == 200
            assert answer.headers["content-type"].startswith("text/csv")
            lines = answer.text().strip().splitlines()
            assert len(lines) == 2 and "filter-marker" in lines[1]
            screenshot(page, f"audit-filters-{width}.png")


def test_key_page_edit_is_disabled_with_the_reason_outside_the_grants(
    browser: Browser, site: Site
) -> None:
    created = json.loads(
        cli(site.config, "keys", "create", "--name", "outside-key", "--role", STATUS_ROLE, "--json")
    )
    with signed_in(browser, site, name="limited", width=NARROW) as page:
        page.goto(f"{site.url}#/keys/{created['id']}")
        reason = re.compile(rf"can't manage keys with role .{STATUS_ROLE}.: your grants are 1int-")
        # Every action the row menu disables for this admin, disabled here too, saying why.
        for name in ("Edit", "Roll…", "Revoke", "Delete"):
            button = page.locator(".key-head").get_by_role("button", name=name, exact=True)
            page_expect(button).to_be_disabled()
            page_expect(button).to_have_accessible_description(reason)
        page_expect(page.locator("#key-page-edit-reason")).to_have_text(reason)
        page_expect(page.get_by_role("button", name="Reinstate", exact=True)).to_be_hidden()
        advice = page.locator("#key-advice")  # the roles it may not edit are not offered
        page_expect(advice.get_by_role("button", name=re.compile("Edit roles to"))).to_have_count(0)
        screenshot(page, f"key-page-limited-{NARROW}.png")
    with signed_in(browser, site, width=NARROW) as page:  # root may
        page.goto(f"{site.url}#/keys/{created['id']}")
        for name in ("Edit", "Roll…", "Revoke", "Delete"):
            button = page.locator(".key-head").get_by_role("button", name=name, exact=True)
            page_expect(button).to_be_enabled()
        page_expect(page.locator("#key-page-edit-reason")).to_be_hidden()
