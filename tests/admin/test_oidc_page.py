"""Issue 23 in a real browser: Chromium signs in to the page through a real OpenID provider.

`keygate serve` (a real process, the client secret read from a file) with panva's
oidc-provider on loopback; Chromium clicks "Sign in with Test IdP", signs in on the
provider's own pages, lands on the key list, and signs out through the provider's logout.
A group not allowed to sign in and the provider down are shown as clear messages on the
page, with the local form still there. The top bar says who is signed in, which way they
came in and where their grants come from. With local and backend accounts both enabled
(`keygate demo`), the form asks which account the name is. Screenshots at 1280 and 390 px
go to tests/artifacts/.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import expect as page_expect
from support.config import write_config
from support.oidc_provider import Client, Provider, running_provider
from support.processes import NEUTRAL_CWD, PYTHON, cli_env, free_port, start_serve
from test_web_page import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    NARROW,
    PASSWORDS,
    TIMEOUT_MS,
    WIDE,
    add_admin,
    chromium_or_skip,
    cli,
    wait_for_port,
)

from gateway.admin.oidc_handlers import OIDC_CALLBACK

pytestmark = pytest.mark.slow

# The provider's own pages @import a web font from another host: resolve nothing but
# loopback, so the browser never leaves this machine.
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"

CLIENT_ID = "keygate-page"
SECRET = "keygate-page-client-secret-0123456789"
USERS = {
    "alice": {"name": "Alice Admin", "groups": ["kg-admins"]},
    "mallory": {"name": "Mallory", "groups": ["contractors"]},
}


@contextlib.contextmanager
def keygate_with_provider(directory: Path, issuer: str, admin_port: int) -> Iterator[str]:
    """Run `keygate serve` with OIDC (secret from a file) and local sign-in; yield the page URL."""
    directory.mkdir(parents=True, exist_ok=True)
    secret_file = directory / "oidc-secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    proxy_port = free_port()
    sign_in = {
        "methods": ["oidc", "local"],
        "grants": {
            "claim": "groups",
            "allowed_groups": ["kg-admins"],
            "roles": {"kg-admins": ["*"]},
        },
        "oidc": {
            "name": "Test IdP",
            "issuer": issuer,
            "client_id": CLIENT_ID,
            "client_secret": {"file": str(secret_file)},
            "redirect_url": f"http://127.0.0.1:{admin_port}{OIDC_CALLBACK}",
            "scopes": ["openid", "profile", "groups"],
            "name_claim": "name",
        },
    }
    config = write_config(
        directory,
        "http://127.0.0.1:9",
        listen_port=proxy_port,
        admin_port=admin_port,
        extra={"admin": {"sign_in": sign_in}},
    )
    cli(config, "init")
    add_admin(config, "root", PASSWORDS["root"])
    serve = start_serve(config, proxy_port, directory.parent / f"{directory.name}-serve.log")
    try:
        wait_for_port(admin_port, serve)
        yield f"http://127.0.0.1:{admin_port}/"
    finally:
        if serve.process.poll() is None:
            assert serve.stop() == 0, serve.log_text()
        log = serve.log_text()
        assert SECRET not in log
        assert "code=" not in log and "state=" not in log, log


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module, launched from the system executable."""
    chromium = chromium_or_skip()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, args=[*CHROMIUM_ARGS, LOOPBACK_ONLY]
        )
        try:
            yield launched
        finally:
            launched.close()


def client_for(port: int) -> Client:
    """The page's client registration at the provider."""
    base = f"http://127.0.0.1:{port}"
    return Client(CLIENT_ID, SECRET, [base + OIDC_CALLBACK], [base + "/"])


def open_page(browser: Browser, url: str, width: int = WIDE) -> Page:
    """A fresh context (no cookies) on the page."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url)
    return page


def provider_sign_in(page: Page, user: str) -> None:
    """Click the provider's button and sign in on its devInteractions pages."""
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.locator("input[name=login]").fill(user)
    page.locator("input[name=password]").fill("any password")
    page.get_by_role("button", name="Sign-in").click()
    page.get_by_role("button", name="Continue").click()


def test_chromium_signs_in_and_out_through_the_provider(browser: Browser, tmp_path: Path) -> None:
    port = free_port()
    with (
        running_provider(tmp_path / "idp", [client_for(port)], USERS) as provider,
        keygate_with_provider(tmp_path / "kg", provider.issuer, port) as url,
    ):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for width in (WIDE, NARROW):
            page = open_page(browser, url, width)
            button = page.get_by_role("link", name="Sign in with Test IdP")
            page_expect(button).to_be_visible()
            page_expect(page.get_by_role("form", name="Sign in")).to_be_visible()
            page_expect(page.get_by_text("or with a local account")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / f"oidc-sign-in-{width}.png"), full_page=True)
            page.context.close()

        page = open_page(browser, url)
        provider_sign_in(page, "alice")
        page_expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        page_expect(page.locator("#who-name")).to_have_text("Alice Admin")
        page_expect(page.locator("#who-source")).to_have_text("via Test IdP")
        page_expect(page.locator("#who-grants")).to_have_text(
            "may grant every role (from group kg-admins)"
        )
        assert page.url == url  # back on the page, nothing in the address
        page.screenshot(path=str(ARTIFACTS / "oidc-signed-in-1280.png"))
        page.set_viewport_size({"width": NARROW, "height": 900})
        page_expect(page.locator("#who-source")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / f"oidc-signed-in-{NARROW}.png"))
        page.set_viewport_size({"width": WIDE, "height": 900})

        page.get_by_role("button", name="Sign out").click()
        # keygate's session is over; the provider asks to end its own.
        page.wait_for_url(f"{provider.issuer}/session/end**")
        page.get_by_role("button", name="Yes, sign me out").click()
        page.wait_for_url(url + "**")
        page_expect(page.get_by_role("link", name="Sign in with Test IdP")).to_be_visible()
        page.context.close()


