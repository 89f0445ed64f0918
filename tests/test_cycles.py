"""No request leaves a reference cycle behind: the tuned collector's premise.

talkserver/operation/collector.py runs full collections only once a minute, which is
safe only if no request path leaves garbage that reference counting cannot
free.  Each test here runs one kind of request to its end (every transport:
answered, timed out, refused, bad input, client gone while parked, client
gone mid-body, drained) on a real server over real sockets with the cyclic
collector off, then runs a collection that saves what it finds
(``gc.DEBUG_SAVEALL``) and checks that none of it is the server's: no
object of talkserver's or Tornado's classes, and no frame or coroutine of
their code.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import types

import pytest
import tornado.netutil

from talkserver.operation import collector, shutdown
from talkserver.web.app import make_app
from talkserver.stores import MemoryStore

from .harness import read_answer, until

# The poll timeout of the timed-out scenarios; the others never reach theirs.
SHORT_TIMEOUT = 0.5
LONG_TIMEOUT = 60.0


class CountingServer(collector.HTTPServer):
    """The server as shipped, counting the connections it has seen end."""

    opened = 0
    ended = 0

    def handle_stream(self, stream, address):
        self.opened += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn):
        super().on_close(server_conn)
        self.ended += 1


class Server:
    def __init__(self, poll_timeout: float, **settings) -> None:
        self.app = make_app(MemoryStore(), poll_timeout=poll_timeout, heartbeat=0, **settings)
        self.board = self.app.board
        [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.http = CountingServer(self.app)
        self.http.add_sockets([sock])
        self.port = sock.getsockname()[1]


class Client:
    """One raw keep-alive connection."""

    @classmethod
    async def open(cls, port: int, request: bytes = b"") -> "Client":
        client = cls()
        client.reader, client.writer = await asyncio.open_connection("127.0.0.1", port)
        if request:
            client.send(request)
        return client

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self) -> tuple[int, bytes]:
        """The status and body of the next answer (with a Content-Length)."""
        answer = await read_answer(self.reader, timeout=30)
        return answer.status, answer.body

    async def some_bytes(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(65536), 30)

    def close(self) -> None:
        self.writer.close()

    def reset(self) -> None:
        """Hang up with a TCP reset, as a client whose network vanished does."""
        self.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def put(title: str, body: bytes, length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    return f"PUT /talks/{title} HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\n\r\n".encode() + body


TALK = b'{"presenter": "Ada", "summary": "Engines"}'




def _ours(code: types.CodeType | None) -> bool:
    name = code.co_filename if code is not None else ""
    return "/talkserver/" in name or "/tornado/" in name


def servers_garbage(found: list) -> list[str]:
    """What in ``found`` belongs to the server: its objects, frames and coroutines."""
    mine = []
    for obj in found:
        module = getattr(type(obj), "__module__", "") or ""
        if module.startswith(("talkserver", "tornado")):
            mine.append(f"{module}.{type(obj).__qualname__}")
        elif isinstance(obj, types.FrameType) and _ours(obj.f_code):
            mine.append(f"frame {obj.f_code.co_qualname}")
        elif isinstance(obj, types.CoroutineType) and _ours(obj.cr_code):
            mine.append(f"coroutine {obj.cr_code.co_qualname}")
    return sorted(set(mine))


async def collect_after(server: Server) -> list[str]:
    """Once every connection has ended: what a collection finds of the server's."""
    await until(lambda: server.http.ended == server.http.opened)
    # Let what the ends scheduled (callbacks, the wake loop's settling) run.
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert not gc.isenabled()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = list(gc.garbage)
    gc.garbage.clear()
    gc.set_debug(0)
    return servers_garbage(found)


# -- the scenarios: each runs requests to their end on ``server`` ---------------


async def poll_answered(server: Server) -> None:
    client = await Client.open(server.port, get(f"/talks?changesSince={server.board.store.head}"))
    await until(lambda: len(server.board.waiters) == 1)
    await server.board.put("Woken", "Ada", "s")
    status, body = await client.answer()
    assert status == 200 and b"Woken" in body
    client.close()


async def poll_timed_out(server: Server) -> None:
    client = await Client.open(server.port, get(f"/talks?changesSince={server.board.store.head}"))
    status, body = await client.answer()
    assert status == 200 and b'"talks":[]' in body.replace(b" ", b"")
    client.close()


