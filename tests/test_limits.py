"""Abuse limits: each one lets the allowed through and refuses the rest with a message.

In-process tests set low limits through make_app(); the subprocess tests run
the ``talkserver`` command with its defaults, as a new user would.
"""

import asyncio
import json
import resource
import socket

import pytest

from talkserver import make_app
from talkserver.follow.slowlane import SlowLane
from talkserver.access.limits import Limits, TokenBucket

from .harness import POLL_TIMEOUT, WAIT, FrozenClock, ServerProcess, send, until, metric_reaches

TALK = json.dumps({"presenter": "Ada", "summary": "Engines"})
COMMENT = json.dumps({"author": "Bob", "message": "Nice"})


@pytest.fixture
def store(each_store):
    """Every test here with an in-process server runs it on each kind of store."""
    return each_store


@pytest.fixture
def limits():
    """Low limits, so both sides of each can be reached quickly; a test may parametrize its own."""
    return dict(
        max_polls_per_ip=3, write_rate=0.5, write_burst=2, max_comments=2, limit_local_writes=True,
        slow_lane_interval=0.5,
    )


@pytest.fixture
def write_clock():
    """The seconds the write-rate buckets fill by: they move only when a test moves them."""
    return FrozenClock(0)


@pytest.fixture
def app(store, limits, write_clock):
    app = make_app(store, poll_timeout=POLL_TIMEOUT, **limits)
    # make_app() has no clock setting; on the test's clock a refusal never
    # depends on how fast two requests follow each other.
    app.limits._clock = write_clock
    return app


def poll(http_client, base_url, cursor):
    return http_client.fetch(f"{base_url}/talks?changesSince={cursor}", raise_error=False, request_timeout=WAIT)


# -- long polls per address -------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_past_the_cap_waits_in_the_slow_lane_and_gets_the_change_in_its_round(http_client, base_url, board):
    # Given three polls waiting, the cap of this address
    cursor = board.store.head
    waiting = [poll(http_client, base_url, cursor) for _ in range(3)]
    await until(lambda: len(board.waiters) == 3)

    # When a fourth arrives and then a change is made
    over = poll(http_client, base_url, cursor)
    await until(lambda: len(board.slow_lane) == 1)
    await board.put("Kept", "Ada", "still served")

    # Then the three are woken at once and the fourth gets the change in the lane's round
    for answer in await asyncio.gather(*waiting):
        assert [t["title"] for t in json.loads(answer.body)["talks"]] == ["Kept"]
    answer = await over
    assert answer.code == 200
    assert [t["title"] for t in json.loads(answer.body)["talks"]] == ["Kept"]
    assert len(board.slow_lane) == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_slow_lane_poll_with_nothing_new_gets_an_empty_answer_after_its_round(http_client, base_url, board):
    cursor = board.store.head
    waiting = [poll(http_client, base_url, cursor) for _ in range(3)]
    await until(lambda: len(board.waiters) == 3)

    answer = await poll(http_client, base_url, cursor)

    assert answer.code == 200
    assert json.loads(answer.body) == {"serverTime": cursor, "talks": []}
    assert len(board.waiters) == 3
    await board.put("End", "Ada", "s")
    await asyncio.gather(*waiting)


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("limits", [dict(max_polls_per_ip=1, slow_lane_interval=0.2)])
async def test_a_client_over_the_cap_that_polls_again_at_once_gets_one_answer_a_round(limits, http_server, http_port, board, monkeypatch):
    # Given the address's one waiting place taken, and the slow lane's rounds counted
    rounds = []
    answer_round = SlowLane._answer_round
    monkeypatch.setattr(SlowLane, "_answer_round", lambda lane: rounds.append(len(lane)) or answer_round(lane))
    cursor = board.store.head
    path = f"/talks?changesSince={cursor}"
    holder = asyncio.ensure_future(send(http_port, "GET", path))
    await until(lambda: len(board.waiters) == 1)

    # When a client like the book's polls again as soon as it has an answer, five times
    answered_in_round = []
    for _ in range(5):
        answer = await send(http_port, "GET", path)
        assert answer.json() == {"serverTime": cursor, "talks": []}
        answered_in_round.append(len(rounds))

    # Then each answer came from a round of its own, holding that one poll: not a busy loop
    assert answered_in_round == sorted(set(answered_in_round)), f"answers in rounds {answered_in_round}"
    assert rounds[-1] == 1 and len(rounds) == answered_in_round[-1]
    await board.put("End", "Ada", "s")
    await holder


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("limits", [dict(max_polls_per_ip=3, slow_lane_interval=30)])
async def test_a_poll_past_five_times_the_cap_gets_429_with_retry_after(limits, http_server, http_port, board, app):
    cursor = board.store.head
    path = f"/talks?changesSince={cursor}"
    held = [asyncio.ensure_future(send(http_port, "GET", path)) for _ in range(15)]
    await until(lambda: app.limits.polls_held("127.0.0.1") == 15)

    refused = await send(http_port, "GET", path)

    assert refused.status == 429
    assert refused.headers["retry-after"] == "5"
    assert "15 long polls" in refused.json()["error"]
    await board.put("End", "Ada", "s")
    board.slow_lane.deliver_to_all(board.feed.timeout_answer())
    assert {a.status for a in await asyncio.gather(*held)} == {200}


