"""Issue 24 tried from outside: what a demanding new administrator trips over, in Chromium.

The summary line's "N unused for 30 days" (and the advice's) shows those keys in the list
with a removable chip; the key page's and the audit view's quiet refresh keep the entries
"Load more" added and the focus; a deep link (#/keys/12) survives the sign-in; the audit
action filter's choices are distinct; times in the history read like every other time; a
key's page offers the row menu's actions; sign-out resets the views for the next admin, and
so does a session that ended when another admin signs in (not when the same one does); a
roll's overlap reads "2 hours" in the history and the audit log. Uses
test_web_views' gateway (a module of its own here, so the counts it checks are its own).
Screenshots at 1280 and 390 px go to tests/artifacts/.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import sqlite3
import time
import urllib.request
from typing import Any

import pytest
import test_web_views
from playwright.sync_api import Browser, Locator, Page
from playwright.sync_api import expect as page_expect
from support.config import create_key as mint_key
from test_web_page import (
    NARROW,
    PASSWORDS,
    REVOKED_GREY,
    TIMEOUT_MS,
    WIDE,
    Site,
    cli,
    confirm_dialog,
    http,
    row,
    screenshot,
    search,
    session_cookie,
    sign_in,
    signed_in,
)
from test_web_views import LONG_NAME, admin_get, basic, heading_focused, key_id

from gateway.admin.sessions import token_hash
from gateway.settings import load_settings
from gateway.store.factory import store_for

pytestmark = pytest.mark.slow

# test_web_views' fixtures (one Chromium, the test upstream, a gateway of this module's own).
browser = test_web_views.browser
upstream = test_web_views.upstream
site = test_web_views.site

DAY = 86_400.0
UNUSED_DAYS = 30  # the summary line's window (density.js UNUSED_DAYS)
SELECT_CHROME = 40  # px a select needs beside its text: its padding and its arrow
HISTORY_PAGE = 25  # entries the key page's history and the audit view read at a time
BULK_KEYS = 55  # test_web_views' keys named bulk-NN


def admin_write(site: Site, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """A write to the admin API as root (HTTP Basic, JSON); return the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{site.admin_port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={**basic(), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def create_key(site: Site, name: str, **fields: Any) -> int:
    """Create a key through the admin API (with any other `fields`); return its id."""
    body = {"name": name, "roles": ["1int-sessions-read"], **fields}
    answer = admin_write(site, "POST", "/api/v1/keys", body)
    return int(answer["key"]["id"])


def last_used_long_ago(site: Site, ids: list[int], days: float) -> None:
    """Record one use of each key `days` days ago in the gateway's store (as a flush would)."""

    async def record() -> None:
        store = store_for(load_settings(site.config))
        await store.open()
        try:
            await store.record_usage({ident: (time.time() - days * DAY, 1) for ident in ids})
        finally:
            await store.close()

    # Playwright's sync API runs an event loop in this thread: record on another one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, record()).result()


def no_sideways_scroll(page: Page, width: int) -> None:
    """The page is no wider than the viewport."""
    assert page.evaluate("document.documentElement.scrollWidth") <= width


# --------------------------------------------------------------------------- unused keys


def test_unused_for_30_days_shows_those_keys_with_a_removable_chip(
    browser: Browser, site: Site
) -> None:
    idle = {name: create_key(site, name) for name in ("idle-one", "idle-two")}
    last_used_long_ago(site, list(idle.values()), 40)
    listed = admin_get(site, f"/api/v1/keys?unused_days={UNUSED_DAYS}&limit=1000")["items"]
    names = sorted(key["name"] for key in listed)
    summary = admin_get(site, f"/api/v1/keys/summary?unused_days={UNUSED_DAYS}")
    assert names == ["idle-one", "idle-two"] and summary["unused"] == 2
    label = f"2 unused for {UNUSED_DAYS} days"
    for width in (WIDE, NARROW):
        with signed_in(browser, site, width=width) as page:
            rows = page.locator("#keys-body tr")
            page_expect(rows).to_have_count(50)  # 57+ keys: a full page
            summary_line = page.locator("#keys-summary")
            unused = summary_line.get_by_role("button", name=label)
            unused.click()
            chip = page.get_by_role("button", name=f"Remove filter: unused for {UNUSED_DAYS} days")
            page_expect(chip).to_be_visible()
            page_expect(rows).to_have_count(2)
            for name in names:
                page_expect(row(page, name)).to_be_visible()
            page_expect(page.locator("#page-label")).to_have_text("Page 1 of 1")
            page_expect(summary_line.get_by_role("button", name=label)).to_be_focused()
            no_sideways_scroll(page, width)
            screenshot(page, f"walk-unused-filter-{width}.png")
            chip.click()
            page_expect(chip).to_be_hidden()
            page_expect(rows).to_have_count(50)
            page_expect(page.get_by_label("Search", exact=True)).to_be_focused()

            # The advice on a key's page leads to the same list.
            page.goto(f"{site.url}#/keys/{idle['idle-one']}")
            advice = page.locator("#key-advice")
            page_expect(advice).to_contain_text("made no requests")
            advice.get_by_role(
                "button", name=f"Show every key unused for {UNUSED_DAYS} days"
            ).click()
            page_expect(page.locator("#view-keys")).to_be_visible()
            assert page.url.endswith("#/keys")
            page_expect(chip).to_be_visible()
            page_expect(rows).to_have_count(2)


# --------------------------------------------------------------------------- quiet refresh


def test_a_quiet_refresh_keeps_the_entries_load_more_added_and_the_focus(
    browser: Browser, site: Site
) -> None:
    ident = create_key(site, "history-key")
    for n in range(HISTORY_PAGE + 5):  # 31 entries: the creation and 30 edits
        admin_write(site, "PATCH", f"/api/v1/keys/{ident}", {"description": f"edit {n}"})
    with signed_in(browser, site) as page:
        page.goto(f"{site.url}#/keys/{ident}")
        history = page.locator("#key-history-body tr")
        page_expect(history).to_have_count(HISTORY_PAGE)
        page.locator("#key-history-more").click()
        page_expect(history).to_have_count(HISTORY_PAGE + 6)
        # The button is gone (no more entries): the first entry it added has the focus.
        page_expect(history.nth(HISTORY_PAGE).get_by_role("link")).to_be_focused()
        history.nth(HISTORY_PAGE + 4).get_by_role("link").focus()  # an entry "Load more" added
        admin_write(site, "PATCH", f"/api/v1/keys/{ident}", {"description": "edited elsewhere"})
        page_expect(history.first).to_contain_text("edited elsewhere")
        page_expect(history).to_have_count(HISTORY_PAGE + 7)
        page_expect(history.nth(HISTORY_PAGE + 5).get_by_role("link")).to_be_focused()
        page_expect(history.last).to_contain_text("Created")
        page_expect(page.locator("#key-history-more")).to_be_hidden()

        # The audit view, filtered to the key, keeps them too.
        page.get_by_role("navigation", name="Views").get_by_role("link", name="Audit").click()
        page.get_by_label("Key name", exact=True).fill("history-key")
        page.get_by_role("button", name="Filter").click()
        audit = page.locator("#audit-body tr")
        page_expect(audit).to_have_count(HISTORY_PAGE)
        page.locator("#audit-more").click()
        page_expect(audit).to_have_count(HISTORY_PAGE + 7)
        page_expect(audit.nth(HISTORY_PAGE).get_by_role("link")).to_be_focused()
        audit.last.get_by_role("link").focus()
        admin_write(site, "PATCH", f"/api/v1/keys/{ident}", {"description": "and again"})
        page_expect(audit.first).to_contain_text("and again")
        page_expect(audit).to_have_count(HISTORY_PAGE + 8)
        page_expect(audit.last.get_by_role("link")).to_be_focused()


# --------------------------------------------------------------------------- deep links


def test_a_deep_link_survives_a_local_sign_in(browser: Browser, site: Site) -> None:
    ident = key_id(site, "other-key")
    for width in (WIDE, NARROW):
        context = browser.new_context(viewport={"width": width, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error, seen=errors: seen.append(str(error)))
            page.goto(f"{site.url}#/keys/{ident}")
            form = page.get_by_role("form", name="Sign in")
            form.get_by_label("Name", exact=True).fill("root")
            form.get_by_label("Password", exact=True).fill(PASSWORDS["root"])
            form.get_by_role("button", name="Sign in").click()
            page_expect(page.locator("#key-page-title")).to_have_text("other-key")
            assert page.url.endswith(f"#/keys/{ident}")
            heading_focused(page, "other-key")  # not the hidden list's search field
            screenshot(page, f"walk-deep-link-{width}.png")

            # What the provider's round trip leaves in this tab: put back once, and only a
            # route of the page's own; anything else is dropped unread.
            for stored, lands in (
                ("#/check", "#/check"),
                ('#/keys/1"><img src=x onerror=alert(1)>', "#/keys"),
                ("javascript:alert(1)", "#/keys"),
            ):
                page.evaluate(
                    "stored => sessionStorage.setItem('keygate.return-to', stored)", stored
                )
                page.goto(site.url)
                page_expect(page.locator(f"[data-view='{lands[2:]}']")).to_be_visible()
                page_expect(page.locator("img[src=x]")).to_have_count(0)
                assert page.evaluate("sessionStorage.getItem('keygate.return-to')") is None
            assert errors == []
        finally:
            context.close()


# --------------------------------------------------------------------------- audit actions


def test_the_audit_action_choices_are_distinct(browser: Browser, site: Site) -> None:
    with signed_in(browser, site, width=NARROW) as page:
        page.get_by_role("navigation", name="Views").get_by_role("link", name="Audit").click()
        # Cards of events that name no key (admins added, sign-ins) show no empty "Key" line.
        page_expect(page.locator("#audit-body tr:visible").first).to_be_visible()
        page_expect(page.locator("#audit-body td.key-cell:empty:visible")).to_have_count(0)
        action = page.get_by_label("Action", exact=True)
        groups = action.evaluate(
            """select => [...select.options]
                .filter(option => option.parentElement === select && option.value.includes(","))
                .map(option => [option.label, option.value.split(",")])"""
        )
        seen: dict[str, str] = {}
        for label, actions in groups:
            for name in actions:
                assert name not in seen, f"{name} is in both {seen[name]!r} and {label!r}"
                seen[name] = label
        labels = [label for label, _ in groups]
        assert "Changes to one key" in labels and "Changes to all keys at once" in labels
        action.select_option(label="Changes to all keys at once")
        page.get_by_role("button", name="Filter").click()
        export = page.get_by_role("link", name="Export CSV")
        page_expect(export).to_have_attribute(
            "href", re.compile(r"action=revoke_all%2Creinstate_all%2Cdelete_revoked(&|$)")
        )
        box = action.evaluate("n => n.getBoundingClientRect().right")
        assert box <= NARROW, "the action filter runs off the screen"
        # The chosen group's name is not cut (its text, the padding and the arrow fit).
        text, inner = action.evaluate(
            """select => {
                const span = document.createElement("span");
                span.style.font = getComputedStyle(select).font;
                span.style.whiteSpace = "nowrap";
                span.textContent = select.selectedOptions[0].label;
                document.body.append(span);
                const width = span.getBoundingClientRect().width;
                span.remove();
                return [width, select.clientWidth];
            }"""
        )
        assert text + SELECT_CHROME <= inner, f"'{text}' px of text in a {inner} px select"
        screenshot(page, f"walk-audit-actions-{NARROW}.png")


# --------------------------------------------------------------------------- 390 px


def test_the_pager_and_its_label_are_not_broken_at_390_px(browser: Browser, site: Site) -> None:
    with signed_in(browser, site, width=NARROW) as page:
        first = page.locator("#keys-body tr").first.get_by_role("link")
        page.get_by_role("button", name="Next page").click()
        page_expect(page.locator("#page-label")).to_have_text("Page 2 of 2")
        # The focus goes to the new page's first key (not lost with the now disabled button).
        page_expect(first).to_be_focused()
        page_expect(first).to_be_in_viewport()
        pager = page.get_by_role("navigation", name="Pages of keys")
        for part in (
            pager.get_by_role("button", name="Previous page"),
            pager.locator("#page-label"),
            pager.get_by_role("button", name="Next page"),
        ):
            lines = part.evaluate(
                """n => {
                    const range = document.createRange();
                    range.selectNodeContents(n);
                    const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                    return tops.size;
                }"""
            )
            assert lines == 1, f"{part} is broken over {lines} lines"
        no_sideways_scroll(page, NARROW)
        pager.scroll_into_view_if_needed()
        screenshot(page, f"walk-pager-{NARROW}.png")
        page.get_by_role("button", name="Previous page").click()
        page_expect(page.locator("#page-label")).to_have_text("Page 1 of 2")
        page_expect(first).to_be_focused()


# --------------------------------------------------------------------------- renew


def test_an_expired_keys_page_offers_renew(browser: Browser, site: Site) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # minted "in 2023", expired since
        pool.submit(
            asyncio.run,
            mint_key(site.config, "lapsed-key", ["1int-sessions-read"],
                     expires_at="2024-01-01T00:00:00Z", now=1_680_000_000.0),
        ).result()  # fmt: skip
    ident = key_id(site, "lapsed-key")
    for width in (NARROW, WIDE):
        with signed_in(browser, site, width=width) as page:
            page.goto(f"{site.url}#/keys/{ident}")
            page_expect(page.locator("#key-page-status")).to_have_text("Expired")
            renew = page.get_by_role("button", name="Renew…")
            page_expect(renew).to_be_visible()
            no_sideways_scroll(page, width)
            screenshot(page, f"walk-renew-{width}.png")
            if width == NARROW:
                continue  # renewed once, at 1280
            renew.click()
            dialog = page.get_by_role("dialog", name="Renew API key lapsed-key")
            page_expect(dialog.get_by_label("Expires", exact=True)).to_be_focused()
            dialog.get_by_role("button", name="Renew").click()
            page_expect(dialog).to_be_hidden()
            page_expect(page.locator("#key-page-status")).to_have_text("Active")
            page_expect(renew).to_be_hidden()
            page_expect(page.get_by_role("button", name="Edit", exact=True)).to_be_focused()


# --------------------------------------------------------------------------- every view


def test_every_view_loads_without_a_console_error(browser: Browser, site: Site) -> None:
    ident = key_id(site, "other-key")
    for width in (WIDE, NARROW):
        with signed_in(browser, site, width=width) as page:
            # Console errors too: a CSP violation or a failed module load is one, not a pageerror.
            errors: list[str] = []
            page.on(
                "console",
                lambda message, seen=errors: (
                    seen.append(message.text) if message.type == "error" else None
                ),
            )
            views = [("#/audit", "Audit log"), ("#/check", "Can this key call…?"),
                     (f"#/keys/{ident}", "other-key"), ("#/keys", "API Keys")]  # fmt: skip
            for hash_, heading in views:
                page.goto(site.url + hash_)
                page_expect(page.locator("[data-view-heading]:visible")).to_have_text(heading)
                no_sideways_scroll(page, width)
            page.goto(f"{site.url}#/keys/{ident}")
            for period in ("7 days", "90 days", "24 hours"):
                page.get_by_role("button", name=period).click()
                page_expect(page.get_by_role("button", name=period)).to_have_attribute(
                    "aria-pressed", "true"
                )
            page.get_by_role("button", name="Show as table").click()
            page.get_by_role("button", name="Edit", exact=True).click()
            page.keyboard.press("Escape")
            page.reload()
            page_expect(page.locator("#key-page-title")).to_have_text("other-key")
            assert errors == []


# --------------------------------------------------------------------------- history times

ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def test_times_in_a_keys_history_read_like_the_pages_other_times(
    browser: Browser, site: Site
) -> None:
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 90 * DAY))
    ident = create_key(site, "history-times", expires_at=expires)
    admin_write(site, "POST", f"/api/v1/keys/{ident}/roll", {"overlap_seconds": 7200})
    rolled = admin_get(site, f"/api/v1/keys/{ident}")
    with signed_in(browser, site, width=NARROW) as page:
        page.goto(f"{site.url}#/keys/{ident}")
        history = page.locator("#key-history-body tr")
        page_expect(history).to_have_count(2)
        # The settings' "old secret valid until …" and the roll entry name the same time, alike.
        until = page.locator("#key-settings [data-setting='Secret'] time").last
        page_expect(until).to_have_attribute("datetime", rolled["previous_expires_at"])
        roll_time = history.filter(has_text="Rolled").locator("td.details time")
        page_expect(roll_time).to_have_attribute("datetime", rolled["previous_expires_at"])
        page_expect(roll_time).to_have_text(until.inner_text())
        created = history.filter(has_text="Created").locator("td.details time")
        page_expect(created).to_have_attribute("datetime", rolled["expires_at"])
        expiry = page.locator("#key-settings [data-setting='Expires'] time")
        page_expect(created).to_have_text(expiry.inner_text())
        for text in history.locator("td.details").all_inner_texts():
            assert not ISO_TIME.search(text), text
        history.first.scroll_into_view_if_needed()
        screenshot(page, f"walk-history-times-{NARROW}.png")


# --------------------------------------------------------------------------- a key's page: actions


def key_status(site: Site, ident: int) -> tuple[int, Any]:
    """The admin API's answer for key `ident` as root: (status, JSON)."""
    return http(site, "GET", f"/api/v1/keys/{ident}", basic())


@pytest.mark.parametrize("width", [WIDE, NARROW])
def test_a_keys_page_offers_roll_revoke_reinstate_and_delete(
    browser: Browser, site: Site, width: int
) -> None:
    name = f"page-actions-{width}"
    ident = create_key(site, name)
    with signed_in(browser, site, width=width) as page:
        page.goto(f"{site.url}#/keys/{ident}")
        head = page.locator(".key-head")
        status = page.locator("#key-page-status")
        revoke = head.get_by_role("button", name="Revoke", exact=True)
        reinstate = head.get_by_role("button", name="Reinstate", exact=True)
        roll = head.get_by_role("button", name="Roll…", exact=True)
        delete = head.get_by_role("button", name="Delete", exact=True)
        page_expect(status).to_have_text("Active")
        for button in (head.get_by_role("button", name="Edit", exact=True), roll, revoke, delete):
            page_expect(button).to_be_enabled()
        page_expect(reinstate).to_be_hidden()
        no_sideways_scroll(page, width)
        screenshot(page, f"walk-key-actions-{width}.png")

        # Revoke, asked first naming the key; cancelled: nothing changes, the focus is back.
        revoke.click()
        ask = confirm_dialog(page)
        page_expect(ask).to_contain_text(name)
        ask.get_by_role("button", name="Cancel").click()
        page_expect(revoke).to_be_focused()
        page_expect(status).to_have_text("Active")
        page.keyboard.press("Enter")  # the keyboard alone
        confirm_dialog(page).get_by_role("button", name="Revoke key", exact=True).click()
        page_expect(status).to_have_text("Revoked")
        page_expect(head).to_have_css("background-color", REVOKED_GREY)
        page_expect(revoke).to_be_hidden()
        page_expect(reinstate).to_be_focused()  # the control in its place, as in the menu
        page_expect(page.locator("#key-settings [data-setting='Revoked']")).to_be_visible()
        page_expect(page.locator("#key-history-body tr").first).to_contain_text("Revoked")
        page_expect(page.get_by_role("status")).to_have_text(f"Revoked “{name}”.")
        assert key_status(site, ident)[1]["status"] == "revoked"
        screenshot(page, f"walk-key-revoked-{width}.png")

        page.keyboard.press("Enter")
        ask = confirm_dialog(page)
        page_expect(ask).to_contain_text(f"Reinstate the API key “{name}”")
        ask.get_by_role("button", name="Reinstate key", exact=True).click()
        page_expect(status).to_have_text("Active")
        page_expect(revoke).to_be_focused()
        assert head.evaluate("n => getComputedStyle(n).backgroundColor") != REVOKED_GREY

        # Roll: the roll dialog, then the new secret once; the page shows the overlap.
        roll.click()
        page.get_by_role("dialog", name=f"Roll “{name}”?").get_by_role(
            "button", name="Roll key", exact=True
        ).click()
        shown = page.get_by_role("dialog", name=f"New secret for “{name}”")
        page_expect(shown).to_be_visible()
        shown.get_by_role("button", name="Copy").click()
        shown.get_by_role("button", name="Done").click()
        page_expect(shown).to_be_hidden()
        page_expect(roll).to_be_focused()
        page_expect(page.locator("#key-settings [data-setting='Secret']")).to_contain_text(
            "old secret valid until"
        )

        # Delete: back to the list, which says so.
        delete.click()
        ask = confirm_dialog(page)
        page_expect(ask).to_contain_text("cannot be undone")
        ask.get_by_role("button", name="Delete key", exact=True).click()
        page_expect(page.locator("#view-keys")).to_be_visible()
        assert page.url.endswith("#/keys")
        heading_focused(page, "API Keys")
        page_expect(page.locator("#status-message")).to_have_text(f"Deleted “{name}”.")
        assert key_status(site, ident)[0] == 404
    actions = json.loads(cli(site.config, "audit", "--key", name, "--json"))
    assert [event["action"] for event in actions][:5] == [
        "delete", "roll", "reinstate", "revoke", "create"
    ]  # fmt: skip


# --------------------------------------------------------------------------- sign-out


def search_bulk_page_two(page: Page) -> None:
    """Sort Z-A, search "bulk", go to page 2 (each step seen done before the next)."""
    rows = page.locator("#keys-body tr")
    page.get_by_label("Sort", exact=True).select_option("-name")
    page_expect(rows.first).to_contain_text(LONG_NAME)  # unsearched, Z-A: "warehouse-…" first
    search(page, "bulk")  # searched: "bulk-54" first
    page.get_by_role("button", name="Next page").click()
    page_expect(page.locator("#page-label")).to_have_text("Page 2 of 2")
    page_expect(rows).to_have_count(BULK_KEYS - 50)


def test_sign_out_resets_the_views_for_the_next_admin(browser: Browser, site: Site) -> None:
    ident = key_id(site, "other-key")
    with signed_in(browser, site) as page:
        rows = page.locator("#keys-body tr")
        page_label = page.locator("#page-label")
        searched = page.get_by_label("Search", exact=True)
        chip = page.locator("#filter-chips")
        first_page = "Page 1 of 2"  # 57 keys and those the other tests add: under 100

        def at_the_defaults() -> None:
            page_expect(page.locator("#view-keys")).to_be_visible()
            assert not page.url.endswith(f"#/keys/{ident}")
            page_expect(chip).to_be_hidden()
            page_expect(searched).to_have_value("")
            page_expect(page.get_by_label("Status", exact=True)).to_have_value("")
            page_expect(page.get_by_label("Sort", exact=True)).to_have_value("-created_at")
            page_expect(rows).to_have_count(50)
            page_expect(page_label).to_have_text(first_page)
            page_expect(searched).to_be_focused()

        page_expect(page_label).to_have_text(first_page)
        # root: page 2 of a sorted search, then the advice's "unused for 30 days" filter and a
        # status filter on the list; signs out from a key's page.
        search_bulk_page_two(page)
        page.goto(f"{site.url}#/keys/{ident}")
        page.locator("#key-advice").get_by_role(
            "button", name=f"Show every key unused for {UNUSED_DAYS} days"
        ).click()
        page_expect(chip).to_be_visible()
        page.get_by_label("Status", exact=True).select_option("active")
        page.goto(f"{site.url}#/keys/{ident}")
        page_expect(page.locator("#key-page-title")).to_have_text("other-key")
        page.get_by_role("button", name="Sign out").click()
        page_expect(page.get_by_role("form", name="Sign in")).to_be_visible()
        sign_in(page, "limited")  # the next admin, in the same tab
        at_the_defaults()

        # limited: page 2 of a sorted search; signs out from the list.
        search_bulk_page_two(page)
        page.get_by_role("button", name="Sign out").click()
        page_expect(page.get_by_role("form", name="Sign in")).to_be_visible()
        sign_in(page, "root")
        at_the_defaults()


# --------------------------------------------------------------------------- a session that ends


def end_the_session(site: Site, page: Page) -> None:
    """Start this page's session an absolute timeout ago in the gateway's SQLite store (as if
    the admin had been signed in that long); the page's next poll meets the 401."""
    token = session_cookie(page)["value"]
    with sqlite3.connect(site.config.parent / "keygate.db") as db:
        ended = db.execute(
            "UPDATE admin_sessions SET created_at = created_at - ? WHERE token_hash = ?",
            (load_settings(site.config).sessions.absolute_timeout, token_hash(token)),
        )
        assert ended.rowcount == 1
    form = page.get_by_role("form", name="Sign in")
    page_expect(form.get_by_role("alert")).to_have_text("Your session has ended. Sign in again.")


def sign_in_again(page: Page, name: str) -> None:
    """Sign in with the form and wait until signed in (whichever view then shows)."""
    form = page.get_by_role("form", name="Sign in")
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("Password", exact=True).fill(PASSWORDS[name])
    form.get_by_role("button", name="Sign in").click()
    page_expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def test_a_session_that_ends_resets_the_views_only_for_another_admin(
    browser: Browser, site: Site
) -> None:
    ident = key_id(site, "other-key")
    with signed_in(browser, site) as page:
        searched = page.get_by_label("Search", exact=True)
        sort = page.get_by_label("Sort", exact=True)
        rows = page.locator("#keys-body tr")
        # root: page 2 of a sorted search, then a key's page; the session ends there.
        search_bulk_page_two(page)
        page.goto(f"{site.url}#/keys/{ident}")
        page_expect(page.locator("#key-page-title")).to_have_text("other-key")
        end_the_session(site, page)
        sign_in_again(page, "limited")  # another admin, in the same tab
        page_expect(page.locator("#view-keys")).to_be_visible()
        assert not page.url.endswith(f"#/keys/{ident}")
        page_expect(searched).to_have_value("")
        page_expect(sort).to_have_value("-created_at")
        page_expect(rows).to_have_count(50)
        page_expect(page.locator("#page-label")).to_have_text("Page 1 of 2")
        page_expect(searched).to_be_focused()

        # limited: the same view; their session ends and they sign back in: still theirs.
        search_bulk_page_two(page)
        page.goto(f"{site.url}#/keys/{ident}")
        page_expect(page.locator("#key-page-title")).to_have_text("other-key")
        end_the_session(site, page)
        sign_in_again(page, "limited")
        page_expect(page.locator("#key-page-title")).to_have_text("other-key")
        assert page.url.endswith(f"#/keys/{ident}")
        page_expect(searched).to_have_value("bulk")
        page_expect(sort).to_have_value("-name")


# --------------------------------------------------------------------------- a roll's overlap


def overlap_reads_as_text(page: Page, entry: Locator, shot: str) -> None:
    """A roll entry's details say "overlap: 2 hours"; the raw seconds only in its tooltip."""
    details = entry.locator("td.details")
    page_expect(details).to_contain_text("overlap: 2 hours")
    assert "7200" not in details.inner_text()
    page_expect(details.locator("[title='overlap_seconds: 7200']")).to_have_text("2 hours")
    details.scroll_into_view_if_needed()
    screenshot(page, shot)


def test_a_rolls_overlap_reads_like_the_pages_other_overlaps(browser: Browser, site: Site) -> None:
    ident = create_key(site, "overlap-text")
    admin_write(site, "POST", f"/api/v1/keys/{ident}/roll", {"overlap_seconds": 7200})
    with signed_in(browser, site, width=NARROW) as page:
        page.goto(f"{site.url}#/keys/{ident}")
        history = page.locator("#key-history-body tr").filter(has_text="Rolled")
        page_expect(history).to_have_count(1)
        overlap_reads_as_text(page, history, f"walk-roll-overlap-history-{NARROW}.png")
        page.goto(f"{site.url}#/audit")
        audit = page.locator("#audit-body tr").filter(has_text="overlap-text")
        rolled = audit.filter(has_text="Rolled")
        page_expect(rolled).to_have_count(1)
        overlap_reads_as_text(page, rolled, f"walk-roll-overlap-audit-{NARROW}.png")
