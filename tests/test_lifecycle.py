"""The follow lifecycle's edges, for every transport: HEAD, the conditional
headers' corner cases, the end of an HTTP/1.0 stream, and a client that
leaves before its poll would be parked."""

import asyncio
import base64
import hashlib
import os

import pytest

from talkserver import make_app
from talkserver.access.auth import write_password_file
from talkserver.follow.conditional import if_none_match, requested_wait, ANY

from .harness import parse_answer, split_answer, until
from .sse import StreamClient

POLL_TIMEOUT = 30.0


@pytest.fixture
def settings(request, tmp_path):
    """Extra make_app() settings, by indirect parametrization: "slow password"."""
    if getattr(request, "param", None) == "handlers only":
        return {"fast_polls": False}
    if getattr(request, "param", None) == "slow password":
        path = tmp_path / "passwords"
        write_password_file(path, {"ada": slow_hash("secret")})
        return {"password_file": str(path)}
    return {}


@pytest.fixture
def app(store, settings):
    return make_app(store, poll_timeout=POLL_TIMEOUT, heartbeat=0, **settings)


@pytest.fixture
def board(app):
    return app.board


@pytest.fixture
def port(http_server, http_port):
    return http_port




async def exchange(port, method, path, headers=None, version="HTTP/1.1"):
    """The raw bytes of one answer on a connection the server closes after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} {version}", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def head_and_rest(raw):
    """The answer split as ``split_answer`` does, without its Date (which moves between two answers)."""
    status_line, headers, rest = split_answer(raw)
    headers.pop("date", None)
    return status_line, headers, rest


# -- HEAD ------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("path", ["/talks", "/talks/Unicycling", "/", "/healthz", "/metrics", "/talks/Nothing%20here"])
async def test_head_answers_gets_status_and_headers_without_a_body(port, board, path):
    await board.put("Unicycling", "Ada", "wheels")
    get = head_and_rest(await exchange(port, "GET", path))
    head = head_and_rest(await exchange(port, "HEAD", path))

    if path == "/metrics":
        # The counters move between the two requests (the GET is counted).
        get[1].pop("content-length"), head[1].pop("content-length")
    assert head[0] == get[0]
    assert head[1] == get[1]
    assert head[2] == b""
    assert get[2] != b""


@pytest.mark.gen_test
async def test_head_of_a_poll_with_nothing_new_answers_at_once_with_the_empty_answers_headers(port, board):
    await board.put("Unicycling", "Ada", "wheels")
    cursor = board.store.head
    status, headers, rest = head_and_rest(await exchange(port, "HEAD", f"/talks?changesSince={cursor}"))

    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "application/json; charset=UTF-8"
    assert int(headers["content-length"]) == len(board.feed.timeout_answer())
    assert rest == b""
    assert len(board.waiters) == 0
    assert board.store.all_talks()  # nothing changed


@pytest.mark.gen_test
async def test_head_with_a_wait_preference_answers_at_once_with_304(port, board):
    tag = f'"{board.store.head}"'
    status, headers, rest = head_and_rest(
        await exchange(port, "HEAD", "/talks", {"If-None-Match": tag, "Prefer": "wait=20"})
    )
    assert status.startswith("HTTP/1.1 304")
    assert headers["etag"] == tag
    assert rest == b""


@pytest.mark.gen_test
async def test_head_of_an_event_stream_sends_its_headers_and_ends(port, board, app):
    status, headers, rest = head_and_rest(await exchange(port, "HEAD", "/talks", {"Accept": "text/event-stream"}))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/event-stream"
    assert rest == b""
    assert len(app.following["stream"]) == 0


# -- conditional headers (RFC 9110, RFC 7240) ---------------------------------


def test_a_star_matches_everything_only_as_the_whole_field_value():
    assert if_none_match(["*"]) is ANY
    assert if_none_match([" * "]) is ANY
    assert if_none_match(["x*y"]) is None
    assert if_none_match(['"1", *']) == frozenset({'"1"'})
    assert if_none_match(['W/"1"', '"2"']) == frozenset({'"1"', '"2"'})


def test_prefer_wait_is_read_as_a_number_with_leading_zeros_and_capped():
    assert requested_wait(["wait=0000000001"], 90) == 1
    assert requested_wait(["wait=000"], 90) == 0
    assert requested_wait(["wait=" + "0" * 40 + "7"], 90) == 7
    assert requested_wait(["wait=123456789012"], 90) == 90
    assert requested_wait(["wait=45"], 30) == 30


@pytest.mark.gen_test
async def test_if_none_match_with_a_star_inside_a_value_is_not_a_match(port, board):
    await board.put("Unicycling", "Ada", "wheels")
    answer = parse_answer(await exchange(port, "GET", "/talks", {"If-None-Match": "x*y", "Prefer": "wait=20"}))
    assert answer.status == 200
    assert [t["title"] for t in answer.json()["talks"]] == ["Unicycling"]


@pytest.mark.gen_test
async def test_a_wait_with_leading_zeros_waits_that_many_seconds(port, board):
    tag = f'"{board.store.head}"'
    answer = parse_answer(
        await exchange(port, "GET", "/talks", {"If-None-Match": tag, "Prefer": "wait=0000000001"})
    )
    assert answer.status == 304
    assert answer.headers["preference-applied"] == "wait=1"


# -- the end of an HTTP/1.0 stream ----------------------------------------------


@pytest.mark.gen_test
@pytest.mark.parametrize("headers", [{}, {"Connection": "keep-alive"}])
async def test_an_http_1_0_stream_is_closed_when_the_server_ends_it(port, board, headers, app):
    before = len(app.following["stream"])
    client = await StreamClient.open(port, headers=headers, http10=True)
    await until(lambda: len(app.following["stream"]) > before)
    assert "transfer-encoding" not in client.headers

    app.following["stream"].end_all()

    assert await client.ended()
    client.close()


# -- a client that leaves before its poll is parked ------------------------------


def slow_hash(password):
    """A real scrypt hash whose check takes a while (p=16: sixteen times the work)."""
    salt = os.urandom(16)
    n, r, p = 2**14, 8, 16
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(digest)}"


WEBSOCKET = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version": "13"}
TRANSPORTS = {
    "long poll": lambda head: (f"/talks?changesSince={head}", {}),
    "conditional": lambda head: ("/talks", {"If-None-Match": f'"{head}"', "Prefer": "wait=20"}),
    "event stream": lambda head: (f"/talks?changesSince={head}", {"Accept": "text/event-stream"}),
    "websocket": lambda head: (f"/talks?changesSince={head}", WEBSOCKET),
}


@pytest.mark.gen_test
@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("settings", ["slow password"], indirect=True)
async def test_a_client_gone_during_a_slow_password_check_is_never_parked(port, app, board, transport):
    path, headers = TRANSPORTS[transport](board.store.head)
    headers = {**headers, "Authorization": "Basic " + base64.b64encode(b"ada:secret").decode()}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"] + [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    await asyncio.sleep(0)
    writer.close()  # gone before the check can end

    # The check succeeds and is remembered; the steps after it (parking
    # included) run in the same turn of the loop.
    await until(lambda: app.access.admits(headers["Authorization"]))
    assert len(board.waiters) == 0
    assert len(board.slow_lane) == 0
    assert sum(len(each) for each in app.following) == 0
    assert app.limits.polls_held("127.0.0.1") == 0


# -- Tornado's private state ------------------------------------------------------


def open_sockets() -> set[str]:
    """The sockets this process holds open ("socket:[inode]")."""
    links = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return {link for link in links if link.startswith("socket:")}


def test_the_installed_tornado_passes_the_start_up_check_and_it_leaves_nothing_behind():
    import threading

    from talkserver.wire import tornado_check

    sockets_before = open_sockets()
    threads_before = set(threading.enumerate())

    failed = tornado_check.missing()

    assert failed == []
    assert tornado_check.problem() is None
    assert open_sockets() - sockets_before == set()  # its server's and clients' are closed
    assert set(threading.enumerate()) - threads_before == set()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # its event loop, and so its timers, are gone


FAKE_TORNADO = (
    "import socket, sys, tornado, tornado.web, tornado.http1connection as h1;"
    " tornado.version_info = {version!r}; tornado.version = {text!r};"
    "{extra} from talkserver.command.cli import main; main(['talkserver', '--port=0'])"
)
# A release that renamed HTTP1Connection.context: Tornado's own code still
# runs (HTTPServerRequest reads it with a default), the fast path's does not.
NO_CONTEXT = (
    "h1.HTTP1Connection.context = property(lambda self: self.__getattribute__('request_context'),"
    " lambda self, value: self.__dict__.__setitem__('request_context_', value));"
)
# A release that turns Nagle's algorithm back on for the socket itself,
# not through IOStream.set_nodelay.
NAGLE_ON_THE_SOCKET = (
    "finish_request = h1.HTTP1Connection._finish_request;"
    "h1.HTTP1Connection._finish_request = lambda self, future: (finish_request(self, future),"
    " self.stream is not None and not self.stream.closed()"
    " and self.stream.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0));"
)

# A release whose IOLoop dispatches a descriptor's events from a table of
# its own, not from ``handlers``: taking a stream's read events changes nothing.
OWN_DISPATCH = (
    "import tornado.platform.asyncio as pa; add = pa.BaseAsyncIOLoop.add_handler;"
    "pa.BaseAsyncIOLoop.add_handler = lambda self, fd, handler, events: (add(self, fd, handler, events),"
    " self.__dict__.setdefault('own', {}).__setitem__(self.split_fd(fd)[0], handler))[0];"
    "pa.BaseAsyncIOLoop._handle_events = lambda self, fd, events: self.own[fd](self.handlers[fd][0], events);"
)


@pytest.mark.parametrize("version, text, extra, says", [
    ((6, 7, 0, 0), "6.7.0", "", "needs Tornado 6.5.2 to 6.6, not 6.7.0"),
    ((6, 5, 1, 0), "6.5.1", "", "needs Tornado 6.5.2 to 6.6, not 6.5.1"),
    ((6, 5, 2, 0), "6.5.2", "del tornado.web.RequestHandler.on_connection_close;", "no attribute 'on_connection_close'"),
    ((6, 5, 2, 0), "6.5.2", NO_CONTEXT, "this failed: HTTP1Connection.context (remote_address) (AttributeError"),
    ((6, 5, 2, 0), "6.5.2", NAGLE_ON_THE_SOCKET,
     "this failed: HTTP1Connection toggling IOStream.set_nodelay (TCP_NODELAY went off after an answer)"),
    ((6, 5, 2, 0), "6.5.2", OWN_DISPATCH,
     "this failed: IOLoop.handlers, readers, writers (a stream's read events taken and given back) (no answer within 3 s"),
], ids=["a later release", "an earlier release", "no on_connection_close", "no HTTP1Connection.context",
        "Nagle on the socket", "events dispatched from another table"])
def test_a_tornado_without_what_talkserver_needs_is_refused_in_one_line(version, text, extra, says):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FAKE_TORNADO.format(version=version, text=text, extra=extra)],
        capture_output=True, text=True, timeout=60,
    )

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert done.stderr.startswith("talkserver: needs Tornado 6.5.2 to 6.6")
    assert "Traceback" not in done.stderr


def test_setup_cfg_the_start_up_check_and_nox_name_the_same_tornado_releases():
    import ast
    import configparser
    import re
    from pathlib import Path

    from talkserver.wire import tornado_check

    root = Path(__file__).resolve().parents[1]
    setup = configparser.ConfigParser()
    setup.read(root / "setup.cfg")
    [required] = [line for line in setup["options"]["install_requires"].splitlines() if line.startswith("tornado")]
    tested = ast.literal_eval(re.search(r"^TORNADO_RELEASES = (\[.*\])$", (root / "noxfile.py").read_text(), re.M)[1])
    (low_major, low_minor, low_patch), (high_major, high_minor, _) = tornado_check.SUPPORTED
    oldest, newest = tested

    assert required == f"tornado>={low_major}.{low_minor}.{low_patch},<{high_major}.{high_minor}"
    assert oldest == f"{low_major}.{low_minor}.{low_patch}"  # the oldest release admitted is tested,
    assert newest.startswith(f"{high_major}.{high_minor - 1}.")  # and one of the last minor admitted


# -- the access log -------------------------------------------------------------------


@pytest.mark.gen_test
async def test_polls_are_counted_not_logged_while_writes_refusals_and_reads_are_logged(port, board, caplog, app):
    import logging

    head = board.store.head
    with caplog.at_level(logging.INFO, logger="tornado.access"):
        poll = asyncio.ensure_future(exchange(port, "GET", f"/talks?changesSince={head}"))
        tag = f'"{head}"'
        conditional = asyncio.ensure_future(
            exchange(port, "GET", "/talks", {"If-None-Match": tag, "Prefer": "wait=20"})
        )
        await until(lambda: len(board.waiters) == 2)
        stream = await StreamClient.open(port)
        await until(lambda: len(app.following["stream"]) == 1)
        await board.put("Logged", "Ada", "s")
        assert b"Logged" in await poll and b"Logged" in await conditional
        await stream.event()
        stream.close()
        await until(lambda: len(app.following["stream"]) == 0)
        put = await exchange(port, "PUT", "/talks/Written")  # no body: 400
        read = await exchange(port, "GET", "/talks")

    assert put.startswith(b"HTTP/1.1 400") and read.startswith(b"HTTP/1.1 200")
    lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert any(line.startswith("400 PUT /talks/Written") for line in lines)
    assert any(line.startswith("200 GET /talks (") for line in lines)
    assert not any("changesSince" in line for line in lines)
    assert sum(line.startswith("200 GET /talks (") for line in lines) == 1  # the plain read only
    await until(lambda: 'talkserver_polls_answered_total{transport="stream"} 1.0' in board.metrics.render())
    metrics = board.metrics.render().splitlines()
    assert 'talkserver_polls_answered_total{transport="long_poll"} 1.0' in metrics
    assert 'talkserver_polls_answered_total{transport="conditional"} 1.0' in metrics


# -- one lifecycle, every transport -----------------------------------------------------


FOLLOWERS = {
    # name: (settings, transport counted, request)
    "fast path": (None, "long_poll", lambda head: (f"/talks?changesSince={head}", {})),
    "handler long poll": ("handlers only", "long_poll", lambda head: (f"/talks?changesSince={head}", {})),
    "conditional": (None, "conditional", lambda head: ("/talks", {"If-None-Match": f'"{head}"', "Prefer": "wait=20"})),
    "event stream": (None, "stream", lambda head: ("/talks", {"Accept": "text/event-stream"})),
    "websocket": (None, "websocket", lambda head: ("/talks", WEBSOCKET)),
}


def polls_answered(board, transport):
    line = f'talkserver_polls_answered_total{{transport="{transport}"}} '
    return sum(float(x[len(line):]) for x in board.metrics.render().splitlines() if x.startswith(line))


@pytest.mark.gen_test
@pytest.mark.parametrize("settings, transport, request_for", list(FOLLOWERS.values()), ids=list(FOLLOWERS), indirect=["settings"])
async def test_every_transport_is_admitted_parked_delivered_released_once_and_counted_once(
    port, app, board, transport, request_for
):
    path, headers = request_for(board.store.head)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"] + [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    # admitted and parked: counted against its address, waiting
    await until(lambda: len(board.waiters) + sum(len(each) for each in app.following) == 1)
    assert app.limits.polls_held("127.0.0.1") == 1

    # delivered: the change reaches it
    await board.put("Delivered", "Ada", "s")
    seen = b""
    while b"Delivered" not in seen:
        seen += await asyncio.wait_for(reader.read(65536), 30)
    assert seen.startswith(b"HTTP/1.1 101 " if transport == "websocket" else b"HTTP/1.1 200 OK")

    # released exactly once and counted once, whether the answer ended the
    # request (polls) or the client's leaving did (a stream)
    writer.close()
    await until(lambda: app.limits.polls_held("127.0.0.1") == 0 and polls_answered(board, transport) == 1)
    assert len(board.waiters) + len(board.slow_lane) + sum(len(each) for each in app.following) == 0
    assert app.limits._polls == {} and app.limits._poll_address == {}


# -- declared parts --------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_local_store_has_every_hook_of_the_store_contract_with_its_default(tmp_path):
    from talkserver.stores import MemoryStore, SQLiteStore, Store
    from talkserver.operation.metrics import Metrics

    for store in (MemoryStore(), SQLiteStore(str(tmp_path / "talks.db"))):
        assert Store in type(store).__mro__  # the hooks' defaults come from the contract
        assert store.on_change is None
        await store.catch_up()  # nothing to catch up with
        assert await store.ping() is True
        metrics = Metrics()
        store.register_metrics(metrics)
        assert metric_families(metrics) == metric_families(Metrics())  # it registered nothing
        assert store.health() is None  # no connection to describe in /healthz
        await store.close()


def metric_families(metrics) -> set[str]:
    """The names of the metric families ``metrics`` exports (their values move: process CPU)."""
    return {line.split()[2] for line in metrics.render().splitlines() if line.startswith("# TYPE ")}


def test_the_applications_services_are_declared_on_its_class(app):
    from talkserver.web.app import TalkApplication

    declared = TalkApplication.__annotations__
    for name in ("board", "following", "metrics", "admission", "limits", "access", "slow_readers", "draining"):
        assert name in declared
        assert name in vars(app) or name in vars(TalkApplication)
    assert app.limits is app.admission.limits and app.metrics is app.board.metrics
    assert app.draining is False


# -- light write queues (tornado_private.lighten) ----------------------------------


def test_a_lazy_queue_does_what_iostream_asks_of_a_deque():
    from talkserver.wire.tornado_private import LazyQueue

    queue = LazyQueue()
    assert not queue and len(queue) == 0 and list(queue) == []
    with pytest.raises(IndexError):
        queue[0]  # _StreamBuffer.peek counts on this when nothing is queued
    with pytest.raises(IndexError):
        queue.popleft()

    for item in ("a", "b", "c"):
        queue.append(item)
    assert queue and len(queue) == 3 and (queue[0], queue[-1]) == ("a", "c") and list(queue) == ["a", "b", "c"]
    assert [queue.popleft(), queue.popleft()] == ["a", "b"]
    assert queue.popleft() == "c" and not queue and queue._items is None  # the deque goes with the last item
    queue.append("d")
    queue.clear()
    assert not queue and list(queue) == []


@pytest.mark.gen_test(timeout=20)
async def test_a_slow_readers_large_answer_goes_through_light_write_queues_whole(app, board):
    import json
    import re
    import socket

    import tornado.netutil

    from talkserver.web.accept import HTTPServer
    from talkserver.wire.tornado_private import LazyQueue

    summary = "x" * 300_000  # far more than the socket takes at once
    await board.put("Big", "Kim", summary)
    http = HTTPServer(app)  # the talkserver command's
    [listening] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    http.add_sockets([listening])
    port = listening.getsockname()[1]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=client, limit=1024)
    try:
        await until(lambda: len(http._connections) == 1, timeout=5)
        [conn] = http._connections
        conn.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # so that the answer queues
        writer.write(b"GET /talks?changesSince=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        # The answer waits, queued, for the client to read.
        await until(lambda: any(conn.stream._write_buffer for conn in http._connections), timeout=5)
        [stream] = [conn.stream for conn in http._connections]
        queues = (stream._write_buffer._buffers, stream._write_futures)
        assert all(isinstance(queue, LazyQueue) for queue in queues) and queues[0]
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head)[1]))
        await until(lambda: not stream._write_buffer, timeout=5)
        assert [len(queue) for queue in queues] == [0, 0] and queues[0]._items is None
    finally:
        writer.close()
        http.stop()

    assert json.loads(body)["talks"][0]["summary"] == summary
