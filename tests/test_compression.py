"""Compressed answers: a large board answer goes gzip-compressed to clients that accept it.

Every way a full board leaves the server is asked twice, once accepting
gzip and once not: the decompressed bytes must be the plain answer, with
``Content-Encoding: gzip`` and ``Vary: Accept-Encoding``; a client that
does not accept gzip gets the plain bytes.  The requests are raw HTTP/1.1
keep-alive requests, so the fast path and the bytes-first path
(talkserver.follow.wakeup) answer them as they answer browsers.
"""

import asyncio
import gzip
import json

import pytest

from talkserver import make_app
from talkserver.wire.compression import GZIP_MIN, accepts_gzip

from .harness import POLL_TIMEOUT, WAIT, Answer, send, serve_app, split_answer

GZIP = {"Accept-Encoding": "gzip, deflate, br"}
PLAIN = {"Accept-Encoding": "identity"}


# -- who accepts gzip ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.8", "*", "x-gzip", "GZIP"])
def test_these_accept_encodings_accept_gzip(value):
    assert accepts_gzip(value)


@pytest.mark.parametrize("value", [None, "", "identity", "br", "gzip;q=0", "*, gzip;q=0", "gzip;q=zero", "*;q=0"])
def test_these_accept_encodings_do_not(value):
    assert not accepts_gzip(value)


# -- through HTTP ---------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["fast_polls", "handlers"])
def app(request, store):
    return make_app(store, poll_timeout=POLL_TIMEOUT, fast_polls=request.param)


async def fill(board, count=20):
    """A board whose full answer is well over GZIP_MIN."""
    for i in range(count):
        await board.put(f"talk {i}", "Ada", f"Engines and looms, part {i}. " * 10)


async def keep_alive(port, path, headers=None, after_sent=None):
    """One request on a keep-alive connection, as a browser sends a poll, and its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if after_sent is not None:
            await after_sent()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        status_line, answer_headers, _ = split_answer(head)
        body = await asyncio.wait_for(reader.readexactly(int(answer_headers["content-length"])), WAIT)
    finally:
        writer.close()
    return Answer(int(status_line.split()[1]), answer_headers, body)


def assert_gzip_of(compressed, plain):
    assert compressed.status == plain.status == 200
    assert compressed.headers["content-encoding"] == "gzip"
    assert compressed.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "Accept-Encoding"
    assert len(plain.body) >= GZIP_MIN
    assert gzip.decompress(compressed.body) == plain.body
    assert len(compressed.body) < len(plain.body) / 2


@pytest.mark.gen_test
async def test_a_full_get_talks_is_compressed_for_a_client_that_accepts_gzip(port, board):
    await fill(board)
    compressed = await keep_alive(port, "/talks", GZIP)
    plain = await keep_alive(port, "/talks", PLAIN)
    assert_gzip_of(compressed, plain)
    assert compressed.headers["etag"] == plain.headers["etag"]
    assert plain.body == board.feed.everything()


@pytest.mark.gen_test
async def test_an_answer_sent_the_tornado_way_is_compressed_too(port, board):
    await fill(board)
    # Connection: close takes Tornado's own finish(), not the pre-rendered head.
    compressed = await send(port, "GET", "/talks", headers=GZIP)
    plain = await send(port, "GET", "/talks", headers=PLAIN)
    assert_gzip_of(compressed, plain)


@pytest.mark.gen_test
async def test_a_reset_answer_is_compressed(port, board):
    await fill(board)
    compressed = await keep_alive(port, "/talks?changesSince=0", GZIP)
    plain = await keep_alive(port, "/talks?changesSince=0", PLAIN)
    assert_gzip_of(compressed, plain)
    assert json.loads(plain.body)["reset"] is True


@pytest.mark.gen_test
async def test_a_woken_long_poll_with_a_large_answer_is_compressed(port, board):
    await fill(board)
    cursor = board.store.head
    big = "A summary long enough to be worth compressing. " * 60

    async def change():
        await asyncio.sleep(0.1)
        await board.put("big", "Ada", big)

    compressed = await keep_alive(port, f"/talks?changesSince={cursor}", GZIP, after_sent=change)
    plain = await keep_alive(port, f"/talks?changesSince={cursor}", PLAIN)
    assert_gzip_of(compressed, plain)
    assert [t["title"] for t in json.loads(plain.body)["talks"]] == ["big"]


@pytest.mark.gen_test
async def test_a_woken_conditional_poll_is_compressed(port, board):
    await fill(board)
    tag = f'"{board.store.head}"'

    async def change():
        await asyncio.sleep(0.1)
        await board.put("one more", "Ada", "Looms")

    waiting = {"If-None-Match": tag, "Prefer": "wait=5", **GZIP}
    compressed = await keep_alive(port, "/talks", waiting, after_sent=change)
    plain = await keep_alive(port, "/talks", PLAIN)
    assert_gzip_of(compressed, plain)
    assert compressed.headers["etag"] == plain.headers["etag"] == f'"{board.store.head}"'


@pytest.mark.gen_test
async def test_a_client_refusing_gzip_gets_plain_bytes(port, board):
    await fill(board)
    refusing = await keep_alive(port, "/talks?changesSince=0", {"Accept-Encoding": "gzip;q=0"})
    silent = await keep_alive(port, "/talks?changesSince=0")
    assert "content-encoding" not in refusing.headers and "content-encoding" not in silent.headers
    assert refusing.body == silent.body == board.feed.since(0)


@pytest.mark.gen_test
async def test_a_small_answer_is_sent_as_it_is(port, board):
    await board.put("one", "Ada", "Engines")
    answer = await keep_alive(port, "/talks?changesSince=0", GZIP)
    assert len(answer.body) < GZIP_MIN
    assert "content-encoding" not in answer.headers and "vary" not in answer.headers
    assert json.loads(answer.body)["talks"][0]["title"] == "one"


@pytest.mark.gen_test
async def test_an_answer_is_compressed_once_per_state(board):
    await fill(board)
    feed = board.feed
    first = feed.gzipped(feed.everything())
    assert feed.gzipped(feed.everything()) is first
    await board.put("another", "Ada", "Looms")
    again = feed.gzipped(feed.everything())
    assert again is not first
    assert gzip.decompress(again) == feed.everything()


@pytest.mark.gen_test
async def test_the_bare_array_of_api_etag_is_compressed_too(store):
    app = make_app(store, poll_timeout=POLL_TIMEOUT, api="etag")
    await fill(app.board)
    server, port = serve_app(app)
    try:
        compressed = await keep_alive(port, "/talks", GZIP)
        plain = await keep_alive(port, "/talks", PLAIN)
    finally:
        server.stop()
    assert_gzip_of(compressed, plain)
    assert plain.body == app.board.feed.talk_array()
