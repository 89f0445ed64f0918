"""A bounded board: at most --max-talks entries and --max-board-bytes stored bytes.

A write past either bound gets 409 with a message and changes nothing (the
board, the change log, the cursor); tombstones count, and the oldest are
forgotten to make room for a talk; a full board still answers and restarts.
The rule itself (talkserver.follow.bounds.room) is tested alone first.
"""

import asyncio
import gzip
import json
import logging
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from talkserver import make_app
from talkserver.follow.bounds import (
    COMMENT_FRAMING, TALK_FRAMING, TOMBSTONE_FRAMING, BoardFull, Bounds, comment_bytes, entry_bytes, room,
)
from talkserver.stores import MemoryStore
from talkserver.stores.sqlite import SQLiteStore

from .harness import POLL_TIMEOUT, ServerProcess, rss_bytes, send, serve_app, split_answer

MAX_TALKS = 4
MAX_BYTES = 2000


def talk(summary="Engines"):
    return json.dumps({"presenter": "Ada", "summary": summary})


# -- the rule ---------------------------------------------------------------


def test_an_entry_counts_its_texts_in_utf8_and_its_framing():
    comment = {"author": "Bö", "message": "hi"}
    assert entry_bytes("t", {"presenter": "p", "summary": "€", "comments": [comment]}) == (
        1 + 1 + 3 + TALK_FRAMING + (3 + 2 + COMMENT_FRAMING)
    )
    assert entry_bytes("t€", None) == 4 + TOMBSTONE_FRAMING
    assert comment_bytes("a", "b") == 2 + COMMENT_FRAMING


def dead(tombstones):
    return {title: size for title, _stamp, size in tombstones}


def test_a_write_that_fits_needs_no_room():
    assert room(Bounds(2, 100), entries=1, used=50, title="new", old=None, new=50, dead={}, tombstones=[]) == []


def test_a_new_title_past_the_talk_bound_forgets_the_oldest_tombstone():
    tombstones = [("gone", 10, 40), ("later", 20, 40)]
    assert room(
        Bounds(2, 0), entries=2, used=0, title="new", old=None, new=50, dead=dead(tombstones), tombstones=tombstones,
    ) == [("gone", 10)]


def test_tombstones_are_forgotten_until_the_bytes_fit():
    tombstones = [("a", 10, 40), ("b", 20, 40), ("c", 30, 40)]
    assert room(
        Bounds(0, 200), entries=5, used=200, title="t", old=50, new=120, dead=dead(tombstones), tombstones=tombstones,
    ) == [("a", 10), ("b", 20)]


def test_a_title_replacing_its_own_tombstone_is_no_new_entry():
    tombstones = [("t", 5, 40)]
    assert room(
        Bounds(1, 0), entries=1, used=0, title="t", old=40, new=60, dead=dead(tombstones), tombstones=tombstones,
    ) == []


def test_a_board_of_live_talks_refuses_one_more():
    with pytest.raises(BoardFull, match="holds 2 talks, the most it may"):
        room(Bounds(2, 0), entries=2, used=0, title="new", old=None, new=50, dead={}, tombstones=[])


def test_a_write_past_the_bytes_refuses_even_after_every_tombstone():
    with pytest.raises(BoardFull, match="past 100 stored bytes"):
        room(Bounds(0, 100), entries=2, used=90, title="t", old=10, new=200, dead={"x": 40}, tombstones=[("x", 1, 40)])


def test_tombstones_counted_but_not_found_refuse_the_write():
    with pytest.raises(BoardFull, match="holds 2 talks"):
        room(Bounds(2, 0), entries=2, used=0, title="new", old=None, new=50, dead={"gone": 40}, tombstones=[])


def test_zero_is_no_bound():
    assert not Bounds()
    assert room(Bounds(), entries=10**6, used=10**12, title="t", old=None, new=10**9, dead={}, tombstones=[]) == []


def test_a_refusal_reads_no_tombstone():
    def unread():
        raise AssertionError("the tombstones were read")
        yield

    with pytest.raises(BoardFull):
        room(Bounds(2, 0), entries=2, used=0, title="new", old=None, new=50, dead={}, tombstones=unread())


# -- through HTTP, on every store ------------------------------------------------


@pytest.fixture
def store(each_store):
    return each_store


@pytest.fixture
def app(store):
    return make_app(store, poll_timeout=POLL_TIMEOUT, max_talks=MAX_TALKS, max_board_bytes=MAX_BYTES)


async def call(http_client, base_url, method, path, body=None):
    response = await http_client.fetch(
        f"{base_url}{path}", method=method, body=body, raise_error=False, allow_nonstandard_methods=True,
    )
    return response.code, json.loads(response.body) if response.body else None