@pytest.mark.gen_test(timeout=120)
async def test_answered_polls_give_their_place_back(http_client, base_url, board, app):
    for _ in range(2):
        cursor = board.store.head
        waiting = [poll(http_client, base_url, cursor) for _ in range(3)]
        await until(lambda: len(board.waiters) == 3, message=lambda: (
            f"only {len(board.waiters)} of 3 polls wait: answered polls did not give their places back"
            f" ({app.limits.polls_held('127.0.0.1')} held)"))
        await board.put("Again", "Ada", "s")
        assert [a.code for a in await asyncio.gather(*waiting)] == [200, 200, 200]
    assert app.limits.polls_held("127.0.0.1") == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_whose_client_went_away_gives_its_place_back(http_server, http_port, board, app):
    port = http_port
    request = f"GET /talks?changesSince={board.store.head} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    connections = []
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        connections.append(writer)
    await until(lambda: app.limits.polls_held("127.0.0.1") == 3)

    for writer in connections:
        writer.close()

    await until(lambda: app.limits.polls_held("127.0.0.1") == 0, message=lambda: (
        f"polls whose clients left still hold {app.limits.polls_held('127.0.0.1')} places"))
    assert len(board.waiters) == 0


# -- write rate per address -------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_writes_past_the_burst_get_429_and_change_nothing(http_client, base_url, board):
    first = [
        await http_client.fetch(f"{base_url}/talks/T{i}", method="PUT", body=TALK, raise_error=False)
        for i in range(2)
    ]
    refused = await http_client.fetch(f"{base_url}/talks/T2", method="PUT", body=TALK, raise_error=False)

    assert [a.code for a in first] == [204, 204]
    assert refused.code == 429
    assert refused.headers["Retry-After"] == "2"  # one token at 0.5 per second
    assert "too many writes" in json.loads(refused.body)["error"]
    assert board.store.get("T2") is None
    assert sorted(t["title"] for t in board.store.all_talks()) == ["T0", "T1"]


@pytest.mark.gen_test(timeout=120)
async def test_reads_are_not_rate_limited(http_client, base_url, board):
    for _ in range(2):
        await http_client.fetch(f"{base_url}/talks/T", method="PUT", body=TALK)
    answers = [await http_client.fetch(f"{base_url}/talks/T", raise_error=False) for _ in range(20)]
    assert {a.code for a in answers} == {200}
    assert all(json.loads(a.body) == board.store.get("T") for a in answers)


@pytest.mark.parametrize("limits", [dict(write_rate=2, write_burst=1, limit_local_writes=True)])
@pytest.mark.gen_test(timeout=120)
async def test_the_write_rate_refills_over_time(limits, http_client, base_url, board, write_clock):
    first = await http_client.fetch(f"{base_url}/talks/T0", method="PUT", body=TALK, raise_error=False)
    refused = await http_client.fetch(f"{base_url}/talks/T1", method="PUT", body=TALK, raise_error=False)
    assert (first.code, refused.code) == (204, 429)

    write_clock.now += 0.5  # 2 writes per second: a token is back after 0.5 s

    again = await http_client.fetch(f"{base_url}/talks/T1", method="PUT", body=TALK, raise_error=False)
    assert again.code == 204
    assert board.store.get("T1")["presenter"] == "Ada"


