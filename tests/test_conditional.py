"""Conditional polls of GET /talks: ETag, If-None-Match and Prefer: wait.

The server runs with ``api="etag"`` (the book's current client) unless a
test asks for ``changes``; every test with an in-process server runs on
each kind of store.  Timeouts are generous: the machine may be busy.
"""

import asyncio
import json

import pytest
from tornado.tcpclient import TCPClient

from talkserver.follow import feed as feed_module
from talkserver import make_app
from talkserver.follow.conditional import if_none_match, requested_wait, ANY

from .book_client import BookClient
from .harness import POLL_TIMEOUT, WAIT, ServerProcess, read_answer, run_talkserver, send, until, metric_reaches


@pytest.fixture
def store(each_store):
    """Each test that runs a server here runs it on each kind of store
    (``frozen_clock`` ones on a clock that stands still, so the next stamp is head + 1)."""
    return each_store


@pytest.fixture
def api():
    return "etag"


@pytest.fixture
def poll_timeout():
    return POLL_TIMEOUT


@pytest.fixture
def limits():
    return {}


@pytest.fixture
def app(store, api, poll_timeout, limits):
    return make_app(store, poll_timeout=poll_timeout, api=api, **limits)


def tag(board):
    return f'"{board.store.head}"'


async def get(pool, base_url, **headers):
    return await pool.fetch(base_url + "/talks", headers=headers, raise_error=False, request_timeout=WAIT)


def conditional_request(current, wait=90):
    return f"GET /talks HTTP/1.1\r\nHost: x\r\nIf-None-Match: {current}\r\nPrefer: wait={wait}\r\n\r\n".encode()


# -- plain GET --------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_plain_get_answers_the_array_of_talks_tagged_with_the_server_time(pool, base_url, board):
    await board.put("Unicycling", "Ann", "One wheel")

    response = await get(pool, base_url)

    assert response.code == 200
    assert json.loads(response.body) == [
        {"title": "Unicycling", "presenter": "Ann", "summary": "One wheel", "comments": []}
    ]
    assert response.headers["ETag"] == f'"{board.store.head}"'
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"


@pytest.mark.parametrize("api", ["changes"])
@pytest.mark.gen_test(timeout=120)
async def test_the_default_mode_answers_the_object_with_the_same_tag(pool, base_url, board):
    await board.put("Unicycling", "Ann", "One wheel")

    response = await get(pool, base_url)

    assert json.loads(response.body) == {
        "serverTime": board.store.head,
        "talks": [{"title": "Unicycling", "presenter": "Ann", "summary": "One wheel", "comments": []}],
    }
    assert response.headers["ETag"] == f'"{board.store.head}"'


@pytest.mark.gen_test(timeout=120)
async def test_changes_since_keeps_working_in_etag_mode(pool, base_url, board):
    cursor = board.store.head
    await board.put("a", "Ann", "s")

    response = await pool.fetch(f"{base_url}/talks?changesSince={cursor}", raise_error=False)

    assert json.loads(response.body) == {
        "serverTime": board.store.head,
        "talks": [{"title": "a", "presenter": "Ann", "summary": "s", "comments": []}],
    }


# -- conditions answered at once ---------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_the_current_tag_without_prefer_gets_304_at_once_with_no_body(pool, base_url, board):
    await board.put("a", "Ann", "s")

    response = await get(pool, base_url, **{"If-None-Match": tag(board)})

    assert response.code == 304
    assert response.body == b""
    assert response.headers["ETag"] == tag(board)
    assert "Content-Type" not in response.headers
    assert "Preference-Applied" not in response.headers
    assert len(board.waiters) == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_stale_tag_gets_the_whole_list_at_once_even_when_asked_to_wait(pool, base_url, board):
    stale = tag(board)
    await board.put("a", "Ann", "s")

    response = await get(pool, base_url, **{"If-None-Match": stale, "Prefer": "wait=90"})

    assert response.code == 200
    assert [t["title"] for t in json.loads(response.body)] == ["a"]
    assert response.headers["ETag"] == tag(board)
    assert "Preference-Applied" not in response.headers


