"""Woken long polls on raw keep-alive connections: the bytes-first wake path.

Tornado's own HTTP client closes its connection after each request, so
these tests speak HTTP/1.1 over plain sockets, as browsers do: the answer
must be complete and well framed, and the connection must go on serving.
"""

import gc
import json
import logging
import socket

import pytest
from tornado.tcpclient import TCPClient

from .harness import metric, read_answer, send, until


@pytest.fixture
def store(each_store):
    """Every test here with an in-process server runs it on each kind of store."""
    return each_store


async def connect(port):
    return await TCPClient().connect("127.0.0.1", port)


def request(path, version="HTTP/1.1", headers=""):
    return f"GET {path} {version}\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode()


async def park(port, board, cursor, count=1, **kwargs):
    """``count`` connections, each with a poll parked on the server."""
    before = len(board.waiters)
    streams = []
    for _ in range(count):
        stream = await connect(port)
        await stream.write(request(f"/talks?changesSince={cursor}", **kwargs))
        streams.append(stream)
    await until(lambda: len(board.waiters) == before + count)
    return streams


@pytest.mark.gen_test(timeout=120)
async def test_a_woken_poll_gets_a_complete_answer_and_its_connection_serves_on(board, port):
    (stream,) = await park(port, board, board.store.head)

    await board.put("Juggling", "Kim", "Three balls")

    status, headers, body = await read_answer(stream)
    assert status == 200
    assert headers["content-type"] == "application/json; charset=UTF-8"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert "connection" not in headers  # HTTP/1.1 keeps the connection open
    answer = json.loads(body)
    assert answer["serverTime"] == board.store.head
    assert [t["title"] for t in answer["talks"]] == ["Juggling"]

    # The same connection takes the next request, as a browser's would.
    await stream.write(request("/talks"))
    status, _, body = await read_answer(stream)
    assert status == 200 and [t["title"] for t in json.loads(body)["talks"]] == ["Juggling"]
    assert len(board.waiters) == 0
    stream.close()


@pytest.mark.gen_test(timeout=120)
async def test_the_next_poll_on_the_same_connection_waits_and_is_woken_again(board, port):
    (stream,) = await park(port, board, board.store.head)
    await board.put("First", "Kim", "One")
    _, _, body = await read_answer(stream)
    cursor = json.loads(body)["serverTime"]

    await stream.write(request(f"/talks?changesSince={cursor}"))
    await until(lambda: len(board.waiters) == 1)
    await board.add_comment("First", "Lee", "Nice")

    _, _, body = await read_answer(stream)
    talks = json.loads(body)["talks"]
    assert talks == [{"title": "First", "presenter": "Kim", "summary": "One",
                      "comments": [{"author": "Lee", "message": "Nice"}]}]
    stream.close()


@pytest.mark.gen_test(timeout=120)
async def test_many_woken_polls_all_get_the_same_answer(board, port):
    cursor = board.store.head
    streams = await park(port, board, cursor, count=60)

    await board.put("Chess", "Ann", "Openings")

    bodies = {(await read_answer(stream))[2] for stream in streams}
    assert len(bodies) == 1
    assert json.loads(bodies.pop())["talks"][0]["title"] == "Chess"
    assert len(board.waiters) == 0
    for stream in streams:
        stream.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_asking_to_close_gets_connection_close_and_is_closed(board, port):
    (stream,) = await park(port, board, board.store.head, headers="Connection: close\r\n")

    await board.put("Knitting", "Bo", "Socks")

    status, headers, body = await read_answer(stream)
    assert status == 200 and headers["connection"] == "close"
    assert json.loads(body)["talks"][0]["title"] == "Knitting"
    assert await stream.read_until_close() == b""  # and the server hangs up


@pytest.mark.gen_test(timeout=120)
async def test_an_http_1_0_poll_gets_a_whole_answer_and_then_the_close(board, port):
    (stream,) = await park(port, board, board.store.head, version="HTTP/1.0")

    await board.put("Pottery", "Cy", "Clay")

    status, _, body = await read_answer(stream)
    assert status == 200 and json.loads(body)["talks"][0]["title"] == "Pottery"
    assert await stream.read_until_close() == b""  # and the server hangs up


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_that_times_out_gets_an_empty_answer_and_keeps_its_connection(board, port):
    (stream,) = await park(port, board, board.store.head)

    status, _, body = await read_answer(stream)  # after the 1 s poll timeout

    assert status == 200
    assert json.loads(body) == {"serverTime": board.store.head, "talks": []}
    await stream.write(request("/talks"))
    assert (await read_answer(stream))[0] == 200
    stream.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_client_gone_before_the_wake_does_not_stop_the_others(board, port, caplog):
    streams = await park(port, board, board.store.head, count=5)
    # Reset one connection so the server's write to it fails, before the
    # server has noticed the close.
    gone = streams.pop(2)
    gone.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    gone.close()

    with caplog.at_level(logging.ERROR):
        await board.put("Origami", "Di", "Cranes")
        for stream in streams:
            status, _, body = await read_answer(stream)
            assert status == 200 and json.loads(body)["talks"][0]["title"] == "Origami"
    await until(lambda: len(board.waiters) == 0)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.gen_test(timeout=120)
async def test_every_woken_poll_is_logged_at_debug_level_and_counted_once(board, port, caplog):
    streams = await park(port, board, board.store.head, count=3)

    with caplog.at_level(logging.DEBUG, logger="tornado.access"):
        await board.put("Baking", "Ed", "Bread")
        for stream in streams:
            await read_answer(stream)
        await until(lambda: len([r for r in caplog.records if "changesSince" in r.getMessage()]) >= 3)
        # Once more after every woken poll was logged: a fourth line (a poll logged twice) shows here.
        assert (await send(port, "GET", "/talks")).status == 200

    lines = [r.getMessage() for r in caplog.records if "changesSince" in r.getMessage()]
    assert len(lines) == 3 and all(line.startswith("200 GET /talks?changesSince=") for line in lines)
    # The three polls and the plain GET that followed them.
    assert metric(board.metrics.render(), "talkserver_requests_total", code="200") == 4
    assert metric(board.metrics.render(), "talkserver_polls_answered_total", transport="long_poll") == 3


@pytest.mark.gen_test(timeout=120)
async def test_waking_leaves_the_garbage_collector_as_it_was(board, port):
    await park(port, board, board.store.head, count=2)
    assert gc.isenabled()
    await board.put("Gardening", "Flo", "Roses")
    assert gc.isenabled()


@pytest.mark.gen_test(timeout=120)
async def test_a_large_answer_arrives_whole_on_every_connection(board, port):
    await board.put("Long", "Gus", "x" * 4000 + "é" * 500)
    for n in range(39):
        await board.add_comment("Long", "Hal", f"comment {n} " + "y" * 1900)
    streams = await park(port, board, board.store.head, count=3)

    await board.add_comment("Long", "Hal", "the last one")

    for stream in streams:
        status, headers, body = await read_answer(stream)
        talk = json.loads(body)["talks"][0]
        assert status == 200 and int(headers["content-length"]) == len(body) > 64 * 1024
        assert talk["summary"].endswith("é" * 500) and len(talk["comments"]) == 40
        stream.close()
