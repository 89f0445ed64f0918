"""The page as a person uses it: sign in, propose, find a talk, comment, delete; and a proxy that cannot stream.

Shared by the browser tests, so each of them reads as what a person does.
"""

from __future__ import annotations

from playwright.sync_api import Page, expect


def sign_in(page: Page, name: str) -> None:
    page.get_by_label("Your name", exact=True).fill(name)


def propose(page: Page, title: str, summary: str = "What it is about.") -> None:
    page.get_by_label("Title", exact=True).fill(title)
    page.get_by_label("Summary", exact=True).fill(summary)
    page.get_by_role("button", name="Propose talk").click()
    # As a person would: wait until the form is cleared, i.e. the talk was accepted.
    expect(page.get_by_label("Title", exact=True)).to_have_value("")


def talk(page: Page, title: str):
    """The <article> of the talk titled ``title``."""
    return page.get_by_role("article", name=title, exact=True)


def delete(page: Page, title: str) -> None:
    """Delete a talk as a person does: "Delete talk", then "Delete" in the dialog that asks."""
    talk(page, title).get_by_role("button", name="Delete talk").click()
    page.get_by_role("dialog", name="Delete this talk?").get_by_role("button", name="Delete", exact=True).click()


def comment(page: Page, title: str, message: str) -> None:
    article = talk(page, title)
    article.get_by_label("Comment", exact=True).fill(message)
    article.get_by_role("button", name="Add comment").click()


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
