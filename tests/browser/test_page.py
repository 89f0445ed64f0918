"""The skill-sharing page in real Chromium, driven by its accessible names.

Each test opens one or two pages (two people) on a fresh talkserver and
checks what a person would see: live talks, comments and deletes, typed
text that survives updates, a remembered name, recovery from a server
crash, and markup that is never executed.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

from playwright.sync_api import expect

from .page import comment, delete, propose, refuse_event_streams, sign_in, talk

XSS_TITLE = "<img src=x onerror=alert(1)>"


def test_a_talk_proposed_in_one_page_appears_in_the_other(open_page):
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")

    propose(ada, "Knitting for programmers", "Loops, patterns and dropped stitches.")

    shown = talk(grace, "Knitting for programmers")
    expect(shown.get_by_role("heading", level=2)).to_have_text("Knitting for programmers")
    expect(shown).to_contain_text("by Ada")
    expect(shown).to_contain_text("Loops, patterns and dropped stitches.")


def test_a_comment_appears_in_the_other_page_and_a_half_typed_comment_keeps_text_and_focus(open_page):
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")
    sign_in(grace, "Grace")
    propose(ada, "Compilers")
    mine = talk(ada, "Compilers")
    field = mine.get_by_label("Comment", exact=True)
    field.click()
    field.press_sequentially("I was about to as")
    # Mark the article's node: a redraw would replace it with an unmarked one.
    mine.evaluate("article => { article.sameNode = true; }")

    comment(grace, "Compilers", "Who writes the first one?")

    expect(mine.get_by_role("listitem")).to_have_text(["Grace: Who writes the first one?"])
    expect(field).to_have_value("I was about to as")
    expect(field).to_be_focused()
    assert mine.evaluate("article => article.sameNode === true")
    # Typing goes on where it stopped, and the comment is sent as typed.
    field.press_sequentially("k something")
    field.press("Enter")
    expect(talk(grace, "Compilers").get_by_role("listitem")).to_have_text(
        ["Grace: Who writes the first one?", "Ada: I was about to ask something"]
    )
    expect(field).to_have_value("")


def test_a_talk_deleted_in_one_page_disappears_from_the_other(open_page):
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")
    propose(ada, "Short-lived")
    propose(ada, "Long-lived")
    expect(talk(grace, "Short-lived")).to_be_visible()

    delete(grace, "Short-lived")

    expect(talk(ada, "Short-lived")).to_have_count(0)
    expect(talk(grace, "Short-lived")).to_have_count(0)
    expect(talk(ada, "Long-lived")).to_be_visible()


def test_a_deleted_talk_with_an_unsent_comment_stays_until_dismissed(open_page):
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")
    propose(ada, "Doomed")
    talk(grace, "Doomed").get_by_label("Comment", exact=True).fill("my unsent thoughts")

    delete(ada, "Doomed")

    kept = talk(grace, "Doomed")
    expect(kept.get_by_text("This talk was deleted")).to_be_visible()
    expect(kept.get_by_label("Comment", exact=True)).to_have_value("my unsent thoughts")
    expect(kept.get_by_role("button", name="Add comment")).to_be_disabled()
    kept.get_by_role("button", name="Dismiss").click()
    expect(talk(grace, "Doomed")).to_have_count(0)


def test_the_name_is_remembered_across_a_reload(open_page):
    page = open_page()
    sign_in(page, "Grace Hopper")

    page.reload()

    expect(page.get_by_label("Your name", exact=True)).to_have_value("Grace Hopper")
    propose(page, "Nanoseconds")
    expect(talk(page, "Nanoseconds")).to_contain_text("by Grace Hopper")


def test_markup_in_a_title_is_shown_as_text_and_never_run(open_page):
    ada, grace = open_page(), open_page()
    sign_in(ada, "<b>Ada</b>")

    propose(ada, XSS_TITLE, "<script>alert(2)</script>")
    comment(ada, XSS_TITLE, "<img src=y onerror=alert(3)>")

    shown = talk(grace, XSS_TITLE)
    expect(shown.get_by_role("heading", level=2)).to_have_text(XSS_TITLE)
    expect(shown).to_contain_text("by <b>Ada</b>")
    expect(shown).to_contain_text("<script>alert(2)</script>")
    expect(shown.get_by_role("listitem")).to_have_text(["<b>Ada</b>: <img src=y onerror=alert(3)>"])
    assert shown.locator("img, script, b").count() == 0
    assert ada.dialogs == [] and grace.dialogs == []


def test_the_page_recovers_after_the_server_is_killed_and_restarted(open_page, server):
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")
    reads = []
    grace.on("request", lambda request: reads.append(request.url) if "/talks" in request.url else None)
    propose(ada, "Before the crash")
    expect(talk(grace, "Before the crash")).to_be_visible()
    status = grace.get_by_role("status")

    server.kill()

    expect(status).not_to_have_text("Live")
    expect(status).to_contain_text(re.compile(r"Reconnecting: (next try in \d+ s|trying now)"))
    expect(grace.get_by_role("button", name="Retry now")).to_be_visible()
    # Nothing the page showed is thrown away while it waits.
    expect(talk(grace, "Before the crash")).to_be_visible()

    server.start()

    # Backoff is capped near 10 s, so the page is back well within this.
    expect(status).to_have_text("Live", timeout=30_000)
    expect(grace.get_by_role("button", name="Retry now")).to_be_hidden()
    expect(ada.get_by_role("status")).to_have_text("Live", timeout=30_000)
    propose(ada, "After the restart")
    expect(talk(grace, "After the restart")).to_be_visible()
    expect(talk(grace, "After the restart")).to_have_count(1)
    # It resumed from its cursor every time instead of reloading everything.
    # (Over a stream, changes need no request: only reconnects are seen.)
    assert reads and all("changesSince=" in url for url in reads)
    cursors = [int(url.split("changesSince=")[1]) for url in reads]
    assert cursors == sorted(cursors)


def server_metric(server, name: str) -> float:
    with urllib.request.urlopen(server.url + "metrics") as response:
        text = response.read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def eventually(condition, timeout: float = 15.0) -> None:
    """Wait for ``condition()`` (checked every 50 ms) to hold."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_two_pages_stay_live_over_event_streams(open_page, server):
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")

    propose(ada, "Streams")
    comment(ada, "Streams", "No polling here")

    expect(talk(grace, "Streams").get_by_role("listitem")).to_have_text(["Ada: No polling here"])
    assert server_metric(server, "talkserver_streams_open") == 2
    assert server_metric(server, "talkserver_waiting_clients") == 0


