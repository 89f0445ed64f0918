"""The fast path for plain long polls (talkserver/fastpolls.py).

A plain ``GET /talks?changesSince=T HTTP/1.1`` is answered by a
``PollDelegate`` without Tornado's routing or a ``TalksHandler``; every
other request, and every poll that needs more than the common case, goes
through the handlers unchanged.  These tests check, on a real server over
real sockets, that:

- a poll answered by the fast path is byte for byte the answer the
  handlers give with ``fast_polls=False`` (status, headers in order, body;
  only the Date may differ), answered at once, woken by a change, or
  timed out;
- each case the fast path leaves to the handlers is served by them, and
  answered as the handlers answer it;
- passwords, the per-address poll cap (also behind a proxy, with
  xheaders), /metrics, the access log, the shutdown drain, keep-alive and
  pipelining, and clients that leave or reset their connection all work
  the same on the fast path;
- requests whose Host Tornado rejects or ``allowed_hosts`` refuses (also
  behind a forged X-Forwarded-Host), and servers without keep-alive, get
  the handlers' answer on the fast path too.

Which way a request went is seen by recording ``PollDelegate`` decisions
and the ``TalksHandler``s made (the ``paths`` fixture), and by the type of
what waits in ``app.board.waiters``.  Nothing here measures time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field

import pytest

from talkserver.operation import collector
from talkserver.wire import tornado_private
from talkserver.web.app import make_app
from talkserver.follow.fastpolls import PollDelegate
from talkserver.web.handlers import TalksHandler
from talkserver.operation.shutdown import drain
from talkserver.stores import MemoryStore

from .harness import PASSWORD, Answer, basic, read_answer, reset_connection as reset, serve_app, until

# Every store here stamps on a clock that never moves, so two servers given
# the same changes have the same serverTimes and their answers can be
# compared byte for byte.
FROZEN_MS = 1_700_000_000_000
START = FROZEN_MS  # the head of a new store
READ_TIMEOUT = 10.0
# The one Date format HTTP senders use (RFC 9110 section 5.6.7), in English whatever the locale.
IMF_FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT")


# -- servers and clients -----------------------------------------------------


@dataclass
class Server:
    app: object
    http: collector.HTTPServer
    port: int
    clients: list = field(default_factory=list)

    @property
    def board(self):
        return self.app.board

    async def connect(self, source: str = "127.0.0.1") -> "Client":
        """A new keep-alive connection, from ``source`` (any 127.x address)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))
        client = Client(reader, writer)
        self.clients.append(client)
        return client

    async def poll(self, cursor: int, source: str = "127.0.0.1", **kwargs) -> "Client":
        """A new connection with ``GET /talks?changesSince=cursor`` sent on it."""
        client = await self.connect(source)
        client.send(f"/talks?changesSince={cursor}", **kwargs)
        return client