def test_a_token_bucket_allows_the_burst_then_the_rate():
    bucket = TokenBucket(burst=2, now=0.0)
    assert [bucket.take(rate=4, burst=2, now=0.0) for _ in range(3)] == [0, 0, 0.25]
    assert bucket.take(rate=4, burst=2, now=0.25) == 0
    assert bucket.take(rate=4, burst=2, now=10.0) == 0  # refilled, but never past the burst
    assert bucket.take(rate=4, burst=2, now=10.0) == 0
    assert bucket.take(rate=4, burst=2, now=10.0) == 0.25


def test_a_clock_going_back_does_not_empty_the_bucket():
    now = [100.0]
    limits = Limits(write_rate=1, write_burst=2, clock=lambda: now[0])
    assert limits.write_wait("a") == 0
    now[0] = 50.0
    assert limits.write_wait("a") == 0
    assert limits.write_wait("a") == 1


def test_retry_after_is_whole_seconds_rounded_up():
    now = [0.0]
    limits = Limits(write_rate=0.4, write_burst=1, clock=lambda: now[0])
    assert limits.write_wait("a") == 0
    assert limits.write_wait("a") == 3  # 2.5 s until the next token


def test_clients_on_this_machine_are_not_write_limited_unless_asked():
    limits = Limits(write_rate=1, write_burst=1, clock=lambda: 0.0)
    assert [limits.write_wait(a) for a in ["127.0.0.1", "127.0.0.1", "127.9.8.7", "::1", "::1"]] == [0] * 5
    assert [limits.write_wait("192.0.2.7"), limits.write_wait("192.0.2.7")] == [0, 1]
    strict = Limits(write_rate=1, write_burst=1, limit_local_writes=True, clock=lambda: 0.0)
    assert [strict.write_wait("127.0.0.1"), strict.write_wait("127.0.0.1")] == [0, 1]


@pytest.mark.parametrize("limits", [dict(write_rate=0.5, write_burst=2)])
@pytest.mark.gen_test(timeout=120)
async def test_a_local_script_can_write_faster_than_the_write_rate(limits, http_client, base_url, board):
    for n in range(10):
        response = await http_client.fetch(f"{base_url}/talks/t{n}", method="PUT", body=TALK, raise_error=False)
        assert response.code == 204
    assert len(board.store.all_talks()) == 10


def test_each_address_has_its_own_bucket():
    limits = Limits(write_rate=1, write_burst=1, clock=lambda: 0.0)
    assert [limits.write_wait("10.0.0.1"), limits.write_wait("10.0.0.1")] == [0, 1]
    assert limits.write_wait("10.0.0.2") == 0


# -- comments per talk ------------------------------------------------------


@pytest.mark.parametrize("limits", [dict(max_comments=2)])
@pytest.mark.gen_test(timeout=120)
async def test_a_comment_past_the_cap_gets_409_and_changes_nothing(limits, http_client, base_url, board):
    await board.put("T", "Ada", "s")
    url = f"{base_url}/talks/T/comments"
    first = [await http_client.fetch(url, method="POST", body=COMMENT, raise_error=False) for _ in range(2)]
    refused = await http_client.fetch(url, method="POST", body=COMMENT, raise_error=False)

    assert [a.code for a in first] == [204, 204]
    assert refused.code == 409
    assert "already has 2 comments" in json.loads(refused.body)["error"]
    assert len(board.store.get("T")["comments"]) == 2


# -- limits are off in make_app() unless asked for ---------------------------


