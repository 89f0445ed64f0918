"""The page's edges: Delete only where this browser may delete (--protect-talks),
a confirmation before deleting, and "Connecting…" until the first board is drawn."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from .page import propose, sign_in, talk

PROTECTED = ("--protect-talks", "--cookie-secret=browser tests only")


def delete_button(page: Page, title: str):
    return talk(page, title).get_by_role("button", name="Delete talk")


@pytest.mark.parametrize("server_args", [PROTECTED])
def test_with_protect_talks_each_browser_is_offered_delete_only_on_its_own_talks(open_page, server):
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")
    sign_in(grace, "Grace")

    propose(ada, "Ada's")
    propose(grace, "Grace's")

    expect(talk(ada, "Grace's")).to_be_visible()
    expect(talk(grace, "Ada's")).to_be_visible()
    expect(delete_button(ada, "Ada's")).to_be_visible()
    expect(delete_button(grace, "Grace's")).to_be_visible()
    expect(delete_button(ada, "Grace's")).to_be_hidden()
    expect(delete_button(grace, "Ada's")).to_be_hidden()
    # Every reader got the same bytes: the talk names its owner's tag, not the reader's.
    with urllib.request.urlopen(server.url + "talks") as response:
        owners = {t["title"]: t["owner"] for t in json.load(response)["talks"]}
    assert owners["Ada's"] != owners["Grace's"]
    # A reload keeps what this browser owns (its cookies), and a newcomer owns nothing.
    ada.reload()
    expect(delete_button(ada, "Ada's")).to_be_visible()
    expect(delete_button(ada, "Grace's")).to_be_hidden()
    newcomer = open_page()
    expect(talk(newcomer, "Ada's")).to_be_visible()
    expect(newcomer.get_by_role("button", name="Delete talk")).to_have_count(0)
    # And the owner's Delete works.
    delete_button(ada, "Ada's").click()
    ada.get_by_role("dialog").get_by_role("button", name="Delete", exact=True).click()
    expect(talk(grace, "Ada's")).to_have_count(0)


def test_delete_asks_first_and_keeping_the_talk_changes_nothing(open_page):
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")
    propose(ada, "Precious")
    button = delete_button(ada, "Precious")

    button.click()

    dialog = ada.get_by_role("dialog", name="Delete this talk?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("“Precious” and its comments will be gone for everyone.")
    expect(dialog.get_by_role("button", name="Keep it")).to_be_focused()
    dialog.get_by_role("button", name="Keep it").click()
    expect(dialog).to_be_hidden()
    expect(button).to_be_focused()
    # Escape keeps it too.
    button.click()
    expect(dialog).to_be_visible()
    ada.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(talk(grace, "Precious")).to_be_visible()

    button.click()
    dialog.get_by_role("button", name="Delete", exact=True).click()

    expect(talk(grace, "Precious")).to_have_count(0)
    expect(talk(ada, "Precious")).to_have_count(0)
    assert ada.dialogs == []  # a dialog of the page, not the browser's confirm()


def test_the_status_says_connecting_until_the_first_board_is_drawn(open_page, server):
    with urllib.request.urlopen(urllib.request.Request(
        server.url + "talks/Already%20there", method="PUT",
        data=json.dumps({"presenter": "Ada", "summary": "On the board before the page."}).encode(),
    )):
        pass
    held = []

    def hold_the_first_board(page: Page) -> None:
        # Streams are refused and the first poll is held: the page is
        # connected but has nothing to draw yet.
        def route(route):
            if "text/event-stream" in (route.request.headers.get("accept") or ""):
                route.abort()
            elif not held:
                held.append(route)
            else:
                route.continue_()

        page.route(re.compile(r"/talks(\?|$)"), route)

    page = open_page(before_load=hold_the_first_board, live=False)
    status = page.get_by_role("status")
    expect(status).to_have_text("Connecting…")
    page.wait_for_timeout(1500)  # past the moment an accepted poll counts as live
    expect(status).to_have_text("Connecting…")
    assert held and talk(page, "Already there").count() == 0

    held[0].continue_()

    expect(talk(page, "Already there")).to_be_visible()
    expect(status).to_have_text("Live")
