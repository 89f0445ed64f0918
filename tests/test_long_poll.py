"""The long poll: answering at once, waiting, waking, timing out, disconnects."""

import asyncio
import json

import pytest

from talkserver.follow import feed as feed_module
from . import consistency
from .follower import Follower, Servers
from .harness import POLL_TIMEOUT, WAIT, metric, reset_connection, until


@pytest.fixture(autouse=True)
def store(each_store):
    """Every test here runs on each kind of store; ``frozen_clock`` ones on a clock that never moves."""
    return each_store


async def get_json(client, url, **kwargs):
    response = await client.fetch(url, raise_error=False, request_timeout=WAIT, **kwargs)
    return response, json.loads(response.body)


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_with_changes_answers_at_once(pool, base_url, board):
    cursor = board.store.head
    await board.put("a", "Ann", "s")
    response, answer = await get_json(pool, f"{base_url}/talks?changesSince={cursor}")
    assert response.code == 200
    assert answer == {
        "serverTime": board.store.head,
        "talks": [{"title": "a", "presenter": "Ann", "summary": "s", "comments": []}],
    }


@pytest.mark.gen_test(timeout=120)
async def test_a_waiting_poll_is_answered_with_the_change_that_wakes_it(pool, base_url, board):
    cursor = board.store.head
    poll = asyncio.ensure_future(get_json(pool, f"{base_url}/talks?changesSince={cursor}"))
    await until(lambda: len(board.waiters) == 1)
    assert not poll.done()

    await board.put("woken", "Ann", "s")
    response, answer = await poll
    assert [t["title"] for t in answer["talks"]] == ["woken"]
    assert answer["serverTime"] == board.store.head > cursor
    assert len(board.waiters) == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_delete_wakes_pollers_with_a_tombstone(pool, base_url, board):
    await board.put("a", "Ann", "s")
    cursor = board.store.head
    poll = asyncio.ensure_future(get_json(pool, f"{base_url}/talks?changesSince={cursor}"))
    await until(lambda: len(board.waiters) == 1)
    await board.delete("a")
    _, answer = await poll
    assert answer["talks"] == [{"title": "a", "deleted": True}]


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_with_nothing_new_times_out_with_an_empty_list(pool, base_url, board):
    cursor = board.store.head
    loop = asyncio.get_running_loop()
    started = loop.time()
    response, answer = await get_json(pool, f"{base_url}/talks?changesSince={cursor}")
    waited = loop.time() - started
    assert response.code == 200
    assert answer == {"serverTime": cursor, "talks": []}
    assert waited >= POLL_TIMEOUT * 0.9
    assert len(board.waiters) == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_cursor_from_the_future_answers_at_once_with_everything(pool, base_url, board):
    await board.put("a", "Ann", "s")
    _, answer = await get_json(pool, f"{base_url}/talks?changesSince={board.store.head + 3_600_000}")
    assert answer["reset"] is True
    assert [t["title"] for t in answer["talks"]] == ["a"]
    assert answer["serverTime"] == board.store.head


@pytest.mark.parametrize("cursor", ["abc", "12.5", "1e9", "", "0x10", "--5", "9" * 40])
@pytest.mark.gen_test(timeout=120)
async def test_a_cursor_that_is_not_an_integer_is_400(pool, base_url, board, cursor):
    response, answer = await get_json(pool, f"{base_url}/talks?changesSince={cursor}")
    assert response.code == 400
    assert "changesSince must be an integer" in answer["error"]
    assert len(board.waiters) == 0


async def open_poll(port, cursor):
    """A raw connection with a long poll sent on it."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /talks?changesSince={cursor} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return writer


@pytest.mark.gen_test(timeout=120)
async def test_pollers_that_disconnect_are_dropped_at_once(http_client, base_url, board, http_port):
    polls = [await open_poll(http_port, board.store.head) for _ in range(500)]
    await until(lambda: len(board.waiters) == 500)
    metrics = (await http_client.fetch(base_url + "/metrics")).body.decode()
    assert metric(metrics, "talkserver_waiting_clients") == 500

    for writer in polls:
        reset_connection(writer)
    await until(lambda: len(board.waiters) == 0)
    metrics = (await http_client.fetch(base_url + "/metrics")).body.decode()
    assert metric(metrics, "talkserver_waiting_clients") == 0
    # Nothing else refers to the dropped handlers either.
    assert board.waiters._parked == {}


@pytest.mark.gen_test(timeout=120)
async def test_pollers_closing_politely_are_dropped_too(http_server, board, http_port):
    writers = [await open_poll(http_port, board.store.head) for _ in range(20)]
    await until(lambda: len(board.waiters) == 20)
    for writer in writers:
        writer.close()
    await until(lambda: len(board.waiters) == 0)


@pytest.mark.gen_test(timeout=120)
async def test_waking_many_waiters_encodes_the_answer_once(pool, base_url, board, monkeypatch):
    cursor = board.store.head
    polls = [asyncio.ensure_future(get_json(pool, f"{base_url}/talks?changesSince={cursor}")) for _ in range(40)]
    await until(lambda: len(board.waiters) == 40)

    encoded = []
    real_encode = feed_module.encode_answer
    monkeypatch.setattr(feed_module, "encode_answer", lambda *a, **k: encoded.append(a) or real_encode(*a, **k))
    await board.put("news", "Ann", "s")
    answers = [answer for _, answer in await asyncio.gather(*polls)]

    assert len(encoded) == 1
    assert all(answer == answers[0] for answer in answers)
    assert [t["title"] for t in answers[0]["talks"]] == ["news"]


@pytest.mark.frozen_clock
@pytest.mark.gen_test(timeout=120)
async def test_a_same_millisecond_burst_is_seen_whole_and_once(pool, base_url, board):
    """Changes landing in the millisecond of an answer are not lost (the book's bug)."""
    follower = Follower(Servers(base_url), pool)
    await follower.start()
    expected = {}
    for round_ in range(5):
        for i in range(10):
            title = f"t{i % 4}"
            await board.put(title, "Ann", f"round {round_} write {i}")
            expected[title] = f"round {round_} write {i}"
        await follower.poll_once()
    assert {t: talk["summary"] for t, talk in follower.talks.items()} == expected
    # Every write left a summary of its own, so no state may arrive twice.
    assert follower.problems == []
    assert follower.answers == 6


@pytest.mark.gen_test(timeout=300)
async def test_many_pollers_with_concurrent_writers_see_every_change_exactly_once(http_server, base_url):
    report = await consistency.run([base_url], writes=300, writers=8, followers=50)
    consistency.check(report)
