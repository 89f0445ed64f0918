"""Event streams (server-sent events) on ``GET /talks``, with real sockets against a live server.

Each test opens streams with the raw client in tests/sse.py and checks the
events a browser's EventSource would get.
"""

import asyncio

import pytest

from talkserver import make_app

from .harness import PASSWORD, POLL_TIMEOUT, ServerProcess, basic, metric, metrics_page, send, until, metric_reaches
from .sse import StreamClient

HEARTBEAT = 0.3
STREAM_BUFFER = 64 * 1024
TALK = {"presenter": "Ada", "summary": "Engines"}


@pytest.fixture
def store(each_store):
    """Every test here with an in-process server runs it on each kind of store."""
    return each_store


@pytest.fixture
def settings(request, password_file):
    """Extra make_app() settings, chosen by indirect parametrization: "cap" or "password"."""
    kind = getattr(request, "param", None)
    if kind == "cap":
        return {"max_polls_per_ip": 2}
    if kind == "password":
        return {"password_file": password_file}
    return {}


@pytest.fixture
def app(store, settings):
    return make_app(store, poll_timeout=POLL_TIMEOUT, heartbeat=HEARTBEAT, stream_buffer=STREAM_BUFFER, **settings)


async def open_stream(port, app, path="/talks", **kwargs):
    """A stream that the server has registered (so it gets every later change)."""
    before = len(app.following["stream"])
    client = await StreamClient.open(port, path, **kwargs)
    assert client.status == 200, client.body
    await until(lambda: len(app.following["stream"]) > before)
    return client


def titles(block):
    return [t["title"] for t in block.json()["talks"]]


# -- opening a stream --------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_stream_is_200_text_event_stream_and_its_first_event_holds_the_board(port, board):
    await board.put("One", "Ada", "first")
    await board.put("Two", "Bob", "second")

    client = await StreamClient.open(port)
    first = await client.event()

    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream"
    assert client.headers["cache-control"] == "no-store"
    assert client.headers["x-accel-buffering"] == "no"
    assert first.json() == {"serverTime": board.store.head, "talks": board.store.all_talks()}
    assert first.id == str(board.store.head)
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_stream_begins_with_a_retry_hint_of_one_to_three_seconds(port, board):
    client = await StreamClient.open(port)

    first = await client.block()

    assert 1000 <= first.retry <= 3000
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_the_first_event_after_changes_since_holds_only_the_later_changes(port, board):
    await board.put("Old", "Ada", "s")
    cursor = board.store.head
    await board.put("New", "Bob", "s")

    client = await StreamClient.open(port, f"/talks?changesSince={cursor}")
    first = await client.event()

    assert titles(first) == ["New"]
    assert first.id == str(board.store.head)
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_stream_at_the_newest_cursor_gets_no_event_until_something_changes(port, board, app):
    await board.put("Old", "Ada", "s")
    cursor = board.store.head
    client = await open_stream(port, app, f"/talks?changesSince={cursor}")

    await board.put("Next", "Bob", "s")
    first = await client.event()

    # Had anything been sent for the old cursor, it would have come first.
    assert titles(first) == ["Next"]
    assert first.json()["serverTime"] > cursor
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_malformed_last_event_id_is_answered_400_with_a_json_error(port, board, app):
    client = await StreamClient.open(port, headers={"Last-Event-ID": "yesterday"})

    assert client.status == 400
    assert b'"error"' in client.body
    assert len(app.following["stream"]) == 0
    client.close()


