"""WebSocket: GET /talks upgraded, one text frame per poll answer (docs/protocol.md).

A real client (Tornado's ``websocket_connect``) for what a well-behaved
client sees, on every store; raw frames over a socket for what a
misbehaving one sends (data frames, oversized or unmasked frames, pings
left unanswered, a client that never reads).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from talkserver import make_app
from talkserver.operation.shutdown import drain

from .harness import WAIT, basic, metric, send, until, write_passwords

READ = 10


@pytest.fixture
def store(each_store):
    """Every test that names the store, the board or the app runs on every store."""
    return each_store


@pytest.fixture
def settings():
    return {}


@pytest.fixture
def app(store, settings):
    return make_app(store, poll_timeout=30, **settings)


def url(port: int, query: str = "") -> str:
    return f"ws://127.0.0.1:{port}/talks{query}"


async def message(socket) -> dict:
    text = await asyncio.wait_for(socket.read_message(), READ)
    assert text is not None, f"the socket closed ({socket.close_code})"
    return json.loads(text)


async def board_now(port: int) -> dict:
    return (await send(port, "GET", "/talks")).json()


def sockets_open(app) -> int:
    return len(app.following["websocket"])


# -- raw frames, for the clients that misbehave ------------------------------------------


async def raw_handshake(port: int, query: str = "", receive_buffer: int | None = None, **headers: str):
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET /talks{query} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ)
    return reader, writer, head


def client_frame(opcode: int, payload: bytes, masked: bool = True) -> bytes:
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, (0x80 if masked else 0) | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, (0x80 if masked else 0) | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, (0x80 if masked else 0) | 127, size)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader) -> tuple[int, bytes]:
    first, second = await asyncio.wait_for(reader.readexactly(2), READ)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first & 0x0F, await asyncio.wait_for(reader.readexactly(size), READ)


async def close_code_after(reader) -> int:
    """Read frames until the server's close frame; its status code."""
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0]


# -- the protocol, on every store ------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_the_first_message_is_the_board_as_a_poll_would_answer_it(port, board):
    await board.put("Unicycling", "Ann", "One wheel")
    socket = await websocket_connect(url(port))
    first = await message(socket)
    socket.close()

    assert first == await board_now(port)
    assert first["serverTime"] == board.store.head


@pytest.mark.gen_test(timeout=60)
async def test_each_change_comes_once_and_in_order(port, board, app):
    socket = await websocket_connect(url(port))
    await message(socket)
    await until(lambda: sockets_open(app) == 1)

    await board.put("a", "Ann", "s")
    await board.add_comment("a", "Bo", "hi")
    await board.delete("a")
    messages = [await message(socket) for _ in range(3)]
    socket.close()

    assert [m["talks"] for m in messages] == [
        [{"title": "a", "presenter": "Ann", "summary": "s", "comments": []}],
        [{"title": "a", "presenter": "Ann", "summary": "s", "comments": [{"author": "Bo", "message": "hi"}]}],
        [{"title": "a", "deleted": True}],
    ]
    times = [m["serverTime"] for m in messages]
    assert times == sorted(set(times)) and times[-1] == board.store.head


@pytest.mark.gen_test(timeout=60)
async def test_a_reconnect_with_the_last_server_time_misses_nothing_and_sees_nothing_twice(port, board, app):
    await board.put("Seen", "Ann", "s")
    socket = await websocket_connect(url(port))
    last = (await message(socket))["serverTime"]
    socket.close()
    await until(lambda: sockets_open(app) == 0)

    await board.put("Missed 1", "Bo", "s")
    await board.put("Missed 2", "Bo", "s")
    again = await websocket_connect(url(port, f"?changesSince={last}"))
    first = await message(again)
    await board.put("Live", "Cy", "s")
    live = await message(again)
    again.close()

    assert [t["title"] for t in first["talks"]] == ["Missed 2", "Missed 1"]
    assert "reset" not in first
    assert [t["title"] for t in live["talks"]] == ["Live"]