@pytest.mark.gen_test(timeout=120)
async def test_a_tag_from_the_future_gets_the_whole_list_at_once(pool, base_url, board):
    await board.put("a", "Ann", "s")

    response = await get(pool, base_url, **{"If-None-Match": f'"{board.store.head + 1000}"', "Prefer": "wait=90"})

    assert response.code == 200
    assert [t["title"] for t in json.loads(response.body)] == ["a"]


@pytest.mark.gen_test(timeout=120)
async def test_a_weak_tag_matches_like_the_strong_one(pool, base_url, board):
    response = await get(pool, base_url, **{"If-None-Match": f"W/{tag(board)}"})

    assert response.code == 304


@pytest.mark.gen_test(timeout=120)
async def test_a_list_of_tags_matches_when_any_of_them_names_the_current_list(pool, base_url, board):
    await board.put("a", "Ann", "s")

    matching = await get(pool, base_url, **{"If-None-Match": f'"1", W/"2", {tag(board)}'})
    stale = await get(pool, base_url, **{"If-None-Match": '"1", W/"2"'})

    assert matching.code == 304
    assert stale.code == 200


@pytest.mark.gen_test(timeout=120)
async def test_a_star_gets_304_at_once_without_waiting(pool, base_url, board):
    response = await get(pool, base_url, **{"If-None-Match": "*", "Prefer": "wait=90"})

    assert response.code == 304
    assert "Preference-Applied" not in response.headers


@pytest.mark.gen_test(timeout=120)
async def test_an_unreadable_if_none_match_is_ignored(pool, base_url, board):
    response = await get(pool, base_url, **{"If-None-Match": str(board.store.head)})  # no quotes

    assert response.code == 200
    assert json.loads(response.body) == []


@pytest.mark.parametrize("prefer", ["wait=abc", "wait=", "wait=-1", "wait=0", "respond-async", "wait=1.5"])
@pytest.mark.gen_test(timeout=120)
async def test_a_prefer_without_a_whole_positive_wait_gets_304_at_once(pool, base_url, board, prefer):
    response = await get(pool, base_url, **{"If-None-Match": tag(board), "Prefer": prefer})

    assert response.code == 304
    assert "Preference-Applied" not in response.headers


@pytest.mark.gen_test(timeout=120)
async def test_a_changes_since_poll_is_never_answered_304(pool, base_url, board):
    await board.put("a", "Ann", "s")

    response = await pool.fetch(
        f"{base_url}/talks?changesSince=0", headers={"If-None-Match": "*"}, raise_error=False
    )

    assert response.code == 200
    assert "ETag" not in response.headers


# -- waiting ------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_waiting_poll_gets_the_whole_list_and_its_new_tag_when_a_talk_changes(pool, base_url, board):
    await board.put("old", "Ann", "s")
    poll = asyncio.ensure_future(get(pool, base_url, **{"If-None-Match": tag(board), "Prefer": "wait=90"}))
    await until(lambda: len(board.waiters) == 1)

    await board.put("new", "Bo", "t")
    response = await poll

    assert response.code == 200
    assert [t["title"] for t in json.loads(response.body)] == ["old", "new"]
    assert response.headers["ETag"] == tag(board)
    assert response.headers["Preference-Applied"] == f"wait={POLL_TIMEOUT:g}"
    assert len(board.waiters) == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_wait_longer_than_the_poll_timeout_ends_with_304_at_the_poll_timeout(pool, base_url, board):
    current = tag(board)
    poll = asyncio.ensure_future(get(pool, base_url, **{"If-None-Match": current, "Prefer": "wait=90"}))
    await until(lambda: len(board.waiters) == 1)

    response = await poll  # the client would give up after 30 s, long before 90

    assert response.code == 304
    assert response.body == b""
    assert response.headers["ETag"] == current
    assert response.headers["Preference-Applied"] == f"wait={POLL_TIMEOUT:g}"
    assert len(board.waiters) == 0


