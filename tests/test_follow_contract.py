"""The follow contract on every store and every transport, for changes written elsewhere.

A long poll, an event stream (and its Last-Event-ID resume), a WebSocket
(and its resume), a conditional poll and a slow-lane poll must each get every change once, whichever store
holds the board.  On PostgreSQL the changes are written by a second store
on the same database, as another server process would write them, so they
reach this server only through LISTEN/NOTIFY and its catch-up; this
server's own catch-up timer runs once an hour here, so the timer cannot
stand in for a broken NOTIFY path.  On memory and SQLite a server has its
board to itself, and the board writes.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

from talkserver import make_app
from talkserver.stores import Settings
from talkserver.stores.postgres import PostgresStore

from .follower import Follower, Servers
from .harness import WAIT, send, until
from .sse import StreamClient
from .store_kinds import STORE_KINDS, close_store, new_store


@pytest.fixture(params=STORE_KINDS)
def kind(request):
    return request.param


@pytest.fixture
def database(kind, postgres_cluster):
    return postgres_cluster.new_database() if kind == "postgres" else None


@pytest.fixture
def store(kind, database, tmp_path, request, io_loop):
    if kind != "postgres":
        store = new_store(kind, tmp_path, request=request)
        yield store
        close_store(store, request)
        return
    store = io_loop.run_sync(lambda: PostgresStore.open(database, catch_up_every=3600))
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def app(store):
    return make_app(store, poll_timeout=30, max_polls_per_ip=1, slow_lane_interval=0.2)


class Elsewhere:
    """Writes through another PostgreSQL connection (another server, as far as this one knows)."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def put(self, title, presenter, summary):
        await self.store.put(title, presenter, summary)

    async def add_comment(self, title, author, message):
        await self.store.add_comment(title, author, message)

    async def delete(self, title):
        await self.store.delete(title)

    @property
    def head(self) -> int:
        """The stamp of the newest change written."""
        return self.store.head


class Local:
    """Writes through the server's own board."""

    def __init__(self, board) -> None:
        self.board = board
        self.put, self.add_comment, self.delete = board.put, board.add_comment, board.delete

    @property
    def head(self) -> int:
        return self.board.store.head


@pytest.fixture
def writer(kind, database, board, io_loop):
    """Who writes the changes: another process's store on PostgreSQL, else the board itself."""
    if kind != "postgres":
        yield Local(board)
        return
    other = io_loop.run_sync(lambda: PostgresStore.open(database, Settings(follow=False)))
    yield Elsewhere(other)
    io_loop.run_sync(other.close)


NOT_HERE = "a change written elsewhere did not reach this server (LISTEN/NOTIFY, catch-up)"


def titles(answer: dict) -> list[str]:
    return [t["title"] for t in answer["talks"]]


@pytest.mark.gen_test(timeout=120)
async def test_a_waiting_long_poll_gets_a_change_written_elsewhere(port, board, writer):
    cursor = board.store.head
    poll = asyncio.ensure_future(send(port, "GET", f"/talks?changesSince={cursor}"))
    await until(lambda: len(board.waiters) == 1)

    await writer.put("Juggling", "Kim", "Three balls")
    answer = (await poll).json()

    assert titles(answer) == ["Juggling"], "a change written elsewhere did not wake the waiting poll"
    assert answer["serverTime"] > cursor
    assert answer["talks"][0] == {"title": "Juggling", "presenter": "Kim", "summary": "Three balls", "comments": []}


