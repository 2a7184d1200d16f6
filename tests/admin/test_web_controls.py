"""Issue 24.6, honest controls, in a real Chromium on a real `keygate serve`: actions outside
the admin's grants disabled with the reason, Roll asking for the overlap, expiry presets and
Renew, every field error at once, the secret dialog's focus and keyboard copy, and the banner
when the server cannot be reached. Screenshots at 1280 and 390 px go to tests/artifacts/."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright
from playwright.sync_api import expect as page_expect
from test_web_page import (
    CHROMIUM_ARGS,
    NARROW,
    PAST,
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

DAY = 86_400  # seconds
SLACK = 120  # seconds between the page computing an expiry and the test reading it
GRANTS_REASON = (
    "You can't manage keys with role \u20181int-admin\u2019: your grants are 1int-sessions-read."
)
MANAGED = ("Edit", "Roll…", "Revoke", "Reinstate", "Delete")
RETRY_S = 2.0  # banner.js RETRY_MS: while unreachable, one try per this many seconds

KEYS: list[dict[str, Any]] = [
    {"name": "ctl-admin", "roles": ["1int-admin"]},
    {"name": "ctl-admin-revoked", "roles": ["1int-admin"], "revoked": True},
    {"name": "ctl-mine", "roles": ["1int-sessions-read"]},
    {"name": "ctl-roll", "roles": ["1int-sessions-read"]},
    {"name": "ctl-roll-narrow", "roles": ["1int-sessions-read"]},
    {"name": "ctl-edit", "roles": ["1int-sessions-read"]},
    {
        "name": "ctl-expired",
        "roles": ["1int-sessions-read"],
        "expires_at": PAST,
        "now": 1_680_000_000.0,
    },
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module, launched from the system executable (no download)."""
    chromium = chromium_or_skip()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Site]:
    """A gateway with keys inside and outside the limited admin's grants."""
    with running_site(tmp_path_factory.mktemp("controls") / "config", KEYS) as running:
        yield running


def shown(site: Site, name: str) -> dict[str, Any]:
    """The key as `keygate keys show` reads it from the store."""
    return dict(json.loads(cli(site.config, "keys", "show", name, "--json")))


def seconds_until(iso: str) -> float:
    """Seconds from now until an ISO-8601 time."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - time.time()


def described_by(page: Page, selector: str) -> str:
    """The text of the elements an element's aria-describedby names."""
    return str(
        page.locator(selector).evaluate(
            """node => (node.getAttribute('aria-describedby') || '').split(/\\s+/)
                .filter(Boolean).map(id => document.getElementById(id).textContent).join(' ')"""
        )
    )


# --------------------------------------------------------------------------- 1: grants