@pytest.mark.parametrize("poll_timeout", [60.0])
@pytest.mark.gen_test(timeout=120)
async def test_a_wait_shorter_than_the_poll_timeout_is_honoured(pool, base_url, board, app):
    poll = asyncio.ensure_future(get(pool, base_url, **{"If-None-Match": tag(board), "Prefer": "wait=1"}))
    await until(lambda: len(board.waiters) == 1)

    response = await poll  # not the 60 s poll timeout

    assert response.code == 304
    assert response.headers["Preference-Applied"] == "wait=1"
    assert len(board.waiters) == 0


@pytest.mark.parametrize("poll_timeout", [60.0])
@pytest.mark.gen_test(timeout=120)
async def test_a_short_wait_woken_by_a_change_is_answered_once(port, board, app):
    stream = await TCPClient().connect("127.0.0.1", port)
    await stream.write(conditional_request(tag(board), wait=2))
    await until(lambda: len(board.waiters) == 1)

    await board.put("a", "Ann", "s")
    status, headers, _ = await read_answer(stream)
    # The 2 s timer of its group runs, finds it gone, and retires the group.
    await until(lambda: app.following["conditional"]._short == {})
    await stream.write(b"GET /talks HTTP/1.1\r\nHost: x\r\n\r\n")
    after = await read_answer(stream)

    assert (status, headers["preference-applied"]) == (200, "wait=2")
    assert after[0] == 200 and "preference-applied" not in after[1]  # the plain GET's, no late second answer
    assert json.loads(after[2])[0]["title"] == "a"
    stream.close()


@pytest.mark.gen_test(timeout=120)
async def test_the_first_wait_among_several_preferences_counts(pool, base_url, board):
    poll = asyncio.ensure_future(
        get(pool, base_url, **{"If-None-Match": tag(board), "Prefer": 'respond-async, WAIT="1"; x=y, wait=99'})
    )
    response = await poll

    assert response.code == 304
    assert response.headers["Preference-Applied"] == "wait=1"


@pytest.mark.frozen_clock
@pytest.mark.gen_test(timeout=120)
async def test_a_poll_that_also_names_the_next_state_waits_past_it(pool, base_url, board):
    head = board.store.head
    poll = asyncio.ensure_future(get(pool, base_url, **{"If-None-Match": f'"{head}", "{head + 1}"', "Prefer": "wait=90"}))
    # A witness that names only the current state: the change wakes it.
    witness = asyncio.ensure_future(get(pool, base_url, **{"If-None-Match": f'"{head}"', "Prefer": "wait=90"}))
    await until(lambda: len(board.waiters) == 2)

    await board.put("a", "Ann", "s")  # stamped head + 1 on a clock that stands still
    assert board.store.head == head + 1
    # Once the witness has its answer, the change has been offered to every waiter.
    assert (await witness).code == 200
    assert not poll.done() and len(board.waiters) == 1
    await board.put("b", "Bo", "t")
    response = await poll

    assert response.code == 200
    assert [t["title"] for t in json.loads(response.body)] == ["a", "b"]


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_whose_client_goes_away_is_forgotten(port, board):
    stream = await TCPClient().connect("127.0.0.1", port)
    await stream.write(conditional_request(tag(board)))
    await until(lambda: len(board.waiters) == 1)

    stream.close()

    await until(lambda: len(board.waiters) == 0)


@pytest.mark.parametrize("poll_timeout", [60.0])
@pytest.mark.gen_test(timeout=120)
async def test_a_short_wait_whose_client_goes_away_is_forgotten_with_its_deadline(port, board, app):
    stream = await TCPClient().connect("127.0.0.1", port)
    await stream.write(conditional_request(tag(board), wait=30))
    await until(lambda: len(board.waiters) == 1)

    stream.close()

    await until(lambda: len(board.waiters) == 0)
    assert all(not group for group in app.following["conditional"]._short.values())