def snapshot(store):
    """The board, its change log and its cursor."""
    return store.all_talks(), list(store.entries()), store.head, store.pruned_through


async def fill(http_client, base_url, count=MAX_TALKS):
    for i in range(count):
        code, _ = await call(http_client, base_url, "PUT", f"/talks/t{i}", talk())
        assert code == 204


@pytest.mark.gen_test
async def test_a_talk_past_the_talk_bound_gets_409_and_changes_nothing(http_client, base_url, store):
    await fill(http_client, base_url)
    before = snapshot(store)
    code, answer = await call(http_client, base_url, "PUT", "/talks/one%20more", talk())
    assert code == 409
    assert answer == {"error": f"the board is full: it holds {MAX_TALKS} talks, the most it may; delete one first"}
    assert snapshot(store) == before


@pytest.mark.gen_test
async def test_replacing_a_talk_on_a_full_board_is_allowed(http_client, base_url, store):
    await fill(http_client, base_url)
    code, _ = await call(http_client, base_url, "PUT", "/talks/t0", talk("Looms"))
    assert code == 204
    assert store.get("t0")["summary"] == "Looms"


@pytest.mark.gen_test
async def test_a_talk_past_the_byte_bound_gets_409_and_changes_nothing(http_client, base_url, store):
    await fill(http_client, base_url, 2)
    before = snapshot(store)
    code, answer = await call(http_client, base_url, "PUT", "/talks/big", talk("x" * 1900))
    assert code == 409
    assert "past 2000 stored bytes" in answer["error"]
    assert snapshot(store) == before


@pytest.mark.gen_test
async def test_a_comment_past_the_byte_bound_gets_409_and_changes_nothing(http_client, base_url, store):
    await fill(http_client, base_url, 1)
    comment = json.dumps({"author": "Bob", "message": "y" * 800})
    assert (await call(http_client, base_url, "POST", "/talks/t0/comments", comment))[0] == 204
    assert (await call(http_client, base_url, "POST", "/talks/t0/comments", comment))[0] == 204
    before = snapshot(store)
    code, answer = await call(http_client, base_url, "POST", "/talks/t0/comments", comment)
    assert code == 409
    assert "past 2000 stored bytes" in answer["error"]
    assert snapshot(store) == before
    assert len(store.get("t0")["comments"]) == 2


@pytest.mark.gen_test
async def test_a_deleted_talk_makes_room_and_its_tombstone_is_forgotten(http_client, base_url, store):
    await fill(http_client, base_url)
    cursor = store.head
    assert (await call(http_client, base_url, "DELETE", "/talks/t1"))[0] == 204
    assert (await call(http_client, base_url, "PUT", "/talks/new", talk()))[0] == 204
    assert [title for title, _stamp, _talk in store.entries()] == ["t0", "t2", "t3", "new"]
    # The tombstone gone, a cursor from before it can no longer get a diff.
    _, answer = await call(http_client, base_url, "GET", f"/talks?changesSince={cursor}")
    assert answer["reset"] is True
    assert sorted(t["title"] for t in answer["talks"]) == ["new", "t0", "t2", "t3"]


@pytest.mark.gen_test
async def test_a_board_of_churned_talks_never_holds_more_entries_than_its_bound(http_client, base_url, store):
    for i in range(3 * MAX_TALKS):
        assert (await call(http_client, base_url, "PUT", f"/talks/c{i}", talk()))[0] == 204
        assert (await call(http_client, base_url, "DELETE", f"/talks/c{i}"))[0] == 204
        assert len(list(store.entries())) <= MAX_TALKS
    assert app_bytes(store) <= MAX_BYTES


def app_bytes(store):
    return sum(entry_bytes(title, talk) for title, _stamp, talk in store.entries())


@pytest.mark.gen_test
async def test_the_board_bytes_gauge_counts_what_the_bound_counts(http_client, base_url, store, app):
    await fill(http_client, base_url, 2)
    await call(http_client, base_url, "DELETE", "/talks/t0")
    response = await http_client.fetch(f"{base_url}/metrics")
    assert f"talkserver_board_bytes {app_bytes(store)}" in response.body.decode()


# -- restart and memory -------------------------------------------------------


@pytest.mark.gen_test
async def test_a_full_sqlite_board_restarts_full_and_still_answers(http_client, tmp_path):
    path = str(tmp_path / "full.db")
    store = SQLiteStore(path)
    server, port = serve_app(make_app(store, max_talks=MAX_TALKS))
    base = f"http://127.0.0.1:{port}"
    try:
        await fill(http_client, base)
    finally:
        server.stop()
        await store.close()
    store = SQLiteStore(path)
    server, port = serve_app(make_app(store, max_talks=MAX_TALKS))
    base = f"http://127.0.0.1:{port}"
    try:
        code, answer = await call(http_client, base, "PUT", "/talks/after%20restart", talk())
        assert code == 409 and "the board is full" in answer["error"]
        _, board = await call(http_client, base, "GET", "/talks")
        assert sorted(t["title"] for t in board["talks"]) == [f"t{i}" for i in range(MAX_TALKS)]
    finally:
        server.stop()
        await store.close()