@pytest.mark.gen_test(timeout=60)
async def test_a_cursor_with_nothing_new_gets_an_empty_first_message_holding_it(port, board):
    await board.put("Old", "Ann", "s")
    head = board.store.head
    socket = await websocket_connect(url(port, f"?changesSince={head}"))
    first = await message(socket)
    socket.close()

    assert first == {"serverTime": head, "talks": []}


@pytest.mark.gen_test(timeout=60)
async def test_a_cursor_that_cannot_be_answered_with_a_diff_gets_a_reset(port, board):
    await board.put("Kept", "Ann", "s")
    future = board.store.head + 10**9
    socket = await websocket_connect(url(port, f"?changesSince={future}"))
    first = await message(socket)
    socket.close()

    assert first["reset"] is True
    assert first["talks"] == (await board_now(port))["talks"]


@pytest.mark.gen_test(timeout=60)
async def test_a_bad_cursor_is_refused_before_the_upgrade(port, board):
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(url(port, "?changesSince=yesterday"))
    assert refused.value.code == 400
    assert sockets_open_count(board) == 0


def sockets_open_count(board) -> float:
    return metric(board.metrics.render(), "talkserver_websockets_open")


# -- the same rules as every transport -------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_handshake_from_another_origin_is_refused_and_our_own_origin_is_not(port, board):
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(HTTPRequest(url(port), headers={"Origin": "http://evil.example"}))
    ours = await websocket_connect(HTTPRequest(url(port), headers={"Origin": f"http://127.0.0.1:{port}"}))
    first = await message(ours)
    ours.close()

    assert refused.value.code == 403
    assert b"another origin" in refused.value.response.body
    assert first["serverTime"] == board.store.head


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("settings", [{"allowed_hosts": ["localhost", "127.0.0.1"]}])
async def test_a_handshake_naming_another_host_is_refused_by_the_guard(port, app):
    reader, writer, head = await raw_handshake(port, Host="evil.example")
    writer.close()

    assert head.startswith(b"HTTP/1.1 400 ")
    assert sockets_open(app) == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_password_protected_server_needs_basic_credentials_on_the_upgrade(port, tmp_path, store):
    from .harness import serve_app

    app = make_app(store, password_file=write_passwords(tmp_path / "users", {"ada": "secret"}))
    server, other = serve_app(app)
    try:
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(url(other))
        socket = await websocket_connect(HTTPRequest(url(other), headers=basic("ada", "secret")))
        first = await message(socket)
        socket.close()
    finally:
        server.stop()

    assert refused.value.code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Basic ")
    assert "talks" in first


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("settings", [{"max_polls_per_ip": 1}])
async def test_sockets_count_against_the_address_cap_with_polls_and_are_refused_past_it(port, app):
    sockets = [await websocket_connect(url(port)) for _ in range(5)]  # the cap, and the slow lane's share
    for each in sockets:
        await message(each)
    assert app.limits.polls_held("127.0.0.1") == 5

    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(url(port))
    poll = await send(port, "GET", f"/talks?changesSince={app.board.store.head}")
    for each in sockets:
        each.close()

    assert refused.value.code == 429
    assert poll.status == 429
    await until(lambda: app.limits.polls_held("127.0.0.1") == 0)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("data, code", [
    (client_frame(0x1, b"x" * 5000), 1009),
    (client_frame(0x1, b"hello"), 1003),
    (client_frame(0x2, b"\x00\x01"), 1003),
    (client_frame(0x9, b"ping", masked=False), 1002),
], ids=["oversized text", "text", "binary", "unmasked"])
async def test_what_a_client_may_not_send_closes_its_socket_with_a_code(port, app, data, code):
    reader, writer, head = await raw_handshake(port)
    assert head.startswith(b"HTTP/1.1 101 ")
    await read_frame(reader)  # the board
    writer.write(data)

    assert await close_code_after(reader) == code
    await until(lambda: sockets_open(app) == 0)
    assert app.limits.polls_held("127.0.0.1") == 0
    writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_ping_split_across_writes_is_answered_with_a_pong_of_its_payload(port):
    reader, writer, _ = await raw_handshake(port)
    await read_frame(reader)
    ping = client_frame(0x9, b"are you there")
    for piece in (ping[:1], ping[1:5], ping[5:]):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)

    assert await read_frame(reader) == (0xA, b"are you there")
    writer.close()


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("settings", [{"heartbeat": 0.2}])
async def test_a_client_that_answers_no_ping_is_closed_and_one_that_answers_stays(port, app):
    answering = await websocket_connect(url(port))  # Tornado's client answers pings
    await message(answering)
    reader, writer, _ = await raw_handshake(port)  # this one reads but never answers
    await read_frame(reader)
    await until(lambda: sockets_open(app) == 2)

    pings = 0
    try:
        while (await read_frame(reader))[0] == 0x9:
            pings += 1
    except asyncio.IncompleteReadError:
        pass  # the connection was closed
    await asyncio.sleep(0.5)  # more beats: the answering one must stay

    assert pings == 2, f"closed after {pings} unanswered pings, not after two intervals"
    assert sockets_open(app) == 1
    assert answering.close_code is None
    answering.close()
    writer.close()


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("settings", [{"stream_buffer": 64 * 1024, "heartbeat": 0}])
async def test_a_client_that_leaves_too_much_unread_is_closed_and_the_others_miss_nothing(port, app, board):
    reader, writer, _ = await raw_handshake(port, receive_buffer=4096)  # never reads after this
    listener = await websocket_connect(url(port), max_message_size=64 * 1024 * 1024)
    await message(listener)
    await until(lambda: sockets_open(app) == 2)

    received = []
    for n in range(3000):
        await board.put(f"talk {n}", "Ann", "x" * 4000)
        received.append(await message(listener))
        if sockets_open(app) == 1:
            break

    assert sockets_open(app) == 1, "the socket that never reads is still open"
    assert metric(board.metrics.render(), "talkserver_websockets_dropped_total") == 1
    assert [m["talks"][0]["title"] for m in received] == [f"talk {n}" for n in range(len(received))]
    listener.close()
    writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_drain_closes_every_socket_with_going_away(http_server, port, app):
    reader, writer, _ = await raw_handshake(port)
    await read_frame(reader)
    socket = await websocket_connect(url(port))
    await message(socket)
    await until(lambda: sockets_open(app) == 2)

    await drain(http_server, app, write_grace=1)

    assert await close_code_after(reader) == 1001
    assert await socket.read_message() is None
    assert socket.close_code == 1001
    assert sockets_open(app) == 0
    writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_sockets_and_their_messages_are_counted_in_metrics(port, board, app):
    socket = await websocket_connect(url(port))
    await message(socket)
    await board.put("Counted", "Ann", "s")
    await message(socket)
    page = (await send(port, "GET", "/metrics")).body.decode()
    socket.close()

    assert metric(page, "talkserver_websockets_open") == 1
    assert metric(page, "talkserver_websocket_messages_total") == 2
    assert metric(page, "talkserver_polls_answered_total", transport="websocket") == 1
    await until(lambda: sockets_open(app) == 0)
    assert app.limits.polls_held("127.0.0.1") == 0


@pytest.mark.gen_test(timeout=60)
async def test_a_plain_poll_on_the_same_server_is_unaffected(port, board):
    socket = await websocket_connect(url(port))
    await message(socket)
    head = board.store.head
    poll = asyncio.ensure_future(send(port, "GET", f"/talks?changesSince={head}"))
    await until(lambda: len(board.waiters) == 1)
    await board.put("Both", "Ann", "s")

    answered, pushed = await asyncio.wait_for(asyncio.gather(poll, message(socket)), WAIT)
    socket.close()
    assert answered.json() == pushed
