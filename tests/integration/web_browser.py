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