def test_actions_outside_the_grants_are_disabled_with_the_reason(
    browser: Browser, site: Site
) -> None:
    for width in (WIDE, NARROW):
        with signed_in(browser, site, name="limited", width=width) as page:
            # The batch menu: an action that would touch no key says why, before any click.
            page.get_by_role("button", name="Batch actions").click()
            batch = page.get_by_role("menu", name="Batch actions")
            delete = batch.get_by_role("menuitem", name="Delete all revoked API keys")
            page_expect(delete).to_have_attribute("aria-disabled", "true")
            page_expect(delete).to_have_accessible_description(
                "The 1 key it would touch has roles outside your grants: your grants are "
                "1int-sessions-read."
            )
            last = batch.get_by_role("menuitem", name=re.compile("the last “Revoke all”"))
            page_expect(last).to_have_attribute("aria-disabled", "true")
            page_expect(last).to_have_accessible_description(
                "No keys of the last “Revoke all” are still revoked."
            )
            revoke_all = batch.get_by_role("menuitem", name="Revoke all API keys")
            page_expect(revoke_all).not_to_have_attribute("aria-disabled", "true")
            delete.dispatch_event("click")  # disabled: nothing happens
            page_expect(page.get_by_role("alertdialog")).to_be_hidden()
            screenshot(page, f"controls-batch-{width}.png")
            page.keyboard.press("Escape")

            search(page, "ctl-admin")
            pick = row(page, "ctl-admin").get_by_role("checkbox", name="Select ctl-admin")
            page_expect(pick).to_be_disabled()
            page_expect(pick).to_have_attribute("title", GRANTS_REASON)
            page_expect(pick).to_have_accessible_description(GRANTS_REASON)
            menu = open_settings(page, "ctl-admin")
            for label in MANAGED:
                item = menu.get_by_role("menuitem", name=label, exact=True)
                page_expect(item).to_have_attribute("aria-disabled", "true")
                page_expect(item).to_have_attribute("title", GRANTS_REASON)
                page_expect(item).to_have_accessible_description(GRANTS_REASON)
            page_expect(menu.get_by_text(GRANTS_REASON)).to_be_visible()  # seen, not hovered
            for label in ("Check access…", "Audit history"):
                item = menu.get_by_role("menuitem", name=label, exact=True)
                page_expect(item).not_to_have_attribute("aria-disabled", "true")
            screenshot(page, f"controls-grants-{width}.png")
            menu.get_by_role("menuitem", name="Edit", exact=True).dispatch_event("click")
            page_expect(page.get_by_role("dialog", name=re.compile("Edit API key"))).to_be_hidden()
            page.keyboard.press("Escape")

            search(page, "ctl-mine")
            mine = row(page, "ctl-mine").get_by_role("checkbox", name="Select ctl-mine")
            page_expect(mine).to_be_enabled()
            menu = open_settings(page, "ctl-mine")
            for label in ("Edit", "Roll…", "Revoke", "Delete"):
                item = menu.get_by_role("menuitem", name=label, exact=True)
                page_expect(item).not_to_have_attribute("aria-disabled", "true")
            page.keyboard.press("Escape")
    assert shown(site, "ctl-admin")["status"] == "active"


# --------------------------------------------------------------------------- 2: roll


def roll_dialog(page: Page, name: str) -> Any:
    """Open the Roll dialog of key `name` from its settings menu; return it."""
    search(page, name)
    open_settings(page, name).get_by_role("menuitem", name="Roll…").click()
    dialog = page.get_by_role("dialog", name=f"Roll “{name}”?")
    page_expect(dialog).to_be_visible()
    return dialog


def test_roll_asks_for_the_overlap_validated_and_sends_it(browser: Browser, site: Site) -> None:
    with signed_in(browser, site) as page:
        dialog = roll_dialog(page, "ctl-roll")
        amount = dialog.get_by_label("The current secret keeps working for")
        unit = dialog.get_by_label("Unit")
        page_expect(amount).to_have_value("24")  # the default: 24 hours
        page_expect(unit).to_have_value("hours")
        page_expect(amount).to_be_focused()
        error = dialog.locator("#roll-overlap-error")

        amount.fill("31")
        unit.select_option("days")
        dialog.get_by_role("button", name="Roll key").click()
        page_expect(error).to_have_text("The overlap can be from 0 up to 30 days.")
        page_expect(amount).to_have_attribute("aria-invalid", "true")
        page_expect(amount).to_have_accessible_description(re.compile("up to 30 days\\.$"))
        page_expect(amount).to_be_focused()
        screenshot(page, f"controls-roll-{WIDE}.png")
        amount.fill("3 days")
        page_expect(error).to_have_text("Write a whole number, 0 or more.")  # re-checked
        amount.fill("2")
        page_expect(error).to_be_hidden()  # fixed: cleared as typed
        page_expect(amount).not_to_have_attribute("aria-invalid", "true")
        assert shown(site, "ctl-roll")["rolled_at"] is None  # nothing sent yet
        dialog.get_by_role("button", name="Roll key").click()

        secret = page.get_by_role("dialog", name="New secret for “ctl-roll”")
        page_expect(secret).to_be_visible()
        page_expect(secret.get_by_role("button", name="Copy")).to_be_focused()
        secret.get_by_role("button", name="Copy").click()
        secret.get_by_role("button", name="Done").click()
        page_expect(page.locator("#status-message")).to_contain_text("(2 days)")
    rolled = shown(site, "ctl-roll")
    assert abs(seconds_until(rolled["previous_expires_at"]) - 2 * DAY) < SLACK

    with signed_in(browser, site, width=NARROW) as page:
        dialog = roll_dialog(page, "ctl-roll-narrow")
        dialog.get_by_label("The current secret keeps working for").fill("0")
        screenshot(page, f"controls-roll-{NARROW}.png")
        dialog.get_by_role("button", name="Cancel").click()
        page_expect(dialog).to_be_hidden()
        page_expect(page.get_by_role("button", name="Settings for ctl-roll-narrow")).to_be_focused()
    assert shown(site, "ctl-roll-narrow")["rolled_at"] is None


