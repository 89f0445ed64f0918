"""talkserver-load's WebSocket client (loadtest/websocket.py) against real peers.

The peer is Tornado's own WebSocketHandler (a spec-following server: it
refuses unmasked client frames, so a pong it receives proves the masking),
or, where a test needs frames Tornado never sends (fragments, a ping inside
a fragmented message, one byte per read, a wrong Sec-WebSocket-Accept), a
few lines of asyncio that write those bytes on a real socket.  At the end:
the whole command over WebSockets against a small talks server, and a
poller's large answer gathered across reads as a socket's large frame is;
last, talkserver's own WebSocket transport, with hang-ups and a password.
"""

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager

import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket

from talkserver.loadtest.clients import RETRY_BACKOFF, Hub, Target
from talkserver.loadtest.websocket import Socket

from .harness import load_json, running


class Peer:
    """What the Tornado peer saw and holds: its board and its sockets."""

    def __init__(self, talks=(), server_time=5):
        self.talks = list(talks)
        self.server_time = server_time
        self.sockets = []
        self.cursors = []  # changesSince of each upgrade (None: none)
        self.authorizations = []
        self.pongs = []
        self.close_codes = []


class BoardSocket(tornado.websocket.WebSocketHandler):
    """GET /talks as a WebSocket: the board at once, then what the test sends."""

    def initialize(self, peer):
        self.peer = peer

    def open(self):
        self.peer.cursors.append(self.get_argument("changesSince", None))
        self.peer.authorizations.append(self.request.headers.get("Authorization"))
        self.peer.sockets.append(self)
        self.write_message(json.dumps({"serverTime": self.peer.server_time, "talks": self.peer.talks}))

    def on_message(self, message):
        pass

    def on_pong(self, data):
        self.peer.pongs.append(data)

    def on_close(self):
        self.peer.close_codes.append(self.close_code)
        self.peer.sockets.remove(self)


class Refusing(tornado.web.RequestHandler):
    def get(self):
        self.set_status(401)
        self.finish({"error": "this server needs a name and password (HTTP Basic)"})


async def serve(handlers):
    """A Tornado server on a free port of 127.0.0.1; returns (server, port)."""
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(tornado.web.Application(handlers))
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


