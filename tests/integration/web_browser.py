"""A real browser for the web client's tests: Debian's chromium driven by Playwright.

One browser per test session; each test gets a fresh context (no shared
localStorage or cookies). Playwright's own browser download is never used.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_asyncio

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
DOMAIN = "archipel.test"  # rig.stack.DOMAIN
SCREENSHOTS = REPO / "docs" / "screenshots"


def web_built() -> bool:
    return (REPO / "web" / "dist" / "index.html").is_file()


@pytest_asyncio.fixture(scope="session")
async def browser():
    if not os.path.exists(CHROMIUM) or not web_built():
        pytest.fail("chromium or web/dist missing: run scripts/bootstrap.sh")
    from playwright.async_api import async_playwright
    pw = await async_playwright().start()
    # the web client is served under the XMPP domain's name (see Stack.web_url)
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1"]
    chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
    try:
        yield chromium
    finally:
        await chromium.close()
        await pw.stop()


class PageErrors(list):
    """Console errors and uncaught exceptions of a page (normal use must have none)."""


@pytest_asyncio.fixture
async def web(browser, stack):
    """A page of a fresh browser context at the rig's web client, and its errors."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors = PageErrors()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(stack.web_url)
    try:
        yield page
    finally:
        await context.close()


async def screenshot(page, name: str) -> None:
    """With ARCHIPEL_SCREENSHOTS=1, save docs/screenshots/<name>.png from the test itself."""
    if os.environ.get("ARCHIPEL_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.evaluate("window.scrollTo(0, 0)")  # the page as one arrives on it
        await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


async def login(page, jid: str, password: str, *, ws_url: str | None = None, bosh_url: str | None = None,
                remember: bool = False) -> None:
    """Fill the login form and submit (the caller checks the outcome)."""
    await page.fill("#login-jid", jid)
    await page.fill("#login-password", password)
    if ws_url is not None or bosh_url is not None:
        await page.click("details summary")
        if ws_url is not None:
            await page.fill("#login-ws", ws_url)
        if bosh_url is not None:
            await page.fill("#login-bosh", bosh_url)
    if remember:
        await page.check("#login-remember")
    await page.press("#login-password", "Enter")  # keyboard use


def contact(page, jid: str):
    return page.locator(f'li.contact[data-jid="{jid}"]')


class user_page:
    """``async with user_page(browser, stack) as page``: a page of its own browser
    context (a second person at another computer), with its errors in ``page.errors``."""

    def __init__(self, browser, stack, width: int = 1280, height: int = 800):
        self.browser, self.stack, self.size = browser, stack, {"width": width, "height": height}

    async def __aenter__(self):
        self.context = await self.browser.new_context(viewport=self.size)
        page = await self.context.new_page()
        page.errors = PageErrors()
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        await page.goto(self.stack.web_url)
        return page

    async def __aexit__(self, *exc):
        await self.context.close()


async def open_app(page, user: dict) -> None:
    """Log in and wait until connected."""
    import re
    from playwright.async_api import expect
    await login(page, user["jid"], user["password"])
    await expect(page.locator("#conn-state")).to_have_text(re.compile(f"^Connected as {re.escape(user['jid'])}"))


async def add_contact(page, jid: str) -> None:
    from playwright.async_api import expect
    await page.fill("#add-jid", jid)
    await page.press("#add-jid", "Enter")
    await expect(contact(page, jid)).to_have_count(1)


async def open_contact(page, jid: str) -> None:
    await contact(page, jid).locator("button.open").click()


def tab(page, name: str):
    """A tab of the entity page (exact name: "Disks", "Snapshots" …)."""
    return page.locator("#entity-pane").get_by_role("tab", name=name, exact=True)


def status_line(page):
    return page.locator("#entity-pane .message")


def error_line(page):
    return page.locator("#entity-pane .entity-error")
