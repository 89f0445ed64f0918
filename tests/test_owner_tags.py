"""With --protect-talks, each talk shows its owner's public tag, and each
owning browser learns its own tag from a readable cookie that the page's
files set, so the page can offer Delete only where it may delete, while
every reader gets the same bytes.
"""

import json
from http.cookies import SimpleCookie

import pytest

from talkserver import make_app

from .harness import POLL_TIMEOUT

TALK = json.dumps({"presenter": "Ada", "summary": "Engines"})


@pytest.fixture
def protect():
    return True


@pytest.fixture
def app(store, protect):
    settings = {"protect_talks": True, "cookie_secret": "the test's secret"} if protect else {}
    return make_app(store, poll_timeout=POLL_TIMEOUT, **settings)


def cookies(answer) -> dict[str, str]:
    """The cookies an answer sets, by name (with their attributes as a string)."""
    jar = {}
    for header in answer.headers.get_list("Set-Cookie"):
        parsed = SimpleCookie(header)
        for name, morsel in parsed.items():
            jar[name] = morsel
    return jar


def cookie_header(jar) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items())}


async def propose(http_client, base_url, title, headers=None):
    return await http_client.fetch(f"{base_url}/talks/{title}", method="PUT", body=TALK, headers=headers)


async def board_talks(http_client, url):
    return {talk["title"]: talk for talk in json.loads((await http_client.fetch(url)).body)["talks"]}


async def owner_with_tag(http_client, base_url, title):
    """Propose ``title`` as a new browser, then load the page as it does: its cookies."""
    proposed = cookies(await propose(http_client, base_url, title))
    assert list(proposed) == ["talkserver_owner"]  # a write's answer sets one cookie
    page = await http_client.fetch(base_url + "/", method="HEAD", headers=cookie_header(proposed))
    return {**proposed, **cookies(page)}


@pytest.mark.gen_test
async def test_each_talk_carries_the_tag_its_owners_readable_cookie_holds(http_client, base_url):
    # Given two browsers, each proposing a talk and asking the page,
    ada = await owner_with_tag(http_client, base_url, "Engines")
    grace = await owner_with_tag(http_client, base_url, "Compilers")

    # then each got a readable tag cookie beside its signed, HttpOnly owner cookie,
    for jar in (ada, grace):
        assert jar["talkserver_owner"]["httponly"] is True
        assert not jar["talkserver_owner_tag"]["httponly"]
        assert jar["talkserver_owner_tag"]["samesite"] == "Strict"
    ada_tag, grace_tag = ada["talkserver_owner_tag"].value, grace["talkserver_owner_tag"].value
    assert ada_tag != grace_tag and len(ada_tag) >= 20
    # and every way of reading a talk shows its owner's tag, the same for everyone.
    everything = await board_talks(http_client, base_url + "/talks")
    assert (everything["Engines"]["owner"], everything["Compilers"]["owner"]) == (ada_tag, grace_tag)
    since = await board_talks(http_client, base_url + "/talks?changesSince=0")
    assert since["Engines"]["owner"] == ada_tag
    one = json.loads((await http_client.fetch(base_url + "/talks/Engines", headers=cookie_header(grace))).body)
    assert one["owner"] == ada_tag
    # The tag is no key: the owner cookie's id does not appear in it, nor it in the cookie.
    assert ada_tag not in ada["talkserver_owner"].value


@pytest.mark.gen_test
async def test_the_tag_does_not_let_a_stranger_delete(http_client, base_url, board):
    ada = await owner_with_tag(http_client, base_url, "Engines")
    tag = ada["talkserver_owner_tag"].value

    forged = {"Cookie": f"talkserver_owner_tag={tag}; talkserver_owner={tag}"}
    refused = await http_client.fetch(base_url + "/talks/Engines", method="DELETE", headers=forged, raise_error=False)

    assert refused.code == 403
    assert board.store.get("Engines") is not None


@pytest.mark.gen_test
async def test_a_deletion_carries_no_owner_and_the_page_keeps_the_tag_cookie_set(http_client, base_url):
    ada = await owner_with_tag(http_client, base_url, "Engines")
    mine = cookie_header({"talkserver_owner": ada["talkserver_owner"]})
    start = json.loads((await http_client.fetch(base_url + "/talks")).body)["serverTime"]

    # A browser that holds its tag cookie gets no new one with the page ...
    again = await http_client.fetch(base_url + "/app.js", headers=cookie_header(ada))
    assert "Set-Cookie" not in again.headers
    # ... and one whose tag cookie was cleared gets it back.
    page = await http_client.fetch(base_url + "/", headers=mine)
    assert cookies(page)["talkserver_owner_tag"].value == ada["talkserver_owner_tag"].value
    await http_client.fetch(base_url + "/talks/Engines", method="DELETE", headers=mine)

    since = json.loads((await http_client.fetch(f"{base_url}/talks?changesSince={start}")).body)["talks"]
    assert since == [{"title": "Engines", "deleted": True}]


@pytest.mark.gen_test
async def test_a_page_visit_sets_no_cookie_for_a_browser_that_owns_nothing(http_client, base_url):
    page = await http_client.fetch(base_url + "/")

    assert page.code == 200 and "Set-Cookie" not in page.headers


@pytest.mark.parametrize("protect", [False])
@pytest.mark.gen_test
async def test_without_protect_talks_no_talk_shows_an_owner(protect, http_client, base_url):
    answer = await propose(http_client, base_url, "Engines")

    assert "Set-Cookie" not in answer.headers
    assert "owner" not in (await board_talks(http_client, base_url + "/talks"))["Engines"]