# --------------------------------------------------------------------------- 3: expiry


def test_expiry_presets_and_renewing_an_expired_key(browser: Browser, site: Site) -> None:
    with signed_in(browser, site) as page:
        page.get_by_role("button", name="Create API key").click()
        dialog = page.get_by_role("dialog", name="Create API key")
        preset = dialog.get_by_label("Expires", exact=True)
        page_expect(preset).to_have_value("never")
        page_expect(dialog.get_by_label("Expiry date")).to_be_hidden()
        options = preset.locator("option").all_inner_texts()
        assert options == ["Never", "In 30 days", "In 90 days", "In 1 year", "On a date…"]
        dialog.get_by_label("Name", exact=True).fill("ctl-thirty")
        dialog.get_by_role("checkbox", name="1int-sessions-read", exact=True).check()
        preset.select_option(label="In 30 days")
        page_expect(dialog.locator("#key-expiry-hint")).to_contain_text("Expires ")
        screenshot(page, f"controls-expiry-{WIDE}.png")
        dialog.get_by_role("button", name="Create", exact=True).click()
        made = page.get_by_role("dialog", name=re.compile("ctl-thirty"))
        made.get_by_role("button", name="Copy").click()
        made.get_by_role("button", name="Done").click()
        assert abs(seconds_until(shown(site, "ctl-thirty")["expires_at"]) - 30 * DAY) < SLACK

        # Edit: the key's date shows as "On a date…"; "Never" clears it.
        search(page, "ctl-thirty")
        open_settings(page, "ctl-thirty").get_by_role("menuitem", name="Edit").click()
        edit = page.get_by_role("dialog", name="Edit API key ctl-thirty")
        page_expect(edit.get_by_label("Expires", exact=True)).to_have_value("custom")
        page_expect(edit.get_by_label("Expiry date")).to_be_visible()
        edit.get_by_label("Expires", exact=True).select_option(label="Never")
        edit.get_by_role("button", name="Save").click()
        page_expect(edit).to_be_hidden()
        assert shown(site, "ctl-thirty")["expires_at"] is None

        # Renew: offered for an expired key only; a new expiry, 90 days by default.
        search(page, "ctl-edit")
        menu = open_settings(page, "ctl-edit")
        page_expect(menu.get_by_role("menuitem", name="Renew…")).to_have_count(0)
        page.keyboard.press("Escape")
        search(page, "ctl-expired")
        page_expect(row(page, "ctl-expired")).to_contain_text("Expired")
        open_settings(page, "ctl-expired").get_by_role("menuitem", name="Renew…").click()
        renew = page.get_by_role("dialog", name="Renew API key ctl-expired")
        page_expect(renew.get_by_label("Expires", exact=True)).to_have_value("90d")
        page_expect(renew.get_by_label("Expires", exact=True)).to_be_focused()
        renew.get_by_role("button", name="Renew", exact=True).click()
        page_expect(renew).to_be_hidden()
        page_expect(row(page, "ctl-expired")).to_contain_text("Active")
        page_expect(page.locator("#status-message")).to_contain_text("Renewed “ctl-expired”")
    renewed = shown(site, "ctl-expired")
    assert renewed["status"] == "active"
    assert abs(seconds_until(renewed["expires_at"]) - 90 * DAY) < SLACK

    with signed_in(browser, site, width=NARROW) as page:
        page.get_by_role("button", name="Create API key").click()
        dialog = page.get_by_role("dialog", name="Create API key")
        dialog.get_by_label("Expires", exact=True).select_option(label="On a date…")
        page_expect(dialog.get_by_label("Expiry date")).to_be_visible()
        screenshot(page, f"controls-expiry-{NARROW}.png")


