"""The dashboard in Debian's Chromium (Playwright) against a real control plane on loopback."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    Download,
    Locator,
    Page,
    async_playwright,
    expect,
)

from entryguard.control.db.database import sqlite_url_for
from tests.conftest import ROOT, require_tool
from tests.integration.conftest import ADMIN, ADMIN_PW, Api, serve_api

CHROMIUM = os.environ.get("EG_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

expect.set_options(timeout=10_000)


# One Chromium per test module (it takes a second or two to start); each test gets its
# own control plane and fresh browser contexts, so tests share no cookies and no data.
# Test modules here run in a module-scoped event loop: `pytestmark =
# pytest.mark.asyncio(loop_scope="module")`.


@pytest_asyncio.fixture(loop_scope="module")
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """An in-process control plane (uvicorn on a loopback port, SQLite), its admin signed up."""
    async with serve_api(sqlite_url_for(tmp_path), tmp_path) as a:
        yield a


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    require_tool("chromium", path=CHROMIUM)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


REQUESTS: list[str] = []
"""Every URL a page of the current test asked for (documents, assets, fetches, downloads)."""
BLOCKED: list[str] = []
"""What the browser reported refusing under the page's Content-Security-Policy: a
reference to another host is blocked before it becomes a request, so it shows here."""
PAGE_ERRORS: list[str] = []
"""Uncaught exceptions in the dashboard's scripts."""


def _console(text: str) -> None:
    if "Content Security Policy" in text:
        BLOCKED.append(text)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def outside_origin(urls: list[str], origin: str) -> list[str]:
    """The URLs that do not go to ``origin`` (scheme, host and port all count)."""
    return [u for u in urls if _origin(u) != _origin(origin)]


@pytest.fixture(autouse=True)
def only_the_control_plane(api: Api) -> Iterator[None]:
    """After each test: every request its pages made went to the control plane's own
    127.0.0.1 origin; nothing was refused by the CSP; no script threw."""
    for log in (REQUESTS, BLOCKED, PAGE_ERRORS):
        log.clear()
    yield
    assert REQUESTS, "no request was recorded: the recorder is not attached"
    assert urlsplit(api.url).hostname == "127.0.0.1"
    assert outside_origin(REQUESTS, api.url) == []
    assert BLOCKED == []
    assert PAGE_ERRORS == []


async def new_page(browser: Browser, api: Api) -> tuple[BrowserContext, Page]:
    """A fresh browser profile (its own cookies) that accepts every confirm() dialog.

    Every request of its pages, CSP refusal and script error is recorded (see
    :func:`only_the_control_plane`).
    """
    context = await browser.new_context(
        base_url=api.url, viewport={"width": 1360, "height": 900}, accept_downloads=True
    )
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=api.url)
    context.on("request", lambda request: REQUESTS.append(request.url))
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.on("console", lambda message: _console(message.text))
    page.on("pageerror", lambda error: PAGE_ERRORS.append(str(error)))
    return context, page


async def sign_in(page: Page, email: str = ADMIN, password: str = ADMIN_PW) -> None:
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/signin\?next=%2F$"))
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="My access", level=1)).to_be_visible()
    await expect(page.get_by_test_id("who")).to_have_text(email)


async def shot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def downloaded_text(download: Download) -> str:
    path = await download.path()
    return await asyncio.to_thread(Path(path).read_text)


def field_error(page: Page, field: str) -> Locator:
    """The error shown beside a form field."""
    return page.locator(f'[data-error-for="{field}"]')