# -- shared answers on kept-alive connections -----------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_woken_polls_on_kept_alive_connections_get_one_shared_answer_and_poll_on(port, board, monkeypatch):
    current = tag(board)
    streams = [await TCPClient().connect("127.0.0.1", port) for _ in range(20)]
    for stream in streams:
        await stream.write(conditional_request(current))
    await until(lambda: len(board.waiters) == 20)
    arrays = []
    real_encode = feed_module._encode
    monkeypatch.setattr(feed_module, "_encode", lambda o: (isinstance(o, list) and arrays.append(o)) or real_encode(o))

    await board.put("news", "Ann", "s")
    answers = [await read_answer(stream) for stream in streams]

    assert len(arrays) == 1  # one encoding of the list for all 20
    assert {(status, body) for status, _, body in answers} == {(200, answers[0][2])}
    assert json.loads(answers[0][2])[0]["title"] == "news"
    assert {headers["etag"] for _, headers, _ in answers} == {tag(board)}
    # Each connection goes on: the next poll, with the new tag, waits again.
    for stream in streams:
        await stream.write(conditional_request(tag(board)))
    await until(lambda: len(board.waiters) == 20)
    await board.delete("news")
    answers = [await read_answer(stream) for stream in streams]
    assert {body for _, _, body in answers} == {b"[]"}
    for stream in streams:
        stream.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_that_times_out_on_a_kept_alive_connection_gets_a_bodiless_304(port, board):
    stream = await TCPClient().connect("127.0.0.1", port)
    await stream.write(conditional_request(tag(board)))

    status, headers, body = await read_answer(stream)
    await stream.write(b"GET /talks HTTP/1.1\r\nHost: x\r\n\r\n")
    after = await read_answer(stream)

    assert (status, body) == (304, b"")
    assert "content-length" not in headers and "transfer-encoding" not in headers
    assert after[0] == 200  # the connection was left ready for the next request
    stream.close()


# -- limits and draining ---------------------------------------------------------


@pytest.mark.parametrize("limits", [{"max_polls_per_ip": 2, "slow_lane_interval": 0.5}])
@pytest.mark.gen_test(timeout=120)
async def test_waiting_conditional_polls_past_the_per_address_cap_wait_in_the_slow_lane(pool, base_url, board):
    current = tag(board)
    waiting = [asyncio.ensure_future(get(pool, base_url, **{"If-None-Match": current, "Prefer": "wait=90"})) for _ in range(2)]
    await until(lambda: len(board.waiters) == 2)

    over = asyncio.ensure_future(get(pool, base_url, **{"If-None-Match": current, "Prefer": "wait=90"}))
    await until(lambda: len(board.slow_lane) == 1)
    at_once = await get(pool, base_url, **{"If-None-Match": current})  # a 304 at once holds no place
    await board.put("a", "Ann", "s")
    first, second, late = await asyncio.gather(*waiting, over)

    assert at_once.code == 304
    assert (first.code, second.code) == (200, 200)
    assert late.code == 200
    assert late.headers["Etag"] == tag(board) != current
    assert late.body == first.body
    assert len(board.waiters) == len(board.slow_lane) == 0


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_answers_waiting_conditional_polls_with_304_at_once():
    with ServerProcess("--api=etag", "--poll-timeout=120") as server:
        first = await send(server.port, "GET", "/talks")
        current = first.headers["etag"]
        polls = [
            asyncio.ensure_future(send(server.port, "GET", "/talks", headers={"If-None-Match": current, "Prefer": "wait=90"}))
            for _ in range(20)
        ]
        await metric_reaches(server.port, "talkserver_waiting_clients", 20)

        server.terminate()
        answers = await asyncio.gather(*polls)  # each send gives up after WAIT, not the 90 s asked for

        assert {(a.status, a.body, a.headers["etag"]) for a in answers} == {(304, b"", current)}
        assert await server.stopped() == 0


