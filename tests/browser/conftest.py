"""Fixtures for the browser tests: a real talkserver and real Chromium.

Each test gets its own ``python -m talkserver`` subprocess on a free port
and opens pages in Debian's chromium through Playwright (its own browser
download is never used; ``make test`` installs the chromium package).  Each
page is a separate browser context, i.e. a separate person with their own
localStorage.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from .server import Server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Two shared cores and a browser: give every auto-waiting check some slack.
expect.set_options(timeout=15_000)


@pytest.fixture(scope="package")
def browser() -> Browser:
    # Package scope, not session: while Playwright's sync API is open it keeps
    # an asyncio loop marked as running, which the Tornado tests after it cannot share.
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package (as root)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server_args() -> tuple[str, ...]:
    """Extra options for the test's server; a test may parametrize it."""
    return ()


@pytest.fixture
def server(tmp_path: Path, server_args) -> Server:
    server = Server(0, tmp_path / "talkserver.log", args=server_args)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def open_page(browser: Browser, server: Server):
    """Open the page as a new person; returns the Playwright Page once it is Live
    (or at once, with ``live=False``).

    Each page records the dialogs it was shown (``page.dialogs``), and the
    test fails if a page threw an uncaught error or broke its
    Content-Security-Policy.
    """
    contexts = []
    pages = []

    def open_page(width: int = 1100, height: int = 800, before_load=None, live: bool = True) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.dialogs = []
        page.problems = []
        page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: page.problems.append(f"uncaught: {error}"))
        page.on(
            "console",
            lambda message: page.problems.append(f"CSP: {message.text}")
            if "Content Security Policy" in message.text else None,
        )
        if before_load is not None:
            before_load(page)  # e.g. page.route(...) for the page's very first requests
        page.goto(server.url)
        if live:
            expect(page.get_by_role("status")).to_have_text("Live")
        pages.append(page)
        return page

    yield open_page
    problems = [problem for page in pages for problem in page.problems]
    for context in contexts:
        context.close()
    assert problems == []