async def poll_closed_while_parked(server: Server) -> None:
    client = await Client.open(server.port, get(f"/talks?changesSince={server.board.store.head}"))
    await until(lambda: len(server.board.waiters) == 1)
    client.close()
    await until(lambda: len(server.board.waiters) == 0)


async def poll_reset_while_parked(server: Server) -> None:
    client = await Client.open(server.port, get(f"/talks?changesSince={server.board.store.head}"))
    await until(lambda: len(server.board.waiters) == 1)
    client.reset()
    await until(lambda: len(server.board.waiters) == 0)


async def poll_bad_cursor(server: Server) -> None:
    client = await Client.open(server.port, get("/talks?changesSince=soon"))
    status, body = await client.answer()
    assert status == 400 and b"error" in body
    client.close()


async def poll_refused_past_the_slow_lane(server: Server) -> None:
    head = server.board.store.head
    waiting = [await Client.open(server.port, get(f"/talks?changesSince={head}")) for _ in range(5)]
    await until(lambda: len(server.board.waiters) + len(server.board.slow_lane) == 5)
    refused = await Client.open(server.port, get(f"/talks?changesSince={head}"))
    status, body = await refused.answer()
    assert status == 429 and b"error" in body
    for client in waiting + [refused]:
        client.close()
    await until(lambda: len(server.board.waiters) + len(server.board.slow_lane) == 0)


async def conditional_answered(server: Server) -> None:
    tag = f'"{server.board.store.head}"'
    client = await Client.open(server.port, get("/talks", f"If-None-Match: {tag}", "Prefer: wait=20"))
    await until(lambda: len(server.board.waiters) == 1)
    await server.board.put("Woken", "Ada", "s")
    status, body = await client.answer()
    assert status == 200 and b"Woken" in body
    client.close()


async def conditional_timed_out(server: Server) -> None:
    tag = f'"{server.board.store.head}"'
    client = await Client.open(server.port, get("/talks", f"If-None-Match: {tag}", "Prefer: wait=1"))
    status, _ = await client.answer()
    assert status == 304
    client.close()


async def conditional_reset_while_parked(server: Server) -> None:
    tag = f'"{server.board.store.head}"'
    client = await Client.open(server.port, get("/talks", f"If-None-Match: {tag}", "Prefer: wait=20"))
    await until(lambda: len(server.board.waiters) == 1)
    client.reset()
    await until(lambda: len(server.board.waiters) == 0)


async def conditional_closed_while_parked(server: Server) -> None:
    tag = f'"{server.board.store.head}"'
    client = await Client.open(server.port, get("/talks", f"If-None-Match: {tag}", "Prefer: wait=20"))
    await until(lambda: len(server.board.waiters) == 1)
    client.close()
    await until(lambda: len(server.board.waiters) == 0)


async def stream_event_then_closed(server: Server) -> None:
    client = await Client.open(server.port, get("/talks", "Accept: text/event-stream"))
    await until(lambda: len(server.app.following["stream"]) == 1)
    await server.board.put("Pushed", "Ada", "s")
    seen = b""
    while b"Pushed" not in seen:
        seen += await client.some_bytes()
    client.close()
    await until(lambda: len(server.app.following["stream"]) == 0)


async def stream_reset(server: Server) -> None:
    client = await Client.open(server.port, get("/talks", "Accept: text/event-stream"))
    await until(lambda: len(server.app.following["stream"]) == 1)
    client.reset()
    await until(lambda: len(server.app.following["stream"]) == 0)


async def stream_ended_by_the_server(server: Server) -> None:
    client = await Client.open(server.port, get("/talks", "Accept: text/event-stream"))
    await until(lambda: len(server.app.following["stream"]) == 1)
    server.app.following["stream"].end_all()
    seen = b""
    while not seen.endswith(b"0\r\n\r\n"):  # the chunked body's end
        seen += await client.some_bytes()
    client.close()


async def stream_bad_cursor(server: Server) -> None:
    client = await Client.open(server.port, get("/talks?changesSince=x", "Accept: text/event-stream"))
    status, _ = await client.answer()
    assert status == 400
    client.close()


WEBSOCKET = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13")


async def websocket_message_then_closed(server: Server) -> None:
    client = await Client.open(server.port, get("/talks", *WEBSOCKET))
    await until(lambda: len(server.app.following["websocket"]) == 1)
    await server.board.put("Pushed", "Ada", "s")
    seen = b""
    while b"Pushed" not in seen:
        seen += await client.some_bytes()
    assert seen.startswith(b"HTTP/1.1 101 ")
    client.send(b"\x88\x82abcd" + bytes(x ^ y for x, y in zip(b"\x03\xe8", b"ab")))  # a masked close, 1000
    await until(lambda: len(server.app.following["websocket"]) == 0)
    client.close()