@pytest.mark.gen_test(timeout=60)
async def test_memory_stays_proportional_to_the_bound(http_client, caplog):
    """Once the board is full, writing on (new talks, deletes, refusals) grows the heap no more."""
    # No log records: the test's log capture would keep every one.
    caplog.set_level(logging.CRITICAL)
    store = MemoryStore()
    server, port = serve_app(make_app(store, max_talks=20))
    base = f"http://127.0.0.1:{port}"
    summary = "s" * 4000

    async def write(start, count):
        for i in range(start, start + count):
            await call(http_client, base, "PUT", f"/talks/m{i}", talk(summary))
            if i % 3 == 0:
                await call(http_client, base, "DELETE", f"/talks/m{i}")

    try:
        await write(0, 60)  # full, and every lazy cache of the server warmed
        tracemalloc.start()
        try:
            await write(60, 90)
            full = tracemalloc.get_traced_memory()[0]
            await write(150, 90)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    finally:
        server.stop()
    # Unbounded, the second round would have added 60 talks of 4 kB.
    assert after - full < 100_000
    assert len(list(store.entries())) == 20


# -- as the done-when: a board written far past its bound, as fast as one address can --


async def put_many(port, titles, body, connections=8):
    """PUT every title over ``connections`` keep-alive connections at once; the statuses and the first refusal."""
    statuses, refusals = [], []
    pending = iter(titles)

    async def writer_loop():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for title in pending:
                head = f"PUT /talks/{title} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
                writer.write(head.encode() + body)
                status_line, headers, _ = split_answer(await reader.readuntil(b"\r\n\r\n"))
                answer = await reader.readexactly(int(headers.get("content-length", "0")))
                statuses.append(int(status_line.split()[1]))
                if statuses[-1] != 204:
                    refusals.append(json.loads(answer))
        finally:
            writer.close()

    await asyncio.gather(*(writer_loop() for _ in range(connections)))
    return statuses, refusals


@pytest.mark.gen_test(timeout=120)
async def test_a_board_written_far_past_its_bound_stops_there_and_its_full_answer_is_compressed():
    summary = " ".join(f"word{i % 97} and some prose" for i in range(200))[:4000]
    body = json.dumps({"presenter": "Ada", "summary": summary}).encode()
    with ServerProcess("--max-talks=300", "--logging=error") as server:
        statuses, _ = await put_many(server.port, [f"t{i}" for i in range(300)], body)
        assert statuses == [204] * 300
        full = rss_bytes(server.process.pid)
        statuses, refusals = await put_many(server.port, [f"more{i}" for i in range(1200)], body)
        grown = rss_bytes(server.process.pid) - full
        compressed = await send(server.port, "GET", "/talks", headers={"Accept-Encoding": "gzip"})
        plain = await send(server.port, "GET", "/talks")
    assert statuses == [409] * 1200
    assert refusals[0] == {"error": "the board is full: it holds 300 talks, the most it may; delete one first"}
    # Stored, the 1,200 refused talks would have taken 5 MB more.
    assert grown < 1_500_000
    assert len(json.loads(plain.body)["talks"]) == 300
    assert compressed.headers["content-encoding"] == "gzip"
    assert gzip.decompress(compressed.body) == plain.body
    assert len(compressed.body) < len(plain.body) / 3


def test_the_benchmark_of_docs_benchmarks_md_runs_and_finds_the_bound():
    """benchmarks/bounded_board.py, at a small size: the command docs/benchmarks.md gives."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bounded_board.py"
    done = subprocess.run(
        [sys.executable, str(script), "--talks", "60", "--gets", "2", "--levels=1", "--followers=20",
         "--server-option=--max-talks=50"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # The fan-out's own talk, written on the empty board, holds one place.
    assert "49 answered 204, 11 answered 409" in done.stdout
    fan_out = r"one change to 20 waiting long polls.*: \d+ ms on the empty board, \d+ ms on the full one"
    assert re.search(fan_out, done.stdout)
    assert '409 {"error": "the board is full: it holds 50 talks, the most it may; delete one first"}' in done.stdout
    assert re.search(r"GET /talks gzip: +[0-9.]+ MB \([0-9.]+x smaller\)", done.stdout)
    assert re.search(r"restart on the full board: [0-9.]+ s", done.stdout)
    assert "a new talk after the restart: 409" in done.stdout