async def until(condition, timeout=10.0):
    """Wait until ``condition()`` holds (the test fails if it never does)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def follow(port, authorization=None):
    """One WebSocket client connected to 127.0.0.1:port; returns (client, hub)."""
    target = Target("127.0.0.1", port, authorization=authorization)
    hub = Hub(target)
    client = Socket(target, hub)
    await target.connect(client)
    return client, hub


def test_the_first_message_holds_the_board_and_the_socket_then_waits():
    async def scenario():
        peer = Peer(talks=[{"title": "Engines", "presenter": "Ada", "summary": "s", "comments": []}])
        server, port = await serve([("/talks", BoardSocket, {"peer": peer})])
        client, hub = await follow(port, authorization="Basic YWRhOnNlY3JldA==")
        await until(lambda: hub.inbox)
        counts = (hub.connected, hub.waiting, hub.answers, hub.errors)
        client.close()
        server.stop()
        return peer, client, hub, counts

    peer, client, hub, counts = asyncio.run(scenario())

    (_, _, body), = hub.inbox
    assert json.loads(body)["talks"][0]["title"] == "Engines"
    assert client.cursor == b"5"
    # Connected, and counted as waiting from its first message.
    assert counts == (1, 1, 1, {})
    assert peer.cursors == [None]
    assert peer.authorizations == ["Basic YWRhOnNlY3JldA=="]


class CountingReads(Socket):
    """A Socket that counts the reads its messages arrived in."""

    reads = 0

    def data_received(self, data):
        self.reads += 1
        super().data_received(data)


def test_messages_of_every_length_and_split_across_reads_arrive_whole():
    # 7-bit, 16-bit and 64-bit payload lengths; the last is far larger
    # than one read of the socket.
    sizes = [10, 1_000, 3_000_000]

    async def scenario():
        peer = Peer()
        server, port = await serve([("/talks", BoardSocket, {"peer": peer})])
        target = Target("127.0.0.1", port)
        hub = Hub(target)
        client = CountingReads(target, hub)
        await target.connect(client)
        await until(lambda: hub.inbox)
        sent = []
        for n, size in enumerate(sizes, start=6):
            message = json.dumps({"serverTime": n, "talks": [{"title": "T", "summary": "x" * size}]})
            sent.append(message.encode())
            await peer.sockets[0].write_message(message)
        await until(lambda: len(hub.inbox) == 1 + len(sizes))
        client.close()
        server.stop()
        return sent, client, hub

    sent, client, hub = asyncio.run(scenario())

    assert [body for _, _, body in hub.inbox[1:]] == sent
    assert client.cursor == b"8"
    assert client.reads > 1 + len(sizes)  # the large one came in many reads
    assert hub.errors == {}


def test_a_ping_is_answered_with_a_masked_pong_of_the_same_payload():
    async def scenario():
        peer = Peer()
        server, port = await serve([("/talks", BoardSocket, {"peer": peer})])
        client, hub = await follow(port)
        await until(lambda: hub.inbox)
        peer.sockets[0].ping(b"are you there?")
        await until(lambda: peer.pongs)
        client.close()
        server.stop()
        return peer, hub

    peer, hub = asyncio.run(scenario())

    # Tornado closes a connection that sends an unmasked frame.
    assert peer.pongs == [b"are you there?"]
    assert hub.errors == {} and hub.reconnects == 0


def test_a_close_from_the_server_is_answered_and_the_client_resumes_from_its_last_server_time():
    async def scenario():
        peer = Peer()
        server, port = await serve([("/talks", BoardSocket, {"peer": peer})])
        client, hub = await follow(port)
        await until(lambda: hub.inbox)
        await peer.sockets[0].write_message(json.dumps({"serverTime": 7, "talks": []}))
        await until(lambda: client.cursor == b"7")
        peer.sockets[0].close(1001, "going away")
        await until(lambda: len(peer.cursors) == 2, timeout=10 + RETRY_BACKOFF)
        await until(lambda: len(hub.inbox) == 3)
        client.close()
        await until(lambda: len(peer.close_codes) == 2)
        server.stop()
        return peer, hub

    peer, hub = asyncio.run(scenario())

    assert peer.cursors == [None, "7"]  # resumed with changesSince=7
    assert peer.close_codes == [1001, 1000]  # the server's code echoed; then a normal close
    assert hub.reconnects == 1 and hub.errors == {}


def test_a_refused_upgrade_is_an_error_with_the_servers_reason():
    async def scenario():
        server, port = await serve([("/talks", Refusing)])
        client, hub = await follow(port)
        await until(lambda: hub.errors)
        client.close()
        server.stop()
        return hub

    hub = asyncio.run(scenario())

    assert hub.errors == {"HTTP 401: this server needs a name and password (HTTP Basic)": 1}
    assert hub.inbox == []


# -- frames Tornado never sends, from a hand-written peer ---------------------


def server_frame(opcode, payload, fin=True):
    """An unmasked frame as a server sends it (payloads under 126 bytes)."""
    return bytes((0x80 * fin | opcode, len(payload))) + payload


async def raw_peer(frames, accept=None):
    """A server that upgrades (answering ``accept``, or the right value),
    then writes ``frames`` one byte at a time and keeps what the client
    sends.  Returns (server, port, received bytes)."""
    received = bytearray()

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
        right = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + (accept or right) + b"\r\n\r\n")

        async def keep():
            while chunk := await reader.read(4096):
                received.extend(chunk)

        keeping = asyncio.ensure_future(keep())
        try:
            for byte in b"".join(frames):
                writer.write(bytes((byte,)))
                await writer.drain()
                await asyncio.sleep(0.001)  # a read of its own
        except ConnectionError:
            pass  # the client hung up (as it should on a bad frame)
        await keeping
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], received


def unmask(frame: bytes) -> tuple[int, bool, bytes]:
    """(opcode, masked, payload) of one short client frame."""
    length = frame[1] & 0x7F
    mask, payload = frame[2:6], frame[6 : 6 + length]
    return frame[0] & 0x0F, bool(frame[1] & 0x80), bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_a_fragmented_message_with_a_ping_inside_is_put_together_byte_by_byte():
    message = json.dumps({"serverTime": 9, "talks": [{"title": "Fragments", "comments": []}]}).encode()
    frames = [
        server_frame(0x1, message[:20], fin=False),
        server_frame(0x9, b"ping!"),  # control frames may come between fragments
        server_frame(0x0, message[20:40], fin=False),
        server_frame(0x0, message[40:]),
    ]

    async def scenario():
        server, port, received = await raw_peer(frames)
        client, hub = await follow(port)
        await until(lambda: hub.inbox, timeout=20)
        await until(lambda: len(received) >= 11)
        client.close()
        await until(lambda: len(received) >= 11 + 8)
        server.close()
        return hub, bytes(received)

    hub, received = asyncio.run(scenario())

    assert [body for _, _, body in hub.inbox] == [message]
    assert unmask(received[:11]) == (0xA, True, b"ping!")  # the pong
    assert unmask(received[11:19]) == (0x8, True, (1000).to_bytes(2, "big"))  # the close on leaving
    assert hub.errors == {}


def test_a_wrong_sec_websocket_accept_is_refused():
    frames = [server_frame(0x1, b'{"serverTime": 1, "talks": []}')]

    async def scenario():
        server, port, _ = await raw_peer(frames, accept=base64.b64encode(os.urandom(20)))
        client, hub = await follow(port)
        await until(lambda: hub.errors)
        client.close()
        server.close()
        return hub

    hub = asyncio.run(scenario())

    assert hub.errors == {"WebSocket: the server's Sec-WebSocket-Accept does not match the key": 1}
    assert hub.inbox == []


def test_a_masked_frame_from_the_server_closes_with_1002_and_counts_an_error():
    masked = bytes((0x81, 0x80 | 4)) + b"\x01\x02\x03\x04" + b"abcd"

    async def scenario():
        server, port, received = await raw_peer([masked])
        client, hub = await follow(port)
        await until(lambda: hub.errors, timeout=20)
        await until(lambda: len(received) >= 8)
        client.close()
        server.close()
        return hub, bytes(received)

    hub, received = asyncio.run(scenario())

    assert hub.errors == {"WebSocket: a masked frame or reserved bits from the server": 1}
    assert unmask(received[:8]) == (0x8, True, (1002).to_bytes(2, "big"))
    assert hub.inbox == []


# -- the whole command over WebSockets, against a small talks server ---------


class Board:
    """A talks board in memory with a change log, as the protocol describes."""

    def __init__(self, drop_deletions=False):
        self.talks = {}
        self.changed = {}  # title -> serverTime of its last change
        self.time = 0
        self.sockets = set()
        self.drop_deletions = drop_deletions

    def answer(self, since):
        """What a poll with ``since`` (None: the board) answers."""
        if since is None:
            return {"serverTime": self.time, "talks": list(self.talks.values())}
        talks = [
            self.talks.get(title, {"title": title, "deleted": True})
            for title, at in self.changed.items() if at > since
        ]
        if self.drop_deletions:
            talks = [talk for talk in talks if not talk.get("deleted")]
        return {"serverTime": self.time, "talks": talks}

    def change(self, title):
        self.time += 1
        self.changed[title] = self.time
        for socket in list(self.sockets):
            socket.push()


class Talk(tornado.web.RequestHandler):
    def initialize(self, board):
        self.board = board

    def put(self, title):
        self.board.talks[title] = dict(json.loads(self.request.body), title=title, comments=[])
        self.board.change(title)
        self.set_status(204)

    def post(self, title):
        self.board.talks[title]["comments"].append(json.loads(self.request.body))
        self.board.change(title)
        self.set_status(204)

    def delete(self, title):
        self.board.talks.pop(title, None)
        self.board.change(title)
        self.set_status(204)


class Following(tornado.websocket.WebSocketHandler):
    """GET /talks upgraded: the answer to changesSince at once, then each change."""

    def initialize(self, board):
        self.board = board

    async def get(self, *args, **kwargs):
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            # A plain GET /talks (the writers' and the drain's): the board.
            return self.finish(self.board.answer(None))
        return await super().get(*args, **kwargs)

    def open(self):
        raw = self.get_argument("changesSince", None)
        self.cursor = None if raw is None else int(raw)
        self.board.sockets.add(self)
        self.push()

    def push(self):
        answer = self.board.answer(self.cursor)
        self.cursor = answer["serverTime"]
        self.write_message(json.dumps(answer))

    def on_close(self):
        self.board.sockets.discard(self)


@contextmanager
def talks_server(drop_deletions=False):
    """The small talks server in a thread of its own; yields its URL."""
    started = threading.Event()
    state = {}

    def run():
        async def main():
            board = Board(drop_deletions)
            routes = [("/talks", Following, {"board": board}), (r"/talks/([^/]+)(?:/comments)?", Talk, {"board": board})]
            state["server"], state["port"] = await serve(routes)
            state["stop"] = asyncio.Event()
            started.set()
            await state["stop"].wait()
            state["server"].stop()

        state["loop"] = asyncio.new_event_loop()
        state["loop"].run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


def test_a_websocket_run_delivers_every_change_to_every_client_exactly_once(tmp_path):
    with talks_server() as url:
        done, result = load_json(
            tmp_path, "--url", url, "--transport", "websocket", "--clients", 200, "--writers", 2, "--duration", 2,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert result["transport"] == "websocket"
    assert result["changes"] > 0 and result["deliveries"] == result["changes"] * 200
    assert (result["lost"], result["duplicates"], result["errors"], result["reconnects"]) == (0, 0, 0, 0)
    assert result["copies_matching"] == 200
    assert "200 (WebSockets)" in done.stdout


def test_a_websocket_server_that_misses_deletions_is_caught(tmp_path):
    with talks_server(drop_deletions=True) as url:
        done, result = load_json(
            tmp_path, "--url", url, "--transport", "websocket", "--clients", 20, "--duration", 2, "--rate", 8,
            "--drain", 1,
        )

    assert done.returncode == 1
    assert result["lost"] > 0 and result["lost"] % 20 == 0
    assert "NOT CLEAN" in done.stdout


# -- a large board over a long poll, gathered the same way ---------------------


class LargeBoard(tornado.web.RequestHandler):
    def initialize(self, body):
        self.body = body

    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(self.body)


def test_a_poll_answer_larger_than_many_reads_arrives_whole():
    from talkserver.loadtest.clients import Poller

    body = json.dumps({"serverTime": 3, "talks": [{"title": f"T{n}", "summary": "x" * 3000} for n in range(1000)]}).encode()

    async def scenario():
        server, port = await serve([("/talks", LargeBoard, {"body": body})])
        target = Target("127.0.0.1", port)
        hub = Hub(target)
        poller = Poller(target, hub)
        await target.connect(poller)
        await until(lambda: len(hub.inbox) >= 2)  # the board, then the first poll's answer
        poller.close()
        server.stop()
        return hub

    hub = asyncio.run(scenario())

    assert [answer for _, _, answer in hub.inbox[:2]] == [body, body]
    assert hub.errors == {}


# -- talkserver itself, over its WebSocket transport ---------------------------


def test_talkserver_followed_over_websockets_with_hang_ups_runs_clean(tmp_path):
    with running(sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:") as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--transport", "websocket", "--clients", 200, "--writers", 2, "--duration", 2,
            "--churn", 1,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert result["changes"] > 0 and result["deliveries"] == result["changes"] * 200
    assert (result["lost"], result["duplicates"], result["errors"]) == (0, 0, 0)
    assert result["hang_ups"] > 0  # each came back with changesSince and missed nothing
    assert result["copies_matching"] == 200


def test_a_password_protected_talkserver_is_followed_over_websockets(tmp_path):
    users, password = tmp_path / "users", "Socket-Password-55"
    subprocess.run([sys.executable, "-m", "talkserver.command.passwd", str(users), "ada"],
                   input=password + "\n", text=True, check=True, capture_output=True, timeout=60)
    (tmp_path / "password").write_text(password + "\n")
    with running(sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:", f"--password-file={users}") as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--transport", "websocket", "--user", "ada", "--password-file", tmp_path / "password",
            "--clients", 50, "--duration", 1, "--rate", 10,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert result["deliveries"] == result["changes"] * 50 > 0
    assert password not in done.stdout + done.stderr