def test_a_page_whose_streams_are_refused_switches_to_long_polling_and_stays_live(open_page, server):
    ada = open_page()
    grace = open_page(before_load=refuse_event_streams)
    sign_in(ada, "Ada")

    propose(ada, "Polled")
    comment(ada, "Polled", "Still arrives")

    expect(talk(grace, "Polled").get_by_role("listitem")).to_have_text(["Ada: Still arrives"])
    expect(grace.get_by_role("status")).to_have_text("Live")
    # Ada streams; Grace waits in a long poll, and gave up on streams
    # after the refusals the page allows instead of trying again and again.
    eventually(lambda: server_metric(server, "talkserver_waiting_clients") == 1)
    assert server_metric(server, "talkserver_streams_open") == 1
    assert grace.refused == grace.evaluate("async () => (await import('./follow.js')).STREAM_REFUSALS")


def test_a_reset_replaces_the_list_but_keeps_a_half_typed_comment(open_page, server):
    # Given a server whose clock ran a day ahead, so the page's cursor is
    # from the future for the server that replaces it.
    server.kill()
    server.clock_ahead = 24 * 3600
    server.start()
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")
    sign_in(grace, "Grace")
    propose(ada, "Forgotten")
    propose(ada, "Drafted")
    field = talk(grace, "Drafted").get_by_label("Comment", exact=True)
    field.fill("half a thought")
    field.focus()

    # When it is replaced by a server with the right clock and no talks,
    # which answers the page's cursor with "reset": true.
    server.kill()
    server.clock_ahead = 0
    server.start()

    # Then talks the server no longer has go, except the one holding unsent text.
    expect(talk(grace, "Forgotten")).to_have_count(0, timeout=30_000)
    expect(talk(grace, "Drafted").get_by_text("This talk was deleted")).to_be_visible()
    expect(field).to_have_value("half a thought")
    # And when that talk is proposed again, the draft is still there to send.
    propose(ada, "Drafted")
    expect(talk(grace, "Drafted").get_by_text("This talk was deleted")).to_be_hidden()
    expect(field).to_have_value("half a thought")
    expect(field).to_be_focused()
    talk(grace, "Drafted").get_by_role("button", name="Add comment").click()
    expect(talk(ada, "Drafted").get_by_role("listitem")).to_have_text(["Grace: half a thought"])


