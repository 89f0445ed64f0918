"""Fixtures for the browser tests: a real talkserver and real Chromium.

Each test gets its own ``python -m talkserver`` subprocess on a free port
and opens pages in Debian's chromium through Playwright (its own browser
download is never used; ``make test`` installs the chromium package).  Each
page is a separate browser context, i.e. a separate person with their own
localStorage.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ..harness import WAIT

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Short enough that pages see empty (timed-out) answers during a test too.
POLL_TIMEOUT = 4.0

# Two shared cores and a browser: give every auto-waiting check some slack.
expect.set_options(timeout=15_000)


class Server:
    """A talkserver subprocess that can be killed and started again on its port.

    Port 0 (the default) lets the first start pick a free port, read back
    from the server's first log line; later starts take that port again.
    """

    def __init__(
        self, port: int, log_path: Path, poll_timeout: float = POLL_TIMEOUT, db: str = ":memory:",
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.args = args  # more talkserver options, e.g. --api=etag
        self.poll_timeout = poll_timeout
        # Named, not left to the default, so no test sees another's talks.
        self.db = db
        # Seconds the server's wall clock runs ahead; see start().
        self.clock_ahead = 0
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # A clock set ahead is the one way to make a real server hand out
        # cursors that its successor sees as from the future (a reset).
        run = (
            "import runpy, time; ns = time.time_ns; "
            f"time.time_ns = lambda: ns() + {int(self.clock_ahead * 1e9)}; "
            "runpy.run_module('talkserver', run_name='__main__')"
        )
        log = open(self.log_path, "ab")
        logged_before = log.tell()
        self.process = subprocess.Popen(
            [
                sys.executable, "-c", run,
                f"--port={self.port}", f"--poll-timeout={self.poll_timeout}", f"--db={self.db}",
                *self.args,
            ],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"talkserver exited: {self.log_path.read_text()}")
            with open(self.log_path, "rb") as written:
                written.seek(logged_before)
                bound = re.search(rb"talkserver listening on http://\S+?:(\d+)/", written.read())
            if bound:
                self.port = int(bound.group(1))
                self.url = f"http://127.0.0.1:{self.port}/"
                return
            time.sleep(0.05)
        raise RuntimeError(f"talkserver did not log its port within {WAIT:g} s: {self.log_path.read_text()}")

    def kill(self) -> None:
        """End the process at once, as a crash would: no goodbye to the pages."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def refuse_event_streams(page: Page) -> None:
    """Make every event-stream request of ``page`` fail, as a proxy that cannot stream would;
    ``page.refused`` counts them."""
    page.refused = 0

    def route(route):
        if "text/event-stream" in (route.request.headers.get("accept") or ""):
            page.refused += 1
            route.abort()
        else:
            route.continue_()

    page.route("**/talks*", route)


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