def test_a_deep_link_survives_the_providers_round_trip(browser: Browser, tmp_path: Path) -> None:
    port = free_port()
    with (
        running_provider(tmp_path / "idp", [client_for(port)], USERS) as provider,
        keygate_with_provider(tmp_path / "kg", provider.issuer, port) as url,
    ):
        page = open_page(browser, url + "#/audit", NARROW)
        provider_sign_in(page, "alice")  # the provider returns to `/`
        page_expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        page_expect(page.locator("#view-audit")).to_be_visible()
        assert page.url == url + "#/audit"
        assert page.evaluate("sessionStorage.getItem('keygate.return-to')") is None  # once
        page.screenshot(path=str(ARTIFACTS / f"oidc-deep-link-{NARROW}.png"))
        page.context.close()


def test_a_refused_group_and_a_provider_down_are_explained_on_the_page(
    browser: Browser, tmp_path: Path
) -> None:
    port = free_port()
    with contextlib.ExitStack() as provider_stack:
        provider: Provider = provider_stack.enter_context(
            running_provider(tmp_path / "idp", [client_for(port)], USERS)
        )
        with keygate_with_provider(tmp_path / "kg", provider.issuer, port) as url:
            page = open_page(browser, url)
            provider_sign_in(page, "mallory")
            alert = page.get_by_role("alert")
            page_expect(alert).to_contain_text("not in a group allowed to sign in")
            assert "#" not in page.url  # the reason was read and cleared from the address
            page.context.close()

            provider_stack.close()  # the provider goes away
            page = open_page(browser, url, NARROW)
            page.get_by_role("link", name="Sign in with Test IdP").click()
            alert = page.get_by_role("alert")
            page_expect(alert).to_contain_text("Test IdP cannot be reached")
            page_expect(alert).to_contain_text("sign in with a local account")
            page.screenshot(path=str(ARTIFACTS / "oidc-provider-down-390.png"), full_page=True)
            # Break-glass: the local form still signs in.
            form = page.get_by_role("form", name="Sign in")
            form.get_by_label("Name", exact=True).fill("root")
            form.get_by_label("Password", exact=True).fill(PASSWORDS["root"])
            form.get_by_role("button", name="Sign in").click()
            page_expect(page.get_by_role("button", name="Sign out")).to_be_visible()
            page_expect(page.locator("#who-source")).to_have_text("local account")
            page_expect(page.locator("#who-grants")).to_have_text(
                "may grant every role (from this account)"
            )
            page.context.close()


DEMO_START_TIMEOUT = 30.0  # seconds for `keygate demo` to print that it is ready
DEMO_EXIT_AFTER = 120.0  # seconds the demo runs at most (the test stops it sooner)


@contextlib.contextmanager
def running_demo(directory: Path) -> Iterator[str]:
    """Run `keygate demo` (local and backend accounts, in that order); yield the page URL."""
    port, admin_port, backend_port = free_port(), free_port(), free_port()
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "demo.log").open("wb") as log:
        process = subprocess.Popen(
            [PYTHON, "-m", "gateway", "demo", "--port", str(port), "--admin-port",
             str(admin_port), "--backend-port", str(backend_port), "--data-dir",
             str(directory / "data"), "--exit-after", str(DEMO_EXIT_AFTER)],
            stdout=subprocess.PIPE, stderr=log, cwd=NEUTRAL_CWD, env=cli_env(),
        )  # fmt: skip
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + DEMO_START_TIMEOUT
        printed = b""
        while b"Press Ctrl-C" not in printed:
            assert time.monotonic() < deadline and process.poll() is None, printed
            printed += process.stdout.readline()
        with socket.create_connection(("127.0.0.1", admin_port), timeout=5):
            pass
        yield f"http://127.0.0.1:{admin_port}/"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def test_with_local_and_backend_accounts_the_form_asks_which(
    browser: Browser, tmp_path: Path
) -> None:
    with running_demo(tmp_path / "demo") as url:
        page = open_page(browser, url, NARROW)
        form = page.get_by_role("form", name="Sign in")
        account = form.get_by_label("Account", exact=True)
        page_expect(account).to_be_visible()
        # In the order admin.sign_in.methods lists them ([local, backend] in the demo).
        assert account.locator("option").all_inner_texts() == [
            "keygate account",
            "Backend account",
        ]
        page.screenshot(path=str(ARTIFACTS / f"backend-sign-in-{NARROW}.png"), full_page=True)
        # The backend's admin/admin is no local account: as a keygate account it is refused.
        form.get_by_label("Name", exact=True).fill("admin")
        form.get_by_label("Password", exact=True).fill("admin")
        form.get_by_role("button", name="Sign in").click()
        page_expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
        account.select_option(label="Backend account")
        form.get_by_label("Password", exact=True).fill("admin")
        form.get_by_role("button", name="Sign in").click()
        page_expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        page_expect(page.locator("#who-name")).to_have_text("admin")
        page_expect(page.locator("#who-source")).to_have_text("via the backend's accounts")
        page_expect(page.locator("#who-grants")).to_have_text(
            "may grant every role (from group 1int-admin)"
        )
        page.screenshot(path=str(ARTIFACTS / f"backend-signed-in-{NARROW}.png"))
        page.set_viewport_size({"width": WIDE, "height": 900})
        page.screenshot(path=str(ARTIFACTS / f"backend-signed-in-{WIDE}.png"))
        page.context.close()
