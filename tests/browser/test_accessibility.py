"""An accessibility audit of the page with axe-core, in Chromium, in each state
a person meets: the board empty, the board full, the confirmation dialog, and
the error states (the server gone, a refused write); light and dark.

axe-core comes from the npm registry (tests/browser/package.json; ``make
test`` installs it) and is injected as an init script, which the page's
Content-Security-Policy does not apply to.  A serious or critical violation
fails the test, listed with the rule and the elements it concerns.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .page import comment, propose, sign_in, talk

AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
PROTECTED = ("--protect-talks", "--cookie-secret=browser tests only")

AUDIT = """async () => {
    const result = await axe.run(document, { resultTypes: ["violations"] });
    return result.violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.impact} ${v.id} (${v.help}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
}"""


@pytest.fixture(params=["light", "dark"])
def audited_page(request, open_page):
    """Open pages with axe-core loaded, in the light or the dark colour scheme."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make test` installs it (npm ci in tests/browser)")

    def open_audited(**kwargs) -> Page:
        def before_load(page: Page) -> None:
            page.emulate_media(color_scheme=request.param)
            page.add_init_script(path=str(AXE))

        return open_page(before_load=before_load, **kwargs)

    return open_audited


def violations(page: Page) -> list[str]:
    return page.evaluate(AUDIT)


def fill_the_board(page: Page) -> None:
    sign_in(page, "Ada Lovelace")
    for n, title in enumerate(["Knitting for programmers", "Compilers by hand", "A rather long title " * 4]):
        propose(page, title, f"Summary number {n}.\nWith a second line.")
        comment(page, title, "First!")
        comment(page, title, "A longer comment that says rather more about the talk. " * 3)
    expect(talk(page, "Compilers by hand").get_by_role("listitem")).to_have_count(2)


def test_the_empty_board_has_no_serious_violation(audited_page):
    page = audited_page()
    expect(page.get_by_text("No talks yet")).to_be_visible()

    assert violations(page) == []


def test_a_full_board_and_the_delete_dialog_have_no_serious_violation(audited_page):
    page = audited_page()
    fill_the_board(page)
    # A talk deleted under an unsent comment, kept with its "Dismiss" button.
    other = audited_page()
    talk(page, "Knitting for programmers").get_by_label("Comment", exact=True).fill("unsent")
    talk(other, "Knitting for programmers").get_by_role("button", name="Delete talk").click()
    other.get_by_role("dialog").get_by_role("button", name="Delete", exact=True).click()
    expect(talk(page, "Knitting for programmers").get_by_text("This talk was deleted")).to_be_visible()

    assert violations(page) == []

    talk(page, "Compilers by hand").get_by_role("button", name="Delete talk").click()
    expect(page.get_by_role("dialog")).to_be_visible()
    assert violations(page) == []


@pytest.mark.parametrize("server_args", [PROTECTED])
def test_a_board_of_others_talks_under_protect_talks_has_no_serious_violation(audited_page):
    owner, reader = audited_page(), audited_page()
    fill_the_board(owner)
    expect(talk(reader, "Compilers by hand").get_by_role("listitem")).to_have_count(2)
    expect(reader.get_by_role("button", name="Delete talk")).to_have_count(0)

    assert violations(reader) == []


def test_the_error_states_have_no_serious_violation(audited_page, server):
    page = audited_page()
    fill_the_board(page)
    # A refused write: too long for the server, shown in the form's alert.
    page.get_by_label("Title", exact=True).evaluate("field => { field.value = 'x'.repeat(201); }")
    page.get_by_label("Summary", exact=True).fill("Refused.")
    page.get_by_role("button", name="Propose talk").click()
    expect(page.locator("#new-talk").get_by_role("alert")).to_contain_text("longer than 200 characters")
    # A comment without a name, refused by the page.
    page.get_by_label("Your name", exact=True).fill("")
    comment(page, "Compilers by hand", "Who am I?")
    expect(talk(page, "Compilers by hand").get_by_role("alert")).to_be_visible()

    assert violations(page) == []

    # The server gone: the status says so, with "Retry now".
    server.kill()
    expect(page.get_by_role("button", name="Retry now")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("Reconnecting")

    assert violations(page) == []