# --------------------------------------------------------------------------- 4: field errors


def test_every_field_error_at_once_beside_its_field_cleared_when_fixed(
    browser: Browser, site: Site
) -> None:
    for width in (WIDE, NARROW):
        with signed_in(browser, site, width=width) as page:
            page.get_by_role("button", name="Create API key").click()
            dialog = page.get_by_role("dialog", name="Create API key")
            name = dialog.get_by_label("Name", exact=True)
            rate = dialog.get_by_label("Rate limit", exact=True)
            date = dialog.get_by_label("Expiry date")
            name.fill("   ")
            dialog.get_by_label("Expires", exact=True).select_option("custom")
            date.fill("2020-01-01T10:00")
            rate.fill("lots")
            dialog.get_by_role("button", name="Create", exact=True).click()
            errors = {
                "#key-name": "Give the key a name.",
                "#key-roles-error": "Choose at least one role.",
                "#key-expires": "The expiry must be in the future.",
                "#key-rate-limit": "Write requests/second, /minute or /hour",
            }
            for selector, text in errors.items():
                if selector.endswith("-error"):
                    page_expect(dialog.locator(selector)).to_have_text(text)
                    continue
                page_expect(dialog.locator(f"{selector}-error")).to_contain_text(text)
                page_expect(dialog.locator(selector)).to_have_attribute("aria-invalid", "true")
                assert text in described_by(page, selector)
            checkbox = dialog.get_by_role("checkbox", name="1int-sessions-read", exact=True)
            page_expect(checkbox).to_have_attribute("aria-invalid", "true")
            page_expect(name).to_be_focused()  # the first invalid field
            screenshot(page, f"controls-field-errors-{width}.png")

            name.fill("ctl-fixed")  # fixed: its error goes, the others stay
            page_expect(dialog.locator("#key-name-error")).to_be_hidden()
            page_expect(name).not_to_have_attribute("aria-invalid", "true")
            page_expect(dialog.locator("#key-rate-limit-error")).to_be_visible()
            checkbox.check()
            page_expect(dialog.locator("#key-roles-error")).to_be_hidden()
            rate.fill("0/minute")  # still wrong: re-checked in plain words
            page_expect(dialog.locator("#key-rate-limit-error")).to_have_text(
                "Requests and burst must be whole numbers from 1 to 1,000,000,000."
            )
            rate.fill("")
            page_expect(dialog.locator("#key-rate-limit-error")).to_be_hidden()
            date.fill("2031-06-30T10:00")
            page_expect(dialog.locator("#key-expires-error")).to_be_hidden()

            # What only the server knows comes back as a list, each beside its field.
            name.fill("n" * 65)
            dialog.get_by_label("Description", exact=True).fill("bell\u000bchar")
            dialog.get_by_role("button", name="Create", exact=True).click()
            page_expect(dialog.locator("#key-name-error")).to_contain_text("1-64 printable")
            page_expect(dialog.locator("#key-description-error")).to_contain_text(
                "control characters"
            )
            page_expect(dialog.locator("#key-description")).to_have_attribute(
                "aria-invalid", "true"
            )
            page_expect(name).to_be_focused()
            page.keyboard.press("Escape")
    assert "ctl-fixed" not in cli(site.config, "keys", "list")


# --------------------------------------------------------------------------- 5: the secret