async def websocket_reset(server: Server) -> None:
    client = await Client.open(server.port, get("/talks", *WEBSOCKET))
    await until(lambda: len(server.app.following["websocket"]) == 1)
    client.reset()
    await until(lambda: len(server.app.following["websocket"]) == 0)


async def websocket_ended_by_the_server(server: Server) -> None:
    client = await Client.open(server.port, get("/talks", *WEBSOCKET))
    await until(lambda: len(server.app.following["websocket"]) == 1)
    server.app.following["websocket"].end_all()
    seen = b""
    while b"\x88\x02\x03\xe9" not in seen:  # the close frame, 1001
        seen += await client.some_bytes()
    client.close()


async def writes_answered_and_refused(server: Server) -> None:
    client = await Client.open(server.port)
    client.send(put("One", TALK))
    assert (await client.answer())[0] == 204
    client.send(put("Two", b"not json"))
    assert (await client.answer())[0] == 400
    client.send(get("/talks/Nothing"))
    assert (await client.answer())[0] == 404
    client.send(b"DELETE /talks/One HTTP/1.1\r\nHost: test\r\n\r\n")
    assert (await client.answer())[0] == 204
    client.send(b"PATCH /talks/One HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n")
    assert (await client.answer())[0] == 405
    client.send(put("Big", b"", length=10_000_000))
    assert (await client.answer())[0] == 413
    client.close()


async def put_closed_mid_body(server: Server) -> None:
    client = await Client.open(server.port, put("Half", TALK[:10], length=len(TALK)))
    await until(lambda: server.app.limits.writes_in_flight == 1)
    client.close()
    await until(lambda: server.app.limits.writes_in_flight == 0)


async def put_reset_mid_body(server: Server) -> None:
    client = await Client.open(server.port, put("Half", TALK[:10], length=len(TALK)))
    await until(lambda: server.app.limits.writes_in_flight == 1)
    client.reset()
    await until(lambda: server.app.limits.writes_in_flight == 0)


async def other_resources(server: Server) -> None:
    client = await Client.open(server.port)
    for path in ("/talks", "/healthz", "/metrics", "/talks/a/b/c"):
        client.send(get(path))
        status, body = await client.answer()
        assert status in (200, 404) and body
    client.send(b"HEAD /talks HTTP/1.1\r\nHost: test\r\n\r\n")
    assert (await read_answer(client.reader, head_only=True, timeout=30)).status == 200
    client.send(get("/", ))
    assert (await client.answer())[0] == 200
    client.close()


async def drained(server: Server) -> None:
    head = server.board.store.head
    polls = [await Client.open(server.port, get(f"/talks?changesSince={head}")) for _ in range(3)]
    stream = await Client.open(server.port, get("/talks", "Accept: text/event-stream"))
    # (one poll waits, two are past the cap of one, in the slow lane)
    await until(lambda: len(server.board.waiters) + len(server.board.slow_lane) == 3 and len(server.app.following["stream"]) == 1)
    answered = await shutdown.drain(server.http, server.app, write_grace=1)
    assert answered == 3
    for poll in polls:
        assert (await poll.answer())[0] == 200
        poll.close()
    stream.close()


SCENARIOS = {
    f.__name__: f for f in [
        poll_answered, poll_timed_out, poll_closed_while_parked, poll_reset_while_parked, poll_bad_cursor,
        poll_refused_past_the_slow_lane, conditional_answered, conditional_timed_out,
        conditional_closed_while_parked, conditional_reset_while_parked, stream_event_then_closed,
        stream_reset, stream_ended_by_the_server, stream_bad_cursor, websocket_message_then_closed,
        websocket_reset, websocket_ended_by_the_server, writes_answered_and_refused,
        put_closed_mid_body, put_reset_mid_body, other_resources, drained,
    ]
}


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("fast_polls", [True, False], ids=["fast path", "handlers"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_a_request_leaves_no_garbage_for_the_collector(no_collector, scenario, fast_polls):
    timeout = SHORT_TIMEOUT if scenario.endswith("timed_out") else LONG_TIMEOUT
    server = Server(timeout, fast_polls=fast_polls, max_polls_per_ip=1, max_body_size=1024 * 1024)

    await SCENARIOS[scenario](server)

    found = await collect_after(server)
    assert not found, "\n".join(found)