# -- the book's client -------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_two_book_clients_see_talks_comments_and_deletes(pool, base_url, board):
    ada, grace = BookClient(base_url, pool).start(), BookClient(base_url, pool).start()
    await until(lambda: ada.talks == [] and grace.talks == [])

    await send_write(base_url, "PUT", "/talks/Knitting", {"presenter": "Ada", "summary": "Loops"})
    await until(lambda: ada.titles() == grace.titles() == ["Knitting"])
    await send_write(base_url, "POST", "/talks/Knitting/comments", {"author": "Grace", "message": "Count me in"})
    await until(lambda: all(c.talks[0]["comments"] == [{"author": "Grace", "message": "Count me in"}] for c in (ada, grace)))
    await send_write(base_url, "DELETE", "/talks/Knitting")
    await until(lambda: ada.talks == [] and grace.talks == [])

    assert ada.talks == json.loads(board.feed.talk_array())
    assert ada.errors == grace.errors == 0
    await ada.stop()
    await grace.stop()


@pytest.mark.gen_test(timeout=120)
async def test_an_idle_book_client_waits_instead_of_spinning(pool, base_url, board):
    loop = asyncio.get_running_loop()
    started = loop.time()
    client = BookClient(base_url, pool).start()
    await until(lambda: client.not_modified >= 3)
    elapsed = loop.time() - started
    await client.stop()

    # Every conditional poll waited out the poll timeout before its 304.
    assert client.requests <= 3 + elapsed / POLL_TIMEOUT
    assert client.errors == 0
    assert client.talks == []


@pytest.mark.parametrize("poll_timeout", [60.0])
@pytest.mark.parametrize("limits", [{"max_polls_per_ip": 1, "slow_lane_interval": 0.5}])
@pytest.mark.gen_test(timeout=120)
async def test_a_book_client_past_the_cap_polls_once_per_slow_lane_round_and_sees_the_change(pool, base_url, board, port):
    # Another tab of the same address holds the one poll allowed.
    other_tab = await TCPClient().connect("127.0.0.1", port)
    await other_tab.write(conditional_request(tag(board)))
    await until(lambda: len(board.waiters) == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    client = BookClient(base_url, pool).start()
    await until(lambda: client.not_modified >= 3)  # idle rounds of the slow lane answer 304

    await board.put("a", "Ann", "s")
    await until(lambda: client.titles() == ["a"])
    elapsed = loop.time() - started
    await client.stop()

    assert client.errors == 0
    # One request per round (plus the first plain GET, a first round that
    # came early and the poll still open at the end), however eagerly the
    # client polls again after a 304: not a spin.
    assert client.requests <= 3 + elapsed / 0.5
    other_tab.close()


async def send_write(base_url, method, path, body=None):
    port = int(base_url.rsplit(":", 1)[1])
    answer = await send(port, method, path, body)
    assert answer.status == 204, answer.body


# -- header parsing ------------------------------------------------------------------


def test_if_none_match_reads_strong_weak_and_listed_tags_across_header_lines():
    assert if_none_match(['"1", W/"2"', 'W/"3"']) == {'"1"', '"2"', '"3"'}


def test_if_none_match_star_matches_anything():
    assert if_none_match(["*"]) is ANY
    assert '"anything"' in ANY


def test_if_none_match_without_a_quoted_tag_is_no_condition():
    assert if_none_match([]) is None
    assert if_none_match(["5, abc"]) is None


@pytest.mark.parametrize(
    "values, wait",
    [
        ([], 0),
        (["wait=5"], 5),
        (["wait=500"], 90),
        (["wait=" + "9" * 5000], 90),
        (["handling=lenient", "wait=7"], 7),
        (['wait="3"'], 3),
        (["wait=٣"], 0),  # a digit, but not an ASCII one
    ],
)
def test_requested_wait_is_whole_seconds_capped(values, wait):
    assert requested_wait(values, 90.0) == wait


def test_an_unknown_api_mode_stops_the_command_with_one_line(tmp_path):
    result = run_talkserver("--api=rest", "--db=:memory:", cwd=tmp_path)

    assert result.returncode != 0
    assert result.stderr.strip() == "talkserver: --api=rest: use one of changes, etag"


def test_etag_mode_with_the_bundled_page_warns_at_start():
    with ServerProcess("--api=etag", "--db=:memory:") as server:
        assert server.stop() == 0
        assert "the bundled page polls with changesSince" in server.log()