def test_the_secret_dialog_focuses_copy_and_a_keyboard_copy_counts(
    browser: Browser, site: Site
) -> None:
    with signed_in(browser, site) as page:
        page.get_by_role("button", name="Create API key").click()
        dialog = page.get_by_role("dialog", name="Create API key")
        dialog.get_by_label("Name", exact=True).fill("ctl-copied")
        dialog.get_by_role("checkbox", name="1int-sessions-read", exact=True).check()
        dialog.get_by_role("button", name="Create", exact=True).click()
        made = page.get_by_role("dialog", name=re.compile("ctl-copied"))
        page_expect(made.get_by_role("button", name="Copy")).to_be_focused()
        field = made.get_by_role("textbox", name="API key", exact=True)
        secret = field.input_value()

        page.keyboard.press("Shift+Tab")  # to the field, as a keyboard user would
        page_expect(field).to_be_focused()
        page.keyboard.press("Home")
        page.keyboard.press("Shift+End")
        page.keyboard.press("Control+c")
        page_expect(made.get_by_role("status")).to_have_text("Copied to the clipboard.")
        assert page.evaluate("navigator.clipboard.readText()") == secret
        made.get_by_role("button", name="Done").click()  # copied: no question
        page_expect(made).to_be_hidden()
        page_expect(page.get_by_role("alertdialog")).to_be_hidden()


def test_a_partial_keyboard_copy_does_not_count(browser: Browser, site: Site) -> None:
    with signed_in(browser, site) as page:
        page.get_by_role("button", name="Create API key").click()
        dialog = page.get_by_role("dialog", name="Create API key")
        dialog.get_by_label("Name", exact=True).fill("ctl-partly")
        dialog.get_by_role("checkbox", name="1int-sessions-read", exact=True).check()
        dialog.get_by_role("button", name="Create", exact=True).click()
        made = page.get_by_role("dialog", name=re.compile("ctl-partly"))
        made.get_by_role("textbox", name="API key", exact=True).focus()
        page.keyboard.press("Home")
        page.keyboard.press("Shift+ArrowRight")
        page.keyboard.press("Control+c")
        page_expect(made.get_by_role("status")).to_contain_text("Only part of the key")
        made.get_by_role("button", name="Done").click()
        page_expect(page.get_by_role("alertdialog")).to_contain_text("not copied")


# --------------------------------------------------------------------------- 6: the banner


def test_a_banner_says_when_the_server_cannot_be_reached_and_when_it_is_back(
    browser: Browser, site: Site
) -> None:
    for width in (WIDE, NARROW):
        with signed_in(browser, site, width=width) as page:
            cut_off_and_back(page, site, width)


def cut_off_and_back(page: Page, site: Site, width: int) -> None:
    """Refuse the page's change polls, then let them through; the banner says both."""
    lost = page.locator("#connection-lost")
    back = page.locator("#connection-back")
    page_expect(lost).to_be_hidden()
    tries: list[float] = []
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    def refuse(route: Route) -> None:
        tries.append(time.monotonic())
        route.abort("connectionrefused")

    page.route("**/api/v1/changes", refuse)
    page_expect(page.get_by_role("alert")).to_contain_text("keygate cannot be reached")
    page_expect(lost).to_be_visible()
    screenshot(page, f"controls-banner-{width}.png")
    # Made elsewhere while the page is cut off: shown once the server is back.
    name = f"ctl-while-away-{width}"
    cli(site.config, "keys", "create", "--name", name, "--role", "1int-sessions-read")
    start = len(tries)
    page.wait_for_timeout(3 * RETRY_S * 1000)  # the window in which tries are counted
    assert len(tries) - start <= 4, tries  # one try per RETRY_S, not one per poll
    assert len(console) <= len(tries) + 1, console  # no message per failed poll

    page.unroute("**/api/v1/changes")
    page_expect(back).to_have_text("Connected again.")
    connected = page.get_by_role("status").filter(has_text="Connected again.")
    page_expect(connected).to_be_visible()
    page_expect(lost).to_be_hidden()
    search(page, name)
    page_expect(row(page, name)).to_be_visible()
    page_expect(back).to_be_hidden(timeout=8_000)  # then it goes by itself

    # A 5xx answer is the server not being reachable too (a proxy in front, a restart).
    page.route(
        "**/api/v1/changes",
        lambda route: route.fulfill(status=503, body='{"error":"x","message":"down"}'),
    )
    page_expect(lost).to_be_visible()
    page.unroute("**/api/v1/changes")
    page_expect(back).to_have_text("Connected again.")