@pytest.fixture
def serve(io_loop):
    """Start a talkserver on a free port: ``serve(fast_polls=..., xheaders=..., **settings)``."""
    servers = []

    def start(*, fast_polls=True, xheaders=False, poll_timeout=30.0, http_options=None, **settings) -> Server:
        store = MemoryStore(clock=lambda: FROZEN_MS)
        app = make_app(store, poll_timeout=poll_timeout, fast_polls=fast_polls, **settings)
        http, port = serve_app(app, xheaders=xheaders, **(http_options or {}))
        server = Server(app, http, port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.http.stop()
        for client in server.clients:
            client.close()


def request(target: str, method: str = "GET", host: str | None = "localhost", headers: dict | None = None,
            body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """The bytes of one request; ``body`` goes as it is, framed by ``headers``."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Client:
    """One kept-alive connection, spoken to in raw HTTP/1.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, target: str, **kwargs) -> None:
        self.writer.write(request(target, **kwargs))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def reply(self, head_only: bool = False) -> Answer:
        """The next answer on this connection (its body read by Content-Length)."""
        return await read_answer(self.reader, head_only, READ_TIMEOUT)

    async def closed_by_server(self) -> bool:
        """Whether the server closes this connection with nothing more to say."""
        return await asyncio.wait_for(self.reader.read(), READ_TIMEOUT) == b""

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def put_request(title: str, presenter: str = "Ada", summary: str = "Engines") -> bytes:
    body = json.dumps({"presenter": presenter, "summary": summary}).encode()
    return request(f"/talks/{title}", method="PUT", headers={"Content-Length": len(body)}, body=body)


def titles(reply: Answer) -> list[str]:
    return [talk["title"] for talk in reply.json()["talks"]]


def parked_kinds(server: Server) -> list[str]:
    """The kind of each poll waiting for a change: PollDelegate (fast path) or TalksHandler."""
    return [type(waiter).__name__ for waiter in server.board.waiters._parked]


class Paths:
    """Which way each request went: "fast" (answered by its PollDelegate) or
    "routed" (passed to Tornado's routing), and how many TalksHandlers were made."""

    def __init__(self, monkeypatch) -> None:
        self.taken: list[str] = []
        self.handlers = 0
        # Heads the delegate read itself and gave back to Tornado (_read_next).
        self.handed_back = 0
        unread = tornado_private.unread

        def recorded_unread(stream, data):
            self.handed_back += 1
            unread(stream, data)
        headers_received, take, initialize = PollDelegate.headers_received, PollDelegate._hold, TalksHandler.initialize

        # A request the fast path takes passes _hold, whether Tornado or the
        # delegate's own read of the next head (_read_next) read it; one it
        # does not take reaches Tornado's headers_received and is routed.
        def recorded_take(delegate, *args):
            taken = take(delegate, *args)
            if taken:
                self.taken.append("fast")
            return taken

        def recorded_headers_received(delegate, start_line, headers):
            result = headers_received(delegate, start_line, headers)
            if delegate.routed is not None:
                self.taken.append("routed")
            return result

        def recorded_initialize(handler, **kwargs):
            self.handlers += 1
            initialize(handler, **kwargs)

        monkeypatch.setattr(PollDelegate, "headers_received", recorded_headers_received)
        monkeypatch.setattr(PollDelegate, "_hold", recorded_take)
        monkeypatch.setattr(tornado_private, "unread", recorded_unread)
        monkeypatch.setattr(TalksHandler, "initialize", recorded_initialize)


@pytest.fixture
def paths(monkeypatch):
    return Paths(monkeypatch)


async def parked(server: Server, count: int) -> None:
    await until(lambda: len(server.board.waiters) == count, timeout=READ_TIMEOUT)


# -- 1. the fast path answers as the handlers do ------------------------------


async def answer_at_once(server: Server, cursor_before_change: bool) -> Answer:
    """A poll with news waiting: changesSince=0 (a reset) or the head before a change."""
    old = server.board.store.head
    await server.board.put("Juggling", "Kim", "Three balls")
    client = await server.poll(old if cursor_before_change else 0)
    return await client.reply()


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("cursor_before_change", [False, True], ids=["changesSince=0", "an old cursor"])
async def test_an_answer_at_once_is_the_same_as_the_handlers_answer(serve, paths, cursor_before_change):
    fast, handlers = serve(fast_polls=True), serve(fast_polls=False)

    fast_reply = await answer_at_once(fast, cursor_before_change)
    handler_reply = await answer_at_once(handlers, cursor_before_change)

    assert paths.taken == ["fast"] and paths.handlers == 1  # the one TalksHandler is the other server's
    assert fast_reply.without_date() == handler_reply.without_date()
    assert fast_reply.status == 200
    assert IMF_FIXDATE.fullmatch(fast_reply.headers["date"]) and IMF_FIXDATE.fullmatch(handler_reply.headers["date"])
    assert titles(fast_reply) == ["Juggling"]
    assert fast_reply.json().get("reset") is (None if cursor_before_change else True)


async def answer_after_waiting(server: Server, summary: str) -> tuple[Answer, list[str]]:
    """A poll at the head, woken by a change; also what it waited as."""
    client = await server.poll(server.board.store.head)
    await parked(server, 1)
    kinds = parked_kinds(server)
    await server.board.put("Juggling", "Kim", summary)
    reply = await client.reply()
    return reply, kinds


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("summary", ["Three balls", "x" * 100_000], ids=["small", "larger than 64 KiB"])
async def test_a_poll_woken_by_a_change_gets_the_same_answer_as_from_the_handlers(serve, summary):
    fast, handlers = serve(fast_polls=True), serve(fast_polls=False)

    fast_reply, fast_parked = await answer_after_waiting(fast, summary)
    handler_reply, handler_parked = await answer_after_waiting(handlers, summary)

    assert (fast_parked, handler_parked) == (["PollDelegate"], ["HandlerPoll"])
    assert fast_reply.without_date() == handler_reply.without_date()
    assert fast_reply.json()["talks"][0]["summary"] == summary
    assert len(fast.board.waiters) == len(handlers.board.waiters) == 0


async def answer_after_timeout(server: Server) -> Answer:
    client = await server.poll(server.board.store.head)
    await parked(server, 1)
    return await client.reply()


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_that_times_out_gets_the_same_empty_answer_as_from_the_handlers(serve):
    fast = serve(fast_polls=True, poll_timeout=0.3)
    handlers = serve(fast_polls=False, poll_timeout=0.3)

    fast_reply = await answer_after_timeout(fast)
    handler_reply = await answer_after_timeout(handlers)

    assert fast_reply.without_date() == handler_reply.without_date()
    assert fast_reply.json() == {"serverTime": START, "talks": []}


# -- 2. what the fast path leaves to the handlers ------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_asking_to_close_the_connection_waits_in_a_handler_and_the_connection_closes(serve, paths):
    server = serve()
    client = await server.poll(START, headers={"Connection": "close"})
    await parked(server, 1)

    await server.board.put("Juggling", "Kim", "Three balls")
    reply = await client.reply()

    assert paths.taken == ["routed"] and parked_kinds(server) == [] and paths.handlers == 1
    assert reply.status == 200 and titles(reply) == ["Juggling"]
    assert reply.headers["connection"] == "close"
    assert await client.closed_by_server()


@pytest.mark.gen_test(timeout=120)
async def test_an_http_1_0_poll_is_answered_by_a_handler_and_the_connection_closes(serve, paths):
    server = serve()
    await server.board.put("Juggling", "Kim", "Three balls")

    client = await server.poll(START, version="HTTP/1.0")
    reply = await client.reply()

    assert paths.taken == ["routed"] and paths.handlers == 1
    assert reply.status == 200 and titles(reply) == ["Juggling"]
    assert await client.closed_by_server()


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize(
    "framing, body",
    [({"Content-Length": "2"}, b"{}"), ({"Transfer-Encoding": "chunked"}, b"2\r\n{}\r\n0\r\n\r\n")],
    ids=["Content-Length", "chunked"],
)
async def test_a_poll_with_a_body_is_answered_by_a_handler(serve, paths, framing, body):
    server = serve()
    await server.board.put("Juggling", "Kim", "Three balls")

    client = await server.poll(START, headers=framing, body=body)
    reply = await client.reply()

    assert paths.taken == ["routed"] and paths.handlers == 1
    assert reply.status == 200 and titles(reply) == ["Juggling"]
    client.send(f"/talks?changesSince={server.board.store.head}")  # the connection serves on
    await parked(server, 1)
    assert paths.taken[-1] == "fast"


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_asking_for_an_event_stream_gets_one_from_a_handler(serve, paths):
    server = serve()
    await server.board.put("Juggling", "Kim", "Three balls")

    client = await server.poll(START, headers={"Accept": "text/event-stream"})
    reply = await client.reply()
    first_event = await asyncio.wait_for(client.reader.readuntil(b"}\n\n"), READ_TIMEOUT)

    assert paths.taken == ["routed"] and paths.handlers == 1
    assert reply.status == 200 and reply.headers["content-type"] == "text/event-stream"
    assert f"id: {server.board.store.head}\ndata: ".encode() in first_event
    assert b'"title":"Juggling"' in first_event
    assert len(server.app.following["stream"]) == 1


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("cursor", ["soon", "+1", "1.5", "", "1234567890123456789"])
async def test_a_cursor_that_is_not_a_number_gets_400_from_a_handler(serve, paths, cursor):
    server = serve()

    reply = await (await server.poll(cursor)).reply()

    assert paths.taken == ["routed"] and paths.handlers == 1
    assert reply.status == 400
    assert "changesSince must be an integer" in reply.json()["error"]


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("query", ["changesSince={head}&x=1", "x=1&changesSince={head}"])
async def test_a_poll_with_more_query_parameters_waits_in_a_handler(serve, paths, query):
    server = serve()
    client = await server.connect()
    client.send("/talks?" + query.format(head=START))
    await parked(server, 1)

    await server.board.put("Juggling", "Kim", "Three balls")
    reply = await client.reply()

    assert paths.taken == ["routed"] and paths.handlers == 1
    assert reply.status == 200 and titles(reply) == ["Juggling"]


@pytest.mark.gen_test(timeout=120)
async def test_head_is_left_to_the_handlers_which_answer_with_gets_headers_at_once(serve, paths):
    server = serve()

    client = await server.poll(START, method="HEAD")
    reply = await client.reply(head_only=True)

    assert paths.taken == ["routed"] and paths.handlers == 1
    assert reply.status == 200 and reply.headers["content-type"] == "application/json; charset=UTF-8"
    assert int(reply.headers["content-length"]) == len(server.board.feed.timeout_answer())


@pytest.mark.gen_test(timeout=120)
async def test_a_host_not_allowed_gets_400_and_an_allowed_one_takes_the_fast_path(serve, paths):
    server = serve(allowed_hosts=["localhost"])

    refused = await (await server.poll(START, host="evil.example")).reply()
    client = await server.poll(START, host="localhost:8000")
    await parked(server, 1)

    assert paths.taken == ["routed", "fast"]
    assert refused.status == 400
    assert "does not answer to the name 'evil.example'" in refused.json()["error"]
    assert parked_kinds(server) == ["PollDelegate"]
    await server.board.put("Juggling", "Kim", "Three balls")
    assert titles(await client.reply()) == ["Juggling"]


@pytest.mark.gen_test(timeout=120)
async def test_oversized_headers_get_431_from_the_guard(serve, paths):
    server = serve()

    reply = await (await server.poll(START, headers={"X-Padding": "a" * 33_000})).reply()

    assert paths.taken == ["routed"]
    assert reply.status == 431 and "request headers are larger" in reply.json()["error"]


@pytest.mark.gen_test(timeout=120)
async def test_a_cursor_ahead_of_the_store_is_answered_by_a_handler_with_a_reset(serve, paths):
    # A MemoryStore has nothing to catch up with: a cursor from the future
    # (a wiped store, another server) gets the whole board, flagged reset.
    server = serve()
    await server.board.put("Juggling", "Kim", "Three balls")
    head = server.board.store.head

    reply = await (await server.poll(head + 1000)).reply()

    assert paths.taken == ["routed"] and paths.handlers == 1
    assert reply.status == 200
    assert reply.json() == {"serverTime": head, "talks": [server.board.store.get("Juggling")], "reset": True}


@pytest.mark.gen_test(timeout=120)
async def test_with_compressed_answers_every_poll_goes_to_the_handlers(serve, paths):
    server = serve(compress_response=True)
    client = await server.poll(START, headers={"Accept-Encoding": "gzip"})
    await parked(server, 1)

    await server.board.put("Juggling", "Kim", "Three balls")
    reply = await client.reply()

    assert paths.taken == [] and paths.handlers == 1  # no PollDelegate at all
    assert reply.status == 200 and titles(reply) == ["Juggling"]
    assert reply.headers["vary"] == "Accept-Encoding"


# Requests the handlers refuse with 400 before any handler runs, with the
# settings they are sent under: Tornado's HTTPServerRequest rejects an
# HTTP/1.1 request whose Host is missing or malformed (RFC 9112 section
# 3.2), and guard.problem checks the Host header, never X-Forwarded-Host.
BAD_HOSTS = [
    pytest.param({}, {"host": None}, id="no Host"),
    pytest.param({}, {"host": "a,b"}, id="two Hosts"),
    pytest.param({}, {"host": "bad host"}, id="a malformed Host"),
    pytest.param(
        {"allowed_hosts": ["localhost"]}, {"host": "evil.example", "headers": {"X-Forwarded-Host": "localhost"}},
        id="X-Forwarded-Host naming an allowed host",
    ),
]


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("settings, sent", BAD_HOSTS)
async def test_the_handlers_refuse_a_poll_with_a_bad_host_with_400(serve, settings, sent):
    server = serve(fast_polls=False, **settings)
    await server.board.put("Juggling", "Kim", "Three balls")

    reply = await (await server.poll(0, **sent)).reply(head_only=True)

    assert reply.status == 400


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("settings, sent", BAD_HOSTS)
async def test_the_fast_path_refuses_a_poll_with_a_bad_host_with_400_too(serve, settings, sent):
    """The last case is a DNS-rebinding page (on evil.example, re-pointed
    to 127.0.0.1): it may add any X-Forwarded-Host, being same-origin
    there, and must still not read the board past ``allowed_hosts``."""
    server = serve(**settings)
    await server.board.put("Juggling", "Kim", "Three balls")

    reply = await (await server.poll(0, **sent)).reply(head_only=True)

    assert reply.status == 400


@pytest.mark.gen_test(timeout=120)
async def test_with_keep_alive_off_a_fast_answer_says_connection_close_as_the_handlers_do(serve):
    """An HTTPServer made with ``no_keep_alive=True`` closes each connection
    after one answer, and the answer says so (``Connection: close``)."""
    fast = serve(http_options={"no_keep_alive": True})
    handlers = serve(fast_polls=False, http_options={"no_keep_alive": True})

    fast_reply = await (await fast.poll(0)).reply()
    handler_reply = await (await handlers.poll(0)).reply()

    assert handler_reply.headers["connection"] == "close"
    assert fast_reply.without_date() == handler_reply.without_date()


# -- 3. passwords ------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_without_credentials_gets_401_from_a_handler(serve, paths, password_file):
    server = serve(password_file=password_file)

    reply = await (await server.poll(START)).reply()

    assert paths.taken == ["routed"] and paths.handlers == 1
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith('Basic realm="talkserver"')
    assert "needs a name and password" in reply.json()["error"]


@pytest.mark.gen_test(timeout=120)
async def test_credentials_are_checked_once_by_a_handler_then_their_polls_take_the_fast_path(serve, paths, password_file):
    server = serve(password_file=password_file)
    client = await server.connect()

    client.send("/talks?changesSince=0", headers=basic("ada", PASSWORD))
    first = await client.reply()
    client.send(f"/talks?changesSince={START}", headers=basic("ada", PASSWORD))
    await parked(server, 1)

    assert first.status == 200 and first.json()["reset"] is True
    assert paths.taken == ["routed", "fast"] and paths.handlers == 1
    assert parked_kinds(server) == ["PollDelegate"]
    await server.board.put("Juggling", "Kim", "Three balls")
    assert titles(await client.reply()) == ["Juggling"]


@pytest.mark.gen_test(timeout=120)
async def test_a_wrong_password_is_never_let_through_by_the_fast_path(serve, paths, password_file):
    server = serve(password_file=password_file)
    right = await server.connect()
    right.send("/talks?changesSince=0", headers=basic("ada", PASSWORD))
    assert (await right.reply()).status == 200

    wrong = [await (await server.poll(START, headers=basic("ada", "guess"))).reply() for _ in range(2)]

    assert paths.taken == ["routed", "routed", "routed"]
    assert [reply.status for reply in wrong] == [401, 401]
    assert {reply.json()["error"] for reply in wrong} == {"wrong name or password"}
    assert len(server.board.waiters) == 0


# -- 4. the poll cap per address ----------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_poll_past_the_cap_goes_to_the_slow_lane_while_another_address_takes_the_fast_path(serve, paths):
    server = serve(max_polls_per_ip=2, slow_lane_interval=0.5)
    held = [await server.poll(START) for _ in range(2)]
    await parked(server, 2)

    over = await server.poll(START)
    await until(lambda: len(server.board.slow_lane) == 1, timeout=READ_TIMEOUT)
    other = await server.poll(START, source="127.0.0.2")
    await parked(server, 3)

    assert paths.taken == ["fast", "fast", "routed", "fast"] and paths.handlers == 1
    assert parked_kinds(server) == ["PollDelegate"] * 3
    assert server.app.limits.polls_held("127.0.0.1") == 3
    assert server.app.limits.polls_held("127.0.0.2") == 1

    await server.board.put("Juggling", "Kim", "Three balls")
    for client in [*held, other, over]:  # the slow-lane poll in its round
        assert titles(await client.reply()) == ["Juggling"]
    await until(lambda: server.app.limits.polls_held("127.0.0.1") == 0, timeout=READ_TIMEOUT)
    assert server.app.limits.polls_held("127.0.0.2") == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_fast_poll_whose_client_leaves_gives_its_place_back_and_stops_waiting(serve):
    server = serve(max_polls_per_ip=2)
    leaving, staying = await server.poll(START), await server.poll(START)
    await parked(server, 2)
    assert server.app.limits.polls_held("127.0.0.1") == 2

    leaving.close()
    await until(lambda: server.app.limits.polls_held("127.0.0.1") == 1, timeout=READ_TIMEOUT)

    assert parked_kinds(server) == ["PollDelegate"]
    again = await server.poll(START)  # the freed place is the fast path's again
    await parked(server, 2)
    assert parked_kinds(server) == ["PollDelegate", "PollDelegate"]
    await server.board.put("Juggling", "Kim", "Three balls")
    assert [titles(await client.reply()) for client in (staying, again)] == [["Juggling"]] * 2


@pytest.mark.gen_test(timeout=120)
async def test_an_answered_fast_poll_gives_its_place_back(serve):
    server = serve(max_polls_per_ip=2)
    client = await server.poll(START)
    await parked(server, 1)
    assert server.app.limits.polls_held("127.0.0.1") == 1

    await server.board.put("Juggling", "Kim", "Three balls")
    await client.reply()
    await until(lambda: server.app.limits.polls_held("127.0.0.1") == 0, timeout=READ_TIMEOUT)

    client.send("/talks?changesSince=0")  # answered at once: held, then given back
    assert (await client.reply()).status == 200
    await until(lambda: server.app.limits.polls_held("127.0.0.1") == 0, timeout=READ_TIMEOUT)


# -- 5. behind a proxy --------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_with_xheaders_the_cap_counts_the_address_the_proxy_names(serve, paths, caplog):
    server = serve(xheaders=True, max_polls_per_ip=1, slow_lane_interval=0.5)

    first = await server.poll(START, headers={"X-Real-Ip": "10.0.0.1"})
    second = await server.poll(START, headers={"X-Forwarded-For": "10.0.0.2"})
    await parked(server, 2)
    over = await server.poll(START, headers={"X-Real-Ip": "10.0.0.1"})
    await until(lambda: len(server.board.slow_lane) == 1, timeout=READ_TIMEOUT)

    assert paths.taken == ["fast", "fast", "routed"]
    limits = server.app.limits
    assert (limits.polls_held("10.0.0.1"), limits.polls_held("10.0.0.2"), limits.polls_held("127.0.0.1")) == (2, 1, 0)

    with caplog.at_level(logging.DEBUG, logger="tornado.access"):
        await server.board.put("Juggling", "Kim", "Three balls")
        for client in (first, second, over):
            assert titles(await client.reply()) == ["Juggling"]
        await until(lambda: limits.polls_held("10.0.0.1") == 0, timeout=READ_TIMEOUT)
    addresses = sorted(re.search(r"\((\S+)\)", r.getMessage()).group(1) for r in caplog.records if "changesSince" in r.getMessage())
    assert addresses == ["10.0.0.1", "10.0.0.1", "10.0.0.2"]


# -- 6. metrics and the access log ---------------------------------------------


ACCESS_LINE = re.compile(r"200 GET /talks\?changesSince=(\d+) \(127\.0\.0\.1\) \d+\.\d\dms")


@pytest.mark.gen_test(timeout=120)
async def test_each_fast_answer_is_counted_in_the_metrics_and_logged_once_at_debug_level(serve, paths, caplog):
    server = serve()
    client = await server.connect()

    with caplog.at_level(logging.DEBUG, logger="tornado.access"):
        client.send("/talks?changesSince=0")  # answered at once
        await client.reply()
        client.send(f"/talks?changesSince={START}")  # answered when woken
        await parked(server, 1)
        await server.board.put("Juggling", "Kim", "Three balls")
        await client.reply()
        client.send("/metrics")
        metrics = (await client.reply()).body.decode()

    assert paths.taken == ["fast", "fast", "routed"] and paths.handlers == 0
    assert 'talkserver_requests_total{code="200"} 2.0' in metrics.splitlines()
    assert 'talkserver_polls_answered_total{transport="long_poll"} 2.0' in metrics.splitlines()
    polls = [r for r in caplog.records if r.name == "tornado.access" and "changesSince" in r.getMessage()]
    assert [ACCESS_LINE.fullmatch(r.getMessage()).group(1) for r in polls] == ["0", str(START)]
    # A poll is not worth a line at the default level (10,000 per change)
    assert all(r.levelno == logging.DEBUG for r in polls)


# -- 7. shutting down ---------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_the_drain_answers_waiting_fast_polls_with_no_changes(serve):
    server = serve()
    clients = [await server.poll(START) for _ in range(3)]
    await parked(server, 3)
    assert parked_kinds(server) == ["PollDelegate"] * 3

    answered = await drain(server.http, server.app, write_grace=1.0)

    assert answered == 3
    for client in clients:
        reply = await client.reply()
        assert reply.status == 200 and reply.json() == {"serverTime": START, "talks": []}
        assert await client.closed_by_server()
    assert server.app.limits.polls_held("127.0.0.1") == 0


# -- 8. keep-alive and pipelining ---------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_one_connection_serves_polls_in_a_row_and_then_other_requests(serve, paths):
    server = serve()
    client = await server.connect()
    answers = []

    client.send("/talks?changesSince=0")
    answers.append(await client.reply())
    for title in ("One", "Two"):
        client.send(f"/talks?changesSince={server.board.store.head}")
        await parked(server, 1)
        await server.board.put(title, "Kim", "s")
        answers.append(await client.reply())
    client.send_raw(put_request("Three"))
    written = await client.reply()
    client.send("/talks/Three")
    read = await client.reply()

    assert paths.taken == ["fast", "fast", "fast", "routed", "routed"] and paths.handlers == 0
    assert [reply.status for reply in answers] == [200, 200, 200]
    assert [titles(reply) for reply in answers] == [[], ["One"], ["Two"]]
    assert written.status == 204
    assert read.status == 200 and read.json()["title"] == "Three" and read.json()["presenter"] == "Ada"
    assert server.app.limits.polls_held("127.0.0.1") == 0


@pytest.mark.gen_test(timeout=120)
async def test_pipelined_requests_behind_a_waiting_poll_are_answered_in_order(serve, paths):
    server = serve()
    client = await server.connect()

    client.send_raw(request(f"/talks?changesSince={START}") + request("/talks/Juggling"))
    await parked(server, 1)
    await server.board.put("Juggling", "Kim", "Three balls")
    poll, talk = await client.reply(), await client.reply()

    assert paths.taken == ["fast", "routed"]
    assert titles(poll) == ["Juggling"]
    assert talk.status == 200 and talk.json()["summary"] == "Three balls"  # read after the change


@pytest.mark.gen_test(timeout=120)
async def test_pipelined_polls_answered_at_once_come_back_in_order(serve, paths):
    server = serve()
    await server.board.put("One", "Kim", "s")
    middle = server.board.store.head
    await server.board.put("Two", "Kim", "s")
    client = await server.connect()

    client.send_raw(request("/talks?changesSince=0") + request(f"/talks?changesSince={middle}") + put_request("Three"))
    replies = [await client.reply() for _ in range(3)]

    assert paths.taken == ["fast", "fast", "routed"]
    assert [titles(reply) for reply in replies[:2]] == [["One", "Two"], ["Two"]]
    assert replies[2].status == 204


# -- 9. clients that reset their connection ---------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_client_resetting_its_connection_while_waiting_is_forgotten_and_the_others_are_answered(serve, caplog):
    server = serve()
    clients = [await server.poll(START) for _ in range(3)]
    await parked(server, 3)

    with caplog.at_level(logging.WARNING):
        reset(clients.pop(1).writer)
        await until(lambda: len(server.board.waiters) == 2, timeout=READ_TIMEOUT)
        await until(lambda: server.app.limits.polls_held("127.0.0.1") == 2, timeout=READ_TIMEOUT)
        await server.board.put("Juggling", "Kim", "Three balls")
        replies = [await client.reply() for client in clients]
        later = await (await server.poll(0)).reply()

    assert [titles(reply) for reply in replies] == [["Juggling"], ["Juggling"]]
    assert later.status == 200 and titles(later) == ["Juggling"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- 10. the next request on a connection the fast path answered ---------------
#
# After a fast answer the PollDelegate reads the connection's next request
# head itself (fastpolls._read_next) and hands anything but a plain poll
# back to Tornado.  Each case: the same two requests on one connection, to
# a fast server and to a handlers-only one; the second answers must be the
# same (only the Date may differ), and the fast server must route exactly
# those the fast path may not serve.

NEXT_REQUESTS = {
    # name: (the second request's bytes, the way it goes: "fast", "routed",
    # or None when Tornado's request parsing refuses it before any delegate).
    # Heads the lean read does not recognise but Tornado's parsing makes
    # plain (repeated headers, bare line feeds, a blank line first) still
    # go "fast", through Tornado's read and headers_received.
    "a plain poll": (request("/talks?changesSince=0"), "fast"),
    "a plain poll, header names in other cases": (
        b"GET /talks?changesSince=0 HTTP/1.1\r\nhOST: localhost\r\naccept: */*\r\n\r\n", "fast"),
    "a poll asking to close": (request("/talks?changesSince=0", headers={"Connection": "close"}), "routed"),
    "HEAD": (request("/talks?changesSince=0", method="HEAD"), "routed"),
    "HTTP/1.0": (request("/talks?changesSince=0", version="HTTP/1.0"), "routed"),
    "a Host not allowed": (request("/talks?changesSince=0", host="elsewhere.example"), "routed"),
    "a Host Tornado refuses": (request("/talks?changesSince=0", host="bad host"), None),
    "no Host": (request("/talks?changesSince=0", host=None), None),
    "a cursor that is not a number": (request("/talks?changesSince=soon"), "routed"),
    "Expect: 100-continue": (request("/talks?changesSince=0", headers={"Expect": "100-continue"}), "routed"),
    "a header sent twice": (request("/talks?changesSince=0", headers={"X-A": "1"}).replace(b"X-A: 1", b"X-A: 1\r\nX-A: 2"), "fast"),
    "bare line feeds": (b"GET /talks?changesSince=0 HTTP/1.1\nHost: localhost\n\n", "fast"),
    "a blank line first": (b"\r\n" + request("/talks?changesSince=0"), "fast"),
    "a body": (request("/talks?changesSince=0", headers={"Content-Length": "2"}, body=b"{}"), "routed"),
    "a write with a body": (put_request("Three"), "routed"),
    "a talk": (request("/talks/One"), "routed"),
}


async def answer_after_a_fast_poll(server: Server, second: bytes) -> tuple[Answer, bool]:
    """The answer to ``second`` sent after an answered poll on one
    connection, and whether the server then closed that connection."""
    await server.board.put("One", "Kim", "s")
    client = await server.connect()
    client.send("/talks?changesSince=0")
    first = await client.reply()
    assert titles(first) == ["One"]
    client.send_raw(second)
    reply = await client.reply(head_only=second.startswith(b"HEAD"))
    closes = reply.headers.get("connection", "").lower() == "close"
    if closes:
        assert await client.closed_by_server()
    return reply, closes


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("name", list(NEXT_REQUESTS))
async def test_the_next_request_on_a_fast_answered_connection_is_answered_as_the_handlers_answer_it(serve, paths, name):
    second, way = NEXT_REQUESTS[name]
    settings = {"allowed_hosts": ["localhost"]}
    fast, handlers = serve(fast_polls=True, **settings), serve(fast_polls=False, **settings)

    fast_reply, fast_closes = await answer_after_a_fast_poll(fast, second)
    handler_reply, handler_closes = await answer_after_a_fast_poll(handlers, second)

    assert paths.taken == ["fast"] + ([way] if way else [])
    assert paths.handed_back == (0 if name.startswith("a plain poll") else 1)
    assert fast_reply.without_date() == handler_reply.without_date()
    assert fast_closes == handler_closes
    await until(lambda: fast.app.limits.polls_held("127.0.0.1") == 0, timeout=READ_TIMEOUT)


@pytest.mark.gen_test(timeout=20)
async def test_a_connection_answered_by_the_fast_path_keeps_taking_the_fast_path_after_a_routed_request(serve, paths):
    server = serve()
    await server.board.put("One", "Kim", "s")
    client = await server.connect()
    replies = []

    for target in ("/talks?changesSince=0", "/talks/One", "/talks?changesSince=0", "/talks?changesSince=0"):
        client.send(target)
        replies.append(await client.reply())
    client.send(f"/talks?changesSince={server.board.store.head}")
    await parked(server, 1)
    await server.board.put("Two", "Kim", "s")
    replies.append(await client.reply())

    assert paths.taken == ["fast", "routed", "fast", "fast", "fast"] and paths.handlers == 0
    assert paths.handed_back == 1  # /talks/One; the polls after it are read by the delegate
    assert [reply.status for reply in replies] == [200] * 5
    assert [titles(reply) for reply in replies[2:]] == [["One"], ["One"], ["Two"]]
    assert replies[1].json()["title"] == "One"
    assert parked_kinds(server) == []


@pytest.mark.gen_test(timeout=20)
async def test_behind_a_proxy_every_poll_on_a_kept_alive_connection_counts_the_address_the_proxy_names(serve, paths):
    server = serve(xheaders=True, max_polls_per_ip=1, slow_lane_interval=0.5)
    client = await server.connect()
    limits = server.app.limits

    client.send("/talks?changesSince=0", headers={"X-Real-Ip": "10.0.0.1"})
    await client.reply()
    client.send(f"/talks?changesSince={START}", headers={"X-Real-Ip": "10.0.0.1"})
    await parked(server, 1)
    other = await server.poll(START, headers={"X-Forwarded-For": "10.0.0.1"})  # over 10.0.0.1's cap
    await until(lambda: len(server.board.slow_lane) == 1, timeout=READ_TIMEOUT)

    assert paths.taken == ["fast", "fast", "routed"]
    assert paths.handed_back == 1  # the second poll, to be read with its X-Real-Ip applied
    assert (limits.polls_held("10.0.0.1"), limits.polls_held("127.0.0.1")) == (2, 0)
    await server.board.put("Juggling", "Kim", "Three balls")
    assert titles(await client.reply()) == ["Juggling"] and titles(await other.reply()) == ["Juggling"]


# -- 11. the next head read without IOStream ------------------------------------
#
# Once a fast answer has left, the delegate takes the idle stream's read
# events (tornado_private.take_read_events) and reads a whole head in one
# read.  Anything else, a head in pieces, a client that leaves, bytes
# that come while a poll waits, goes back to IOStream.


class HeadReads:
    """How many heads IOStream read for the fast path (``_read_head``), and
    how many the delegate's own read took (``_events`` then ``_took``)."""

    def __init__(self, monkeypatch) -> None:
        self.by_iostream = self.by_delegate = 0
        read_head, events = PollDelegate._read_head, PollDelegate._events

        def counted_read_head(delegate, stream):
            self.by_iostream += 1
            read_head(delegate, stream)

        def counted_events(delegate, fileobj, events_):
            expecting = delegate.expecting
            events(delegate, fileobj, events_)
            if expecting and not delegate.expecting:
                self.by_delegate += 1
        monkeypatch.setattr(PollDelegate, "_read_head", counted_read_head)
        monkeypatch.setattr(PollDelegate, "_events", counted_events)


@pytest.fixture
def head_reads(monkeypatch):
    return HeadReads(monkeypatch)


def delegates_holding_events(io_loop) -> list:
    """The IOLoop's handler entries that are a PollDelegate's (taken read events)."""
    return [handler for _, handler in io_loop.handlers.values() if isinstance(getattr(handler, "__self__", None), PollDelegate)]


@pytest.mark.gen_test(timeout=20)
async def test_re_polls_on_a_connection_are_read_by_the_delegate_and_answered_in_turn(serve, paths, head_reads):
    server = serve()
    client = await server.connect()
    replies = []

    client.send("/talks?changesSince=0")
    replies.append(await client.reply())
    for title in ("One", "Two", "Three"):
        client.send(f"/talks?changesSince={server.board.store.head}")
        await parked(server, 1)
        await server.board.put(title, "Kim", "s")
        replies.append(await client.reply())

    assert paths.taken == ["fast"] * 4 and paths.handed_back == 0
    assert (head_reads.by_delegate, head_reads.by_iostream) == (3, 0)
    assert [titles(reply) for reply in replies] == [[], ["One"], ["Two"], ["Three"]]
    assert server.app.limits.polls_held("127.0.0.1") == 0


@pytest.mark.gen_test(timeout=20)
async def test_a_head_sent_in_pieces_is_read_by_iostream_and_answered_the_same(serve, paths, head_reads):
    server = serve()
    await server.board.put("One", "Kim", "s")
    client = await server.connect()
    client.send("/talks?changesSince=0")
    first = await client.reply()

    head = request("/talks?changesSince=0")
    for piece in (head[:9], head[9:30], head[30:]):
        client.send_raw(piece)
        await client.writer.drain()
        await asyncio.sleep(0.05)
    second = await client.reply()

    assert paths.taken == ["fast", "fast"] and paths.handed_back == 1  # the first piece, put back for IOStream
    assert head_reads.by_iostream == 1
    assert titles(first) == titles(second) == ["One"]
    assert second.body == first.body


@pytest.mark.gen_test(timeout=20)
async def test_a_client_that_leaves_between_polls_is_closed_and_its_descriptor_forgotten(serve, io_loop):
    server = serve()
    clients = []
    for _ in range(3):
        client = await server.connect()
        client.send("/talks?changesSince=0")
        await client.reply()
        clients.append(client)
    await until(lambda: len(delegates_holding_events(io_loop)) == 3, timeout=READ_TIMEOUT)

    clients[0].close()
    reset(clients[1].writer)
    await until(lambda: len(delegates_holding_events(io_loop)) == 1, timeout=READ_TIMEOUT)
    # New connections may reuse the descriptors the two left behind.
    later = [await server.poll(0) for _ in range(4)]
    replies = [await client.reply() for client in later]

    assert [reply.status for reply in replies] == [200] * 4
    assert len(delegates_holding_events(io_loop)) == 5  # the one left and the four new ones
    clients[2].send(f"/talks?changesSince={START}")
    await parked(server, 1)
    await server.board.put("Juggling", "Kim", "s")
    assert titles(await clients[2].reply()) == ["Juggling"]


@pytest.mark.gen_test(timeout=20)
async def test_a_request_sent_while_a_poll_waits_is_answered_after_it(serve, paths, head_reads):
    server = serve()
    client = await server.connect()
    client.send("/talks?changesSince=0")
    await client.reply()
    client.send(f"/talks?changesSince={START}")
    await parked(server, 1)

    client.send_raw(request(f"/talks?changesSince={START}") + request("/talks/Juggling"))
    await asyncio.sleep(0.1)  # read ahead by IOStream while the poll waits
    await server.board.put("Juggling", "Kim", "Three balls")
    replies = [await client.reply() for _ in range(3)]

    assert paths.taken == ["fast", "fast", "fast", "routed"]
    # The two heads sent ahead were read from IOStream's buffer, one after each answer.
    assert (head_reads.by_delegate, head_reads.by_iostream) == (1, 2)
    assert titles(replies[0]) == titles(replies[1]) == ["Juggling"]
    assert replies[2].status == 200 and replies[2].json()["summary"] == "Three balls"
