"""The start-up check: the installed Tornado does what talkserver reaches past its API for.

talkserver.wire.tornado_private holds every use of Tornado's private
state, and the fast path (talkserver.follow.fastpolls) relies on how
``HTTP1Connection`` behaves: it answers a poll without ``write_headers``,
then reads the connection's next request head while Tornado's own loop
for that connection waits, and puts back a head that is not a plain poll
(``unread``) for that loop to read.  Looking for names cannot tell whether
that still works in another Tornado release; using it can.

``refuse_unsupported()``, the first thing the ``talkserver`` command does,
runs a server on a port of 127.0.0.1 that the kernel picks and a client
against it, on an event loop of their own, and has each of those
functions, and that behaviour, do its work once:

- a plain poll answered by a delegate without ``write_headers`` (a
  direct send), the stream's read events taken from IOStream, the next
  head read by the delegate, the events given back and the head put
  back, then read and routed by Tornado; the connection's ``context``
  and ``params``;
- a handler's headers read, its answer sent as bytes of its own and the
  handler told so (nothing more may follow on the connection);
- TCP_NODELAY kept on across answers; a chunked answer seen as chunked; a
  large answer's queued bytes counted, through write queues made only
  when used (``lighten``); a connection closed after its
  answer although the client asked for keep-alive;
- an upload whose client leaves half-way, its body's failure dropped;
- the header timeout taken from the server, the listening socket added
  through talkserver's accept handler and closed again by ``stop()``.

It takes some milliseconds (``CHECK_SECONDS`` at most) and closes every
socket and its event loop before the command goes on.  When anything
fails, or the release is outside the range the tests ran on
(``SUPPORTED``), the command exits with status 2 and one line on stderr
naming what failed and the supported range.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys
from contextlib import contextmanager

import tornado
import tornado.httpserver
import tornado.httputil
import tornado.ioloop
import tornado.netutil
import tornado.web

from talkserver.wire.tornado_private import (
    add_listening_sockets, chunking, close_when_finished, drop_body_error, give_back_read_events, handle_events,
    header_limit, keeps_alive, keep_nodelay_on, LazyQueue, lighten, mark_headers_written, remote_address, response_headers, send_now,
    take_header_timeout, take_read_events, unread, unsent_bytes,
)

# The Tornado releases the tests ran on (noxfile.py runs the follow,
# fast-path and lifecycle tests on the oldest and the newest): from the
# first up to, not including, the second.
# 6.5.2 is the first release that answers a request with a missing, doubled
# or malformed Host with 400 (6.5.0 and 6.5.1 close the connection).
SUPPORTED = ((6, 5, 2), (6, 7, 0))
SUPPORTED_TEXT = "6.5.2 to 6.6"

# The longest the check waits for an answer before it fails; when all
# works it takes some tens of milliseconds.
CHECK_SECONDS = 3.0
_BIG = 256 * 1024  # an answer the small socket buffers below cannot take at once

FAST_ANSWER = "HTTP1Connection: an answer without write_headers, then the next request read"
CONTEXT = "HTTP1Connection.context (remote_address)"
PARAMS = "HTTP1Connection.params (header_limit, keeps_alive)"
READ_EVENTS = "IOLoop.handlers, readers, writers (a stream's read events taken and given back)"
UNREAD = "IOStream._read_buffer, _read_buffer_size (a head put back, read by Tornado)"
SEND_NOW = "IOStream.socket (a direct send)"
NODELAY = "HTTP1Connection toggling IOStream.set_nodelay"
HEADERS = "RequestHandler._headers"
HEADERS_WRITTEN = "RequestHandler._headers_written"
CHUNKING = "HTTP1Connection._chunking_output"
UNSENT = "IOStream._write_buffer"
LIGHT = "IOStream._write_buffer._buffers, _write_futures (queues made when first used)"
DISCONNECT = "HTTP1Connection._disconnect_on_finish"
BODY_FUTURE = "RequestHandler.on_connection_close and _body_future"
HEADER_TIMEOUT = "HTTPServer.conn_params.header_timeout"
LISTENING = "TCPServer._sockets, _handlers, _handle_connection"


class _Stop(Exception):
    """A step failed; the connection's state is unknown, so the check ends there."""


