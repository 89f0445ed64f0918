"""A page that polls as the book's current (4th edition) client does, in Chromium.

``book4/`` holds a small client written for these tests that makes the
same requests as the book's 3rd/4th-edition skill-sharing page: a plain
``GET /talks``, then ``If-None-Match`` + ``Prefer: wait=90`` polls, and JSON
writes.  The server runs with ``--api=etag --static-path=book4``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from .server import POLL_TIMEOUT, Server

PAGE = Path(__file__).resolve().parent / "book4"


@pytest.fixture
def etag_server(tmp_path: Path) -> Server:
    server = Server(0, tmp_path / "talkserver.log", args=("--api=etag", f"--static-path={PAGE}"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def open_book_page(browser: Browser, etag_server: Server):
    """Open the page as a new person; each page records its dialogs and its /talks requests."""
    contexts = []

    def open_page(name: str) -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.dialogs, page.errors, page.polls = [], [], []
        page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on("request", lambda request: page.polls.append(request) if request.url.endswith("/talks") else None)
        page.goto(etag_server.url)
        name_field = page.get_by_label("Your name:")
        name_field.fill(name)
        name_field.dispatch_event("change")
        return page

    yield open_page
    for context in contexts:
        context.close()


def talk(page: Page, title: str):
    return page.get_by_role("region", name=title, exact=True)


def test_two_pages_share_talks_comments_and_deletes(open_book_page):
    ada, grace = open_book_page("Ada"), open_book_page("Grace")
    expect(ada.get_by_role("button", name="Submit")).to_be_visible()

    ada.get_by_label("Title:").fill("Knitting")
    ada.get_by_label("Summary:").fill("Loops and patterns")
    ada.get_by_role("button", name="Submit").click()
    expect(talk(grace, "Knitting")).to_contain_text("by Ada")
    expect(talk(grace, "Knitting")).to_contain_text("Loops and patterns")

    talk(grace, "Knitting").get_by_label("Comment").fill("Count me in")
    talk(grace, "Knitting").get_by_role("button", name="Add comment").click()
    expect(talk(ada, "Knitting").locator(".comment")).to_have_text(["Grace: Count me in"])

    talk(ada, "Knitting").get_by_role("button", name="Delete").click()
    expect(talk(grace, "Knitting")).to_have_count(0)
    expect(talk(ada, "Knitting")).to_have_count(0)

    assert ada.dialogs == grace.dialogs == []
    assert ada.errors == grace.errors == []
    first, second = grace.polls[0], grace.polls[1]
    assert "if-none-match" not in first.headers
    assert second.headers["prefer"] == "wait=90"
    assert second.headers["if-none-match"] == first.response().headers["etag"]


def test_an_idle_page_polls_once_per_poll_timeout(open_book_page):
    page = open_book_page("Ada")
    expect(page.get_by_role("button", name="Submit")).to_be_visible()
    started = time.monotonic()
    before = len(page.polls)

    page.wait_for_timeout(POLL_TIMEOUT * 2.5 * 1000)
    made = len(page.polls) - before
    elapsed = time.monotonic() - started

    # Each conditional poll waited out the poll timeout before its 304.
    assert 1 <= made <= 2 + elapsed / POLL_TIMEOUT
    assert page.dialogs == [] and page.errors == []