def test_a_failed_write_shows_the_error_by_its_form_and_keeps_the_text(open_page, server):
    page = open_page()
    sign_in(page, "Ada")
    title = page.get_by_label("Title", exact=True)
    summary = page.get_by_label("Summary", exact=True)

    # Too long for the server (the field's maxlength stops typing, not scripts).
    title.evaluate("field => { field.value = 'x'.repeat(201); }")
    summary.fill("Kept for another try.")
    page.get_by_role("button", name="Propose talk").click()

    error = page.locator("#new-talk").get_by_role("alert")
    expect(error).to_contain_text("longer than 200 characters")
    expect(summary).to_have_value("Kept for another try.")

    server.kill()
    title.fill("While the server is down")
    page.get_by_role("button", name="Propose talk").click()
    expect(error).to_contain_text("could not be reached")
    expect(title).to_have_value("While the server is down")

    server.start()
    expect(page.get_by_role("status")).to_have_text("Live", timeout=30_000)
    page.get_by_role("button", name="Propose talk").click()
    expect(talk(page, "While the server is down")).to_contain_text("Kept for another try.")
    expect(error).to_be_hidden()
    assert page.dialogs == []


def test_posting_without_a_name_asks_for_one_and_sends_nothing(open_page, server):
    ada, grace = open_page(), open_page()
    sign_in(ada, "Ada")
    propose(ada, "Anonymous?")

    comment(grace, "Anonymous?", "Who am I?")

    article = talk(grace, "Anonymous?")
    expect(article.get_by_role("alert")).to_have_text("Please enter your name at the top first.")
    expect(grace.get_by_label("Your name", exact=True)).to_be_focused()
    expect(article.get_by_label("Comment", exact=True)).to_have_value("Who am I?")
    with urllib.request.urlopen(server.url + "talks/Anonymous%3F") as response:
        assert json.load(response)["comments"] == []


def test_the_page_can_be_used_by_keyboard_alone(open_page):
    page = open_page()
    page.get_by_label("Your name", exact=True).focus()
    page.keyboard.type("Keyboard Kim")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Title", exact=True)).to_be_focused()
    page.keyboard.type("No mouse needed")
    page.keyboard.press("Tab")
    page.keyboard.type("Tab, type, Enter.")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Propose talk")).to_be_focused()
    page.keyboard.press("Enter")
    article = talk(page, "No mouse needed")
    expect(article).to_contain_text("by Keyboard Kim")

    page.keyboard.press("Tab")
    expect(article.get_by_label("Comment", exact=True)).to_be_focused()
    page.keyboard.type("Typed, not clicked")
    page.keyboard.press("Enter")
    expect(article.get_by_role("listitem")).to_have_text(["Keyboard Kim: Typed, not clicked"])
    # The button is disabled until the POST is answered, which may come after the feed.
    expect(article.get_by_role("button", name="Add comment")).to_be_enabled()
    page.keyboard.press("Tab")
    expect(article.get_by_role("button", name="Add comment")).to_be_focused()
    page.keyboard.press("Tab")
    expect(article.get_by_role("button", name="Delete talk")).to_be_focused()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Delete this talk?")
    expect(dialog.get_by_role("button", name="Keep it")).to_be_focused()
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Delete", exact=True)).to_be_focused()
    page.keyboard.press("Enter")
    expect(article).to_have_count(0)


def test_the_page_fits_a_phone_width_screen(open_page):
    page = open_page(width=360, height=740)
    sign_in(page, "Ada")
    propose(page, "A rather long title that has to wrap on a narrow phone screen", "x" * 300)
    comment(page, "A rather long title that has to wrap on a narrow phone screen", "y" * 200)

    expect(talk(page, "A rather long title that has to wrap on a narrow phone screen").get_by_role("listitem")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360


def test_retry_delays_grow_with_jitter_and_are_capped_near_ten_seconds(open_page):
    page = open_page()
    delays = page.evaluate(
        """async () => {
            const { retryDelay } = await import("./follow.js");
            const range = (n) => [retryDelay(n, () => 0), retryDelay(n, () => 0.999999)];
            return [1, 2, 3, 4, 5, 6, 7, 8, 20, 100].map(range);
        }"""
    )
    lows = [low for low, high in delays]
    highs = [high for low, high in delays]
    assert lows == sorted(lows) and highs == sorted(highs)
    assert highs[0] <= 500
    assert lows[-1] == 5_000 and highs[-1] == 10_000
    assert all(high > low for low, high in delays)


def test_the_page_is_served_with_a_policy_that_forbids_inline_script(server):
    with urllib.request.urlopen(server.url) as response:
        policy = response.headers["Content-Security-Policy"]
        page = response.read().decode()
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    # The page itself has no inline script to need an exception.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)