# -- live events ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_each_change_is_one_event_whose_id_is_its_server_time_and_ids_increase(port, board, app):
    client = await open_stream(port, app)
    await client.event()  # the (empty) board

    seen = []
    for title in ("a", "b", "c"):
        await board.put(title, "Ada", "s")
        block = await client.event()
        seen.append((titles(block), int(block.id), block.json()["serverTime"], board.store.head))

    assert [t for t, *_ in seen] == [["a"], ["b"], ["c"]]
    assert all(i == server_time == head for _, i, server_time, head in seen)
    assert seen[0][1] < seen[1][1] < seen[2][1]
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_an_event_carries_the_same_json_bytes_a_poll_gets(port, board, app):
    client = await open_stream(port, app)
    await client.event()
    cursor = board.store.head

    await board.put("Shared", "Ada", "é and ✓")
    block = await client.event()
    poll = await send(port, "GET", f"/talks?changesSince={cursor}")

    assert block.data.encode("utf-8") == poll.body
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_deleted_talk_arrives_as_a_tombstone(port, board, app):
    await board.put("Doomed", "Ada", "s")
    client = await open_stream(port, app)
    await client.event()

    await board.delete("Doomed")
    block = await client.event()

    assert block.json()["talks"] == [{"title": "Doomed", "deleted": True}]
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_cursor_from_the_future_gets_the_whole_board_as_a_reset(port, board):
    await board.put("Kept", "Ada", "s")

    client = await StreamClient.open(port, f"/talks?changesSince={board.store.head + 10_000}")
    first = await client.event()

    assert first.json() == {"serverTime": board.store.head, "talks": board.store.all_talks(), "reset": True}
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_an_idle_stream_gets_a_heartbeat_comment(port, board, app):
    client = await open_stream(port, app)
    await client.event()

    block = await client.block(timeout=10 * HEARTBEAT + 5)

    assert block.comments == ["heartbeat"]
    assert block.data is None
    client.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_stream_over_http_1_0_is_not_chunked_and_carries_the_same_events(port, board, app):
    client = await open_stream(port, app, http10=True)
    await client.event()

    await board.put("Plain", "Ada", "s")
    block = await client.event()

    assert "transfer-encoding" not in client.headers
    assert titles(block) == ["Plain"]
    client.close()


# -- reconnecting ----------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_reconnect_with_last_event_id_gets_exactly_the_missed_changes_beating_a_stale_query(port, board, app):
    await board.put("Seen", "Ada", "s")
    stale = board.store.head
    client = await open_stream(port, app, f"/talks?changesSince={stale}")
    await board.put("Also seen", "Ada", "s")
    last_id = (await client.event()).id
    client.close()
    await until(lambda: len(app.following["stream"]) == 0)
    await board.put("Missed 1", "Bob", "s")
    await board.put("Missed 2", "Bob", "s")

    # EventSource reconnects to its original URL, with the id it saw last.
    again = await StreamClient.open(port, f"/talks?changesSince={stale}", headers={"Last-Event-ID": last_id})
    first = await again.event()

    assert titles(first) == ["Missed 2", "Missed 1"]
    assert first.id == str(board.store.head)
    again.close()