class _Check:
    """What the exchange found, touch by touch (``failed``: name -> what went wrong)."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}
        self.step = FAST_ANSWER  # the touch the client waits on now
        self.upload_started = asyncio.Event()
        self.upload_ended = asyncio.Event()
        self.log: list[str] = []  # what Tornado and asyncio logged meanwhile (_Quiet)

    def logged(self) -> str:
        """The first error logged meanwhile, as "; Tornado logged: ..." (or "")."""
        return f"; Tornado logged: {self.log[0]}" if self.log else ""

    def expect(self, touch: str, held: bool, what: str) -> None:
        if not held:
            self.failed.setdefault(touch, what)

    @contextmanager
    def touch(self, name: str):
        """Run a touch; an exception it raises fails it."""
        try:
            yield
        except Exception as e:  # any way a changed Tornado breaks it
            self.failed.setdefault(name, f"{type(e).__name__}: {e}")


class _FastProbe(tornado.httputil.HTTPMessageDelegate):
    """The fast path's part (fastpolls.PollDelegate): ``GET /poll`` answered
    without ``write_headers``, then the next head read here and put back for
    Tornado's loop; anything else to the Application's routing."""

    def __init__(self, app: "_ProbeApplication", server_conn, request_conn) -> None:
        self.app, self.server_conn, self.conn = app, server_conn, request_conn
        self.routed = None

    def headers_received(self, start_line, headers):
        if start_line.path != "/poll":
            self.routed = tornado.web.Application.start_request(self.app, self.server_conn, self.conn)
            return self.routed.headers_received(start_line, headers)
        check = self.app.check
        with check.touch(CONTEXT):
            remote = remote_address(self.conn)
            check.expect(CONTEXT, remote == "127.0.0.1", f"the client's address read as {remote!r}")
        with check.touch(PARAMS):
            limit = header_limit(self.conn)
            check.expect(PARAMS, isinstance(limit, int) and limit > 0 and keeps_alive(self.conn),
                         f"a head limit of {limit!r}, keep-alive {keeps_alive(self.conn)}")
        return None

    def data_received(self, chunk):
        return self.routed.data_received(chunk)

    def finish(self) -> None:
        if self.routed is not None:
            self.routed.finish()
            return
        check, stream = self.app.check, self.conn.stream
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npoll"
        with check.touch(SEND_NOW):
            check.expect(SEND_NOW, send_now(stream, answer) == len(answer), "the socket did not take a small answer")
        with check.touch(READ_EVENTS):
            check.expect(READ_EVENTS, take_read_events(stream, self._events), "an idle stream's read events were not taken")

    def _events(self, fileobj, events) -> None:
        """The next head, read as fastpolls.PollDelegate._events reads it."""
        check, stream = self.app.check, self.conn.stream
        with check.touch(READ_EVENTS):
            check.expect(READ_EVENTS, events == tornado.ioloop.IOLoop.READ, f"events {events!r} came, not READ")
            head = fileobj.recv(header_limit(self.conn))
            give_back_read_events(stream)
            if not head:
                handle_events(stream, fileobj, events)  # the client left: IOStream closes
                return
        with check.touch(UNREAD):
            unread(stream, head)
        with check.touch(FAST_ANSWER):
            self.conn.finish()

    def on_connection_close(self) -> None:
        if self.routed is not None:
            self.routed.on_connection_close()


class _Written(tornado.web.RequestHandler):
    """An answer sent as bytes of its own, the handler told it went out (wakeup.send_answer)."""

    def get(self) -> None:
        check, stream = self.application.check, self.request.connection.stream
        self.set_header("X-Check", "written")
        with check.touch(HEADERS):
            check.expect(HEADERS, ("X-Check", "written") in response_headers(self), "a header set is not there")
        nodelay = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        check.expect(NODELAY, nodelay != 0, "TCP_NODELAY went off after an answer")
        stream.write(b"HTTP/1.1 200 OK\r\nX-Check: written\r\nContent-Length: 7\r\n\r\nwritten")
        with check.touch(HEADERS_WRITTEN):
            mark_headers_written(self)
        self.finish()


class _Chunked(tornado.web.RequestHandler):
    """An answer of no length over HTTP/1.1: chunked (streams.py)."""

    async def get(self) -> None:
        check = self.application.check
        await self.flush()
        with check.touch(CHUNKING):
            check.expect(CHUNKING, chunking(self.request.connection), "an answer of no length is not seen as chunked")
        self.finish("x")


class _Big(tornado.web.RequestHandler):
    """An answer larger than the socket takes at once: the queued bytes counted (slowreaders.py)."""

    async def get(self) -> None:
        check, stream = self.application.check, self.request.connection.stream
        self.set_header("Content-Length", str(_BIG))
        self.write(b"b" * _BIG)
        flushed = self.flush()
        with check.touch(UNSENT):
            queued = unsent_bytes(stream)
            check.expect(UNSENT, 0 < queued <= _BIG, f"{queued} bytes counted as queued, of {_BIG}")
        await flushed
        with check.touch(UNSENT):
            check.expect(UNSENT, unsent_bytes(stream) == 0, "bytes counted as queued once all were sent")
        with check.touch(LIGHT):
            queues = (stream._write_buffer._buffers, stream._write_futures)
            check.expect(LIGHT, all(isinstance(queue, LazyQueue) and len(queue) == 0 for queue in queues),
                         f"the write queues are {[type(queue).__name__ for queue in queues]} after a queued answer left")
        self.finish()


class _Last(tornado.web.RequestHandler):
    """An answer after which the connection closes, keep-alive or not (streams.py)."""

    def get(self) -> None:
        with self.application.check.touch(DISCONNECT):
            close_when_finished(self.request.connection)
        self.finish("last")


@tornado.web.stream_request_body
class _Upload(tornado.web.RequestHandler):
    """An upload whose client leaves half-way (handlers.py)."""

    def data_received(self, chunk: bytes) -> None:
        self.application.check.upload_started.set()

    def put(self) -> None:
        self.finish()

    def on_connection_close(self) -> None:
        with self.application.check.touch(BODY_FUTURE):
            super().on_connection_close()
        # After Tornado's own coroutine has raised the departure (as handlers.py does).
        tornado.ioloop.IOLoop.current().add_callback(self._forget)

    def _forget(self) -> None:
        check = self.application.check
        with check.touch(BODY_FUTURE):
            error = drop_body_error(self.request)
            check.expect(BODY_FUTURE, error is not None and error.__traceback__ is None,
                         "the body's failure was not there to drop")
        check.upload_ended.set()


class _ProbeApplication(tornado.web.Application):
    """Every request goes to a ``_FastProbe`` first, as TalkApplication's go to a PollDelegate."""

    def __init__(self, check: _Check) -> None:
        super().__init__([("/written", _Written), ("/chunked", _Chunked), ("/big", _Big),
                          ("/last", _Last), ("/upload", _Upload)])
        self.check = check

    def start_request(self, server_conn, request_conn):
        return _FastProbe(self, server_conn, request_conn)