@pytest.mark.parametrize("limits", [{}])
@pytest.mark.gen_test(timeout=120)
async def test_make_app_without_limits_lets_one_address_write_and_poll_freely(limits, http_client, base_url, board):
    codes = [
        (await http_client.fetch(f"{base_url}/talks/T{i}", method="PUT", body=TALK, raise_error=False)).code
        for i in range(60)
    ]
    codes += [
        (await http_client.fetch(f"{base_url}/talks/T0/comments", method="POST", body=COMMENT)).code
        for i in range(10)
    ]
    polls = [poll(http_client, base_url, board.store.head) for _ in range(8)]
    await until(lambda: len(board.waiters) == 8)
    await board.put("Wake", "Ada", "s")

    assert codes == [204] * 70
    assert len(board.store.get("T0")["comments"]) == 10
    assert {a.code for a in await asyncio.gather(*polls)} == {200}


# -- the talkserver command, as a new user runs it ---------------------------


async def head_of(port):
    return (await send(port, "GET", "/talks")).json()["serverTime"]


@pytest.mark.gen_test(timeout=120)
async def test_300_polls_from_one_address_all_see_a_change_and_other_addresses_are_still_served():
    with ServerProcess("--poll-timeout=60") as server:
        await three_hundred_polls_from_one_address(server)
        assert server.stop() == 0


async def three_hundred_polls_from_one_address(server):
    # Given 300 pages behind one address, 100 over the default cap of 200
    cursor = await head_of(server.port)
    polls = [asyncio.ensure_future(send(server.port, "GET", f"/talks?changesSince={cursor}", timeout=60)) for _ in range(300)]
    await metric_reaches(server.port, "talkserver_slow_lane_clients", 100)

    # Another address: its reads and polls are served as usual.
    other = await send(server.port, "GET", "/talks", source="127.0.0.2")
    own_poll = asyncio.ensure_future(send(server.port, "GET", f"/talks?changesSince={cursor}", source="127.0.0.2"))
    assert other.status == 200

    # When a change is made
    write = await send(server.port, "PUT", "/talks/Wake", TALK, source="127.0.0.2")
    assert write.status == 204

    # Then every page gets it: the 200 at once, the 100 in the slow lane's round
    answered = await asyncio.gather(*polls, own_poll)
    assert {a.status for a in answered} == {200}
    assert all([t["title"] for t in a.json()["talks"]] == ["Wake"] for a in answered)


@pytest.mark.gen_test(timeout=120)
async def test_2000_idle_connections_do_not_stop_the_server_and_are_closed_after_the_timeout():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    with ServerProcess("--idle-timeout=2") as server:
        idle = []
        try:
            for _ in range(2000):
                s = socket.create_connection(("127.0.0.1", server.port))
                s.sendall(b"GET /talks HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
                idle.append(s)

            answer = await send(server.port, "GET", "/talks")
            assert answer.status == 200
            assert answer.json()["talks"] == []

            # Each is closed once its 2 s are up: wait for that, however long the machine takes.
            loop = asyncio.get_running_loop()
            for s in idle:
                s.setblocking(False)
                assert await asyncio.wait_for(loop.sock_recv(s, 1), WAIT) == b"", "an idle connection was left open"
        finally:
            for s in idle:
                s.close()
        assert server.stop() == 0


@pytest.mark.gen_test(timeout=120)
async def test_without_xheaders_the_proxy_headers_are_ignored():
    with ServerProcess("--write-rate=0.01", "--write-burst=1", "--limit-local-writes") as server:
        one = await send(server.port, "PUT", "/talks/A", TALK, {"X-Real-Ip": "10.0.0.1"})
        two = await send(server.port, "PUT", "/talks/B", TALK, {"X-Real-Ip": "10.0.0.2"})
        assert (one.status, two.status) == (204, 429)
        assert server.stop() == 0


@pytest.mark.gen_test(timeout=120)
async def test_with_xheaders_each_client_behind_the_proxy_has_its_own_limit():
    with ServerProcess("--xheaders", "--write-rate=0.01", "--write-burst=1", "--limit-local-writes") as server:
        one = await send(server.port, "PUT", "/talks/A", TALK, {"X-Real-Ip": "10.0.0.1"})
        again = await send(server.port, "PUT", "/talks/A", TALK, {"X-Real-Ip": "10.0.0.1"})
        two = await send(server.port, "PUT", "/talks/B", TALK, {"X-Real-Ip": "10.0.0.2"})
        assert (one.status, again.status, two.status) == (204, 429, 204)
        assert server.stop() == 0