@pytest.mark.gen_test(timeout=120)
async def test_an_event_stream_gets_each_change_written_elsewhere_once_and_in_order(port, board, writer, app):
    client = await StreamClient.open(port)
    first = await client.event()
    await until(lambda: len(app.following["stream"]) == 1)

    await writer.put("a", "Ann", "s")
    await writer.add_comment("a", "Bo", "hi")
    await writer.delete("a")
    events = []

    async def read_until_the_delete():
        while len(events) < 3 and (not events or events[-1].json()["talks"] != [{"title": "a", "deleted": True}]):
            events.append(await client.event())

    try:
        await asyncio.wait_for(read_until_the_delete(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"the stream got {len(events)} events for 3 changes written elsewhere") from None
    finally:
        client.close()

    ids = [int(first.id)] + [int(e.id) for e in events]
    assert ids == sorted(set(ids)), f"event ids {ids} repeat or go back"
    # Each event holds the newest state of "a" at its id: the states come in
    # write order, none twice (two of them may come as one event).
    states = [e.json()["talks"] for e in events]
    written = [
        [{"title": "a", "presenter": "Ann", "summary": "s", "comments": []}],
        [{"title": "a", "presenter": "Ann", "summary": "s", "comments": [{"author": "Bo", "message": "hi"}]}],
        [{"title": "a", "deleted": True}],
    ]
    assert states == [s for s in written if s in states] and states[-1] == written[-1]


@pytest.mark.gen_test(timeout=120)
async def test_a_stream_resumed_with_last_event_id_gets_exactly_what_was_written_elsewhere_meanwhile(port, board, writer, app):
    await writer.put("Seen", "Ada", "s")
    await until(lambda: board.store.get("Seen") is not None, message=NOT_HERE)
    client = await StreamClient.open(port)
    last_id = (await client.event()).id
    client.close()
    await until(lambda: len(app.following["stream"]) == 0)

    await writer.put("Missed 1", "Bob", "s")
    await writer.put("Missed 2", "Bob", "s")
    await until(lambda: board.store.get("Missed 2") is not None, message=NOT_HERE)
    again = await StreamClient.open(port, headers={"Last-Event-ID": last_id})
    first = await again.event()
    again.close()

    assert titles(first.json()) == ["Missed 2", "Missed 1"]
    assert "reset" not in first.json()
    assert first.id == str(board.store.head)


@pytest.mark.gen_test(timeout=120)
async def test_a_websocket_gets_each_change_written_elsewhere_once_and_in_order_and_resumes(port, board, writer, app):
    socket = await websocket_connect(f"ws://127.0.0.1:{port}/talks")
    first = json.loads(await socket.read_message())
    await until(lambda: len(app.following["websocket"]) == 1)

    await writer.put("a", "Ann", "s")
    await writer.add_comment("a", "Bo", "hi")
    await writer.delete("a")
    messages = []

    async def read_until_the_delete():
        while not messages or messages[-1]["talks"] != [{"title": "a", "deleted": True}]:
            messages.append(json.loads(await socket.read_message()))

    try:
        await asyncio.wait_for(read_until_the_delete(), WAIT)
    except asyncio.TimeoutError:
        raise AssertionError(f"the socket got {len(messages)} messages for 3 changes written elsewhere") from None
    socket.close()
    times = [first["serverTime"]] + [m["serverTime"] for m in messages]
    assert times == sorted(set(times)), f"serverTimes {times} repeat or go back"
    states = [m["talks"] for m in messages]
    written = [
        [{"title": "a", "presenter": "Ann", "summary": "s", "comments": []}],
        [{"title": "a", "presenter": "Ann", "summary": "s", "comments": [{"author": "Bo", "message": "hi"}]}],
        [{"title": "a", "deleted": True}],
    ]
    assert states == [s for s in written if s in states] and states[-1] == written[-1]

    # Resumed from the last serverTime: exactly what was written meanwhile.
    await writer.put("Missed", "Cy", "s")
    await until(lambda: board.store.get("Missed") is not None, message=NOT_HERE)
    again = await websocket_connect(f"ws://127.0.0.1:{port}/talks?changesSince={times[-1]}")
    resumed = json.loads(await again.read_message())
    again.close()
    assert titles(resumed) == ["Missed"] and "reset" not in resumed


@pytest.mark.gen_test(timeout=120)
async def test_a_conditional_poll_gets_the_whole_list_when_a_change_is_written_elsewhere(port, board, writer):
    plain = await send(port, "GET", "/talks")
    tag = plain.headers["etag"]
    poll = asyncio.ensure_future(send(port, "GET", "/talks", headers={"If-None-Match": tag, "Prefer": "wait=30"}))
    await until(lambda: len(board.waiters) == 1)

    await writer.put("Knitting", "Bo", "Socks")
    answer = await poll

    assert answer.status == 200, "a change written elsewhere did not end the conditional poll"
    assert answer.headers["etag"] != tag
    assert titles(answer.json()) == ["Knitting"]


@pytest.mark.gen_test(timeout=120)
async def test_a_slow_lane_poll_gets_a_change_written_elsewhere_in_its_round(port, board, writer):
    # The address's one waiting place is taken; the next poll waits in the slow lane.
    cursor = board.store.head
    holder = asyncio.ensure_future(send(port, "GET", f"/talks?changesSince={cursor}"))
    await until(lambda: len(board.waiters) == 1)
    over = asyncio.ensure_future(send(port, "GET", f"/talks?changesSince={cursor}"))
    await until(lambda: len(board.slow_lane) == 1)

    await writer.put("Origami", "Di", "Cranes")
    both = await asyncio.gather(holder, over)

    assert [titles(a.json()) for a in both] == [["Origami"], ["Origami"]], (
        "a change written elsewhere did not reach the waiting and the slow-lane poll")
    assert len(board.slow_lane) == 0


@pytest.mark.gen_test(timeout=180)
async def test_a_follower_sees_every_change_written_elsewhere_exactly_once(http_server, base_url, board, writer):
    client = AsyncHTTPClient(force_instance=True)
    follower = Follower(Servers(base_url), client)
    await follower.start()
    polling = asyncio.ensure_future(follower.run())
    try:
        existing = set()
        for n in range(30):
            # Every write leaves a state of its own (a new summary or comment).
            title = f"t{n % 4}"
            if n % 5 == 4:
                await writer.delete(title)
                existing.discard(title)
            elif n % 3 == 2 and title in existing:
                await writer.add_comment(title, "Bo", f"comment {n}")
            else:
                await writer.put(title, "Ann", f"version {n}")
                existing.add(title)
        await until(lambda: board.store.head == writer.head, message=NOT_HERE)  # this server has applied every write
        final = json.loads((await client.fetch(base_url + "/talks", request_timeout=WAIT)).body)
        await until(lambda: follower.server_time == final["serverTime"])
    finally:
        polling.cancel()
        client.close()

    assert follower.problems == []
    assert follower.talks == {t["title"]: t for t in final["talks"]}