class _ProbeServer(tornado.httpserver.HTTPServer):
    """As talkserver.web.accept's: TCP_NODELAY kept on, light write queues; a small send buffer, so a large answer queues."""

    def handle_stream(self, stream, address) -> None:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        keep_nodelay_on(stream)
        with self.request_callback.check.touch(LIGHT):
            lighten(stream)
        super().handle_stream(stream, address)


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection with a small receive buffer (set before connecting, so it holds)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _answer(check: _Check, reader: asyncio.StreamReader, body: bytes, chunked: bool = False) -> None:
    """Read one answer; it must be a 200 with ``body`` (else the step fails and the check ends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if chunked:
        got = (await reader.readuntil(b"\r\n0\r\n\r\n")).split(b"\r\n")[1]
    else:
        length = re.search(rb"\r\ncontent-length: *([0-9]+)", head, re.I)
        got = await reader.readexactly(int(length.group(1))) if length else b""
    if not head.startswith(b"HTTP/1.1 200 ") or got != body:
        status = head.partition(b"\r\n")[0]
        check.expect(check.step, False, f"answered {status!r} with {got[:20]!r}")
        raise _Stop


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def _exchange(check: _Check, port: int) -> None:
    """The client's part: the requests in turn on one kept-alive connection, then an aborted upload."""
    reader, writer = await _connect(port)
    try:
        writer.write(_get("/poll"))
        await _answer(check, reader, b"poll")
        check.step = READ_EVENTS  # the next head comes to the taken read events
        writer.write(_get("/written"))
        await _answer(check, reader, b"written")
        check.step = HEADERS_WRITTEN  # bytes written after its answer show here
        writer.write(_get("/chunked"))
        await _answer(check, reader, b"x", chunked=True)
        check.step = UNSENT
        writer.write(_get("/big"))
        await _answer(check, reader, b"b" * _BIG)
        check.step = DISCONNECT
        writer.write(_get("/last"))
        await _answer(check, reader, b"last")
        check.expect(DISCONNECT, await reader.read() == b"", "the connection stayed open")
    finally:
        writer.close()
    check.step = BODY_FUTURE
    reader, writer = await _connect(port)
    try:
        writer.write(b"PUT /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n" + b"u" * 10)
        await check.upload_started.wait()
    finally:
        writer.close()
    await check.upload_ended.wait()