# -- limits, metrics, access -------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_client_that_does_not_read_is_dropped_while_the_others_get_every_change(port, board, app):
    await board.put("Big", "Ada", "s")
    reader = await open_stream(port, app)
    await reader.event()
    before = len(app.following["stream"])
    slow = await StreamClient.open_unread(port)
    await until(lambda: len(app.following["stream"]) == before + 1)

    # Each comment makes the talk's event longer, so the unread bytes pile
    # up fast once the slow client's socket buffers are full.
    message = "x" * 2000
    n = 0
    while metric(board.metrics.render(), "talkserver_streams_dropped_total", 0.0) < 1:
        n += 1
        assert n < 1000, "the slow client was never dropped"
        await board.add_comment("Big", "Bob", f"{n} {message}")
        block = await reader.event()
        assert len(block.json()["talks"][0]["comments"]) == n
    await board.put("After", "Ada", "s")
    after = await reader.event()

    assert titles(after) == ["After"]
    assert len(app.following["stream"]) == 1
    loop = asyncio.get_running_loop()
    while await asyncio.wait_for(loop.sock_recv(slow, 1 << 20), 30):
        pass  # what was sent before the drop, then the end
    slow.close()
    reader.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_dropped_client_catches_up_with_one_coalesced_event(port, board, app):
    client = await open_stream(port, app)
    last_id = (await client.event()).id
    client.close()
    for n in range(5):
        await board.put(f"t{n}", "Ada", "s")
    await board.put("t0", "Ada", "changed again")

    again = await StreamClient.open(port, headers={"Last-Event-ID": last_id})
    first = await again.event()

    assert titles(first) == ["t0", "t4", "t3", "t2", "t1"]
    assert first.json()["talks"][0]["summary"] == "changed again"
    again.close()


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("settings", ["cap"], indirect=True)
async def test_streams_past_the_per_address_cap_are_served_up_to_five_times_it(port, board, app):
    # The cap is 2: streams 3 to 10 from one address are past it, but served.
    now = f"/talks?changesSince={board.store.head}"
    crowd = [await open_stream(port, app, now, source="127.0.0.5") for _ in range(10)]

    refused = await StreamClient.open(port, source="127.0.0.5")
    elsewhere = await StreamClient.open(port, source="127.0.0.6")
    await board.put("Seen by all", "Ada", "s")
    last_events = [await client.event() for client in crowd]

    assert app.limits.polls_held("127.0.0.5") == 10
    assert refused.status == 429
    assert refused.headers["retry-after"] == "5"
    assert b"10 long polls" in refused.body
    assert elsewhere.status == 200
    assert all(titles(event) == ["Seen by all"] for event in last_events)
    for client in (*crowd, refused, elsewhere):
        client.close()


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("settings", ["cap"], indirect=True)
async def test_a_stream_that_ends_gives_its_slot_back(port, board, app):
    first = await open_stream(port, app, source="127.0.0.7")
    second = await open_stream(port, app, source="127.0.0.7")

    first.close()
    await until(lambda: app.limits.polls_held("127.0.0.7") == 1, message=lambda: (
        f"a stream that ended did not give its place back: {app.limits.polls_held('127.0.0.7')} held, not 1"))
    third = await StreamClient.open(port, source="127.0.0.7")

    assert third.status == 200
    second.close()
    third.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_stream_whose_client_leaves_is_forgotten(port, board, app):
    client = await open_stream(port, app)

    client.close()

    await until(lambda: len(app.following["stream"]) == 0)
    await board.put("Nobody listens", "Ada", "s")  # and nothing fails


@pytest.mark.gen_test(timeout=120)
async def test_metrics_count_open_streams_and_events_sent(port, board, app):
    clients = [await open_stream(port, app) for _ in range(3)]
    await board.put("Counted", "Ada", "s")
    for client in clients:
        await client.event()
        await client.event()

    metrics = await metrics_page(port)

    assert metric(metrics, "talkserver_streams_open") == 3
    # Three first events (the board) and the change to each of three.
    assert metric(metrics, "talkserver_stream_events_total") == 6
    assert metric(metrics, "talkserver_streams_dropped_total", 0.0) == 0
    for client in clients:
        client.close()


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("settings", ["password"], indirect=True)
async def test_a_stream_needs_the_password_when_one_is_set(port, board):
    refused = await StreamClient.open(port)
    allowed = await StreamClient.open(port, headers=basic("ada", PASSWORD))
    first = await allowed.event()

    assert refused.status == 401
    assert b'"error"' in refused.body
    assert first.json() == {"serverTime": board.store.head, "talks": []}
    refused.close()
    allowed.close()


# -- the talkserver command ----------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_ends_every_stream_cleanly_and_exits_0():
    with ServerProcess("--db=:memory:") as server:
        clients = [await StreamClient.open(server.port) for _ in range(2)]
        for client in clients:
            await client.event()
        await metric_reaches(server.port, "talkserver_streams_open", 2)

        server.terminate()
        ended = await asyncio.gather(*(client.ended(timeout=30) for client in clients))
        code = await server.stopped()

        assert ended == [True, True]
        assert code == 0
        assert "ended 2 clients on the stream transport" in server.log()


@pytest.mark.gen_test(timeout=120)
async def test_the_heartbeat_option_sets_the_seconds_between_comments():
    with ServerProcess("--db=:memory:", "--heartbeat=0.5") as server:
        client = await StreamClient.open(server.port)
        await client.event()

        beats = [await client.block(timeout=10) for _ in range(3)]

        # Three within the 10 s each may take: not the 15 s default.
        assert [b.comments for b in beats] == [["heartbeat"]] * 3
        client.close()