async def _loopback(check: _Check) -> None:
    """Serve the probe on a port of 127.0.0.1, run the exchange, and stop everything."""
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = _ProbeServer(_ProbeApplication(check), idle_connection_timeout=3600)
    try:
        with check.touch(HEADER_TIMEOUT):
            taken = take_header_timeout(server)
            check.expect(HEADER_TIMEOUT, taken == 3600, f"the header timeout read as {taken!r}, not 3600")
        with check.touch(LISTENING):
            add_listening_sockets(server, [sock], tornado.netutil.add_accept_handler)
        try:
            await asyncio.wait_for(_exchange(check, sock.getsockname()[1]), CHECK_SECONDS)
        except _Stop:
            pass
        except asyncio.TimeoutError:
            check.expect(check.step, False, f"no answer within {CHECK_SECONDS:g} s{check.logged()}")
        except (OSError, EOFError) as e:  # EOFError: asyncio's IncompleteReadError
            check.expect(check.step, False, f"the connection failed ({type(e).__name__}){check.logged()}")
    finally:
        server.stop()
        check.expect(LISTENING, sock.fileno() == -1, "TCPServer.stop() left the socket open")
        sock.close()
        await asyncio.wait_for(server.close_all_connections(), CHECK_SECONDS)


class _Quiet(logging.Handler):
    """Keeps what the ``tornado`` and ``asyncio`` loggers say during the check
    (a changed release logs what it breaks, with tracebacks), for the one
    line to quote instead of printing it."""

    LOGGERS = ("tornado", "asyncio")

    def __init__(self, check: _Check) -> None:
        super().__init__(logging.WARNING)
        self.check = check

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        text = f"{type(error).__name__}: {error}" if error is not None else record.getMessage()
        self.check.log.append(" ".join(text.split()))

    def __enter__(self) -> None:
        self.saved = []
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self.saved.append((logger, logger.propagate))
            logger.addHandler(self)
            logger.propagate = False

    def __exit__(self, *exc) -> None:
        for logger, propagate in self.saved:
            logger.removeHandler(self)
            logger.propagate = propagate


def missing() -> list[str]:
    """What of the above fails with the installed Tornado, tried over a loopback
    connection (empty: all works); quick, and leaves no socket or timer behind."""
    check = _Check()
    with _Quiet(check):
        try:
            asyncio.run(_loopback(check))
        except Exception as e:  # anything else a changed Tornado breaks
            check.expect("the loopback check", False, f"{type(e).__name__}: {e}{check.logged()}")
    return [f"{name} ({what})" for name, what in check.failed.items()]


def problem() -> str | None:
    """One line saying why the installed Tornado will not do, or None."""
    low, high = SUPPORTED
    if not low <= tuple(tornado.version_info[:3]) < high:
        return f"talkserver: needs Tornado {SUPPORTED_TEXT}, not {tornado.version}"
    failed = missing()
    if failed:
        text = "; ".join(failed).replace("\n", " ")
        return f"talkserver: needs Tornado {SUPPORTED_TEXT}; with the installed Tornado {tornado.version} this failed: {text}"
    return None


def refuse_unsupported() -> None:
    """Exit with status 2 and one line when the installed Tornado will not do."""
    line = problem()
    if line is not None:
        print(line, file=sys.stderr)
        raise SystemExit(2)
