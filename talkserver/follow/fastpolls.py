"""The fast path for plain long polls: ``GET /talks?changesSince=T`` without
a RequestHandler.

Every change is followed by every waiting client asking again, 10,000
requests within a second or two.  Through Tornado's routing and a
``RequestHandler`` each cost several times what the Node peer spends
(the request object, the handler, its coroutine, prepare, finish, the
header rendering), and at a change every 2.5 s the server could not take
them back before the next change came (docs/benchmarks.md, "Fan-out at a
steady rate").  The wake-up itself was never the trouble.

So ``TalkApplication.start_request`` (app.py) hands every request first
to a ``PollDelegate``, an ``HTTPMessageDelegate`` in Tornado's routing
interface.  When the request is a plain poll it serves it itself: answers
at once if there is news, else parks it in the board's ``Waiters`` as the
handler would, and answers it through the same shared, pre-framed bytes
(wakeup.py).  Anything else, and any plain poll that needs more than the
common case (a body, a password not yet seen, a cursor ahead of this
process, an address at its poll cap, ``Connection: close``, HTTP/1.0, an
event stream, Tornado's compress_response transform, a guard refusal), is passed whole to Tornado's
routing and the handlers in handlers.py, which answer it exactly as
before.  So the fast path only ever answers 200 with the body the handler
would send, with the same headers (a large answer gzip-compressed for a
client that accepts it, from the same Feed cache: wakeup.encoded); every
refusal, limit and error stays in one place.

The connection reads its next request only once the answer has left the
process (``_finish``): a client that pipelines polls and never reads
holds one answer here, as Tornado's own ``finish()`` would have it.

What a parked poll keeps is this one small object plus Tornado's
connection; the handler's request, handler and coroutine are never made,
which is also most of a waiting client's memory.

Once it has answered, a ``PollDelegate`` reads its connection's next
request head itself (``_read_next``) instead of handing the connection
back to Tornado's request loop, whose coroutine, connection object,
header parsing and delegate cost as much again as the answer.  A head
that is a plain poll, recognised by one regular expression over the raw
bytes and then put through the very checks above, is served by the same
delegate; any other head is put back in the stream's read buffer
(tornado_private.unread) and Tornado's loop reads it as if the fast path
had never looked.

Even IOStream's own read costs a Future, a failed read before the client
has asked again, and its buffer's bookkeeping.  So while the stream is
idle the delegate takes its read events (tornado_private.take_read_events)
and reads the head with one ``recv`` (``_events``); a head in pieces,
bytes that come while a poll waits, a client that leaves, a queued
answer: each goes back to IOStream, which deals with it as it always has.

The bookkeeping after an answer (releasing the poll's place, counting it
in /metrics) runs once the wake loop is over, for all its polls together
(``_settle``).
"""

from __future__ import annotations

import re
import time

from tornado.httputil import HTTPHeaders, RequestStartLine
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.log import app_log

from talkserver.access.admission import RequestView
from talkserver.follow import lifecycle, wakeup
from talkserver.wire import tornado_private
from talkserver.wire.compression import accepts_gzip
from talkserver.wire.headers import poll_answer_head
from talkserver.wire.validation import BadInput, parse_cursor

LONG_POLL = "long_poll"  # the transport's name (longpolls.LongPolls)
PREFIX = "/talks?changesSince="
# Host values the fast path takes as they are: a name or address and a
# port.  Anything else (none, several, odd characters) goes to Tornado,
# whose request object refuses what RFC 9112 says to refuse.
_PLAIN_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?", re.ASCII)

# The end of a request head, as Tornado's HTTP1Connection looks for it.
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# A whole head the lean read may serve: a GET of the poll target over
# HTTP/1.1, then header lines of token characters, printable values, CRLF
# only.  Anything else (other methods, bare LFs, folded or odd lines) is
# handed back to Tornado, which reads it exactly as it would have.
_PLAIN_HEAD = re.compile(
    r"GET (/talks\?changesSince=[!-~]*) HTTP/1\.1\r\n((?:[A-Za-z0-9-]+:[\t -~]*\r\n)*)\r\n", re.ASCII
)


# The most one read takes of a head the fast path waits for (Tornado's
# largest default head); a longer one goes to IOStream, which refuses it.
_HEAD_READ = 65536
_READ = IOLoop.READ

# Polls answered in the current wake loop, finished together after it.
_answered: list["PollDelegate"] = []


def _settle() -> None:
    """Finish the polls the wake loop answered: each one's bookkeeping, and
    the count in /metrics once per Application."""
    batch = _answered[:]
    del _answered[:]
    counted: dict = {}  # Application -> polls answered
    logged: dict = {}  # Application -> whether its polls get access-log lines
    for poll in batch:
        app = poll.app
        if app not in counted:
            counted[app] = 0
            logged[app] = app.polls_logged()
        counted[app] += 1
        try:
            poll._finish(logged[app])
        except Exception:
            # One poll's trouble must not leave the others unfinished.
            app_log.exception("finishing an answered poll failed")
    for app, answered in counted.items():
        app.count_answers(200, LONG_POLL, answered)


# How many raw heads of plain polls an Application remembers (PollDelegate.heads).
MAX_PLAIN_HEADS = 64

# Headers HTTPServer(xheaders=True) reads the client's address or scheme
# from, applying them to the connection for one request only when
# Tornado reads that request; a head with any of them is left to Tornado.
_PROXY_HEADERS = ("x-forwarded-for", "x-real-ip", "x-scheme", "x-forwarded-proto")


class RawHeaders(dict):
    """The header lines of a head the lean read took, as far as the fast
    path's checks ask them (``in``, ``get``, ``get_all``, names in any case)."""

    __slots__ = ("lines",)

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name.lower())

    def get_all(self):
        return self.lines


def raw_headers(block: str) -> RawHeaders | None:
    """The headers of ``block`` (the lines ``_PLAIN_HEAD`` matched), or
    None when a name repeats (left to Tornado, which joins them)."""
    headers = RawHeaders()
    lines = []
    for line in block.split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        value = value.strip(" \t")
        key = name.lower()
        if key in headers.keys():
            return None
        dict.__setitem__(headers, key, value)
        lines.append((name, value))
    headers.lines = lines
    return headers


class PollDelegate:
    """One request, as Tornado's ``HTTPMessageDelegate``: a plain long poll
    served here, or anything else passed on to the Application's routing.

    A parked poll is a waiter (waiters.py): ``cursor`` and ``deliver``.
    """

    __slots__ = (
        "app", "heads", "server_conn", "conn", "routed", "cursor", "address", "target", "started", "gone", "gzip",
        "reads", "expecting", "all_sent", "__weakref__",
    )

    def __init__(self, app, server_conn: object, request_conn, heads: dict) -> None:
        self.app = app
        # Raw heads the lean read took before, and what they asked for (one
        # dict per Application): a busy board's re-polls repeat a few heads
        # (the same headers, the same cursor) thousands of times per change,
        # so each is matched, parsed and put to the admission policy once.
        # What varies per connection (the address's cap) and with the store
        # (a cursor ahead of it) is asked every time, in _hold.  Only heads
        # that were taken are kept, at most MAX_PLAIN_HEADS: a client making
        # up new ones only pushes the others out.
        self.heads = heads
        self.server_conn = server_conn
        self.conn = request_conn
        # Tornado's own delegate for this request, once it is passed on.
        self.routed = None
        self.gone = False
        # Whether the stream's events come to _events (take_read_events),
        # and whether a request head is awaited there.
        self.reads = self.expecting = False
        idle = app.idle
        if idle.timeout:
            idle.waiting[request_conn] = idle.tick  # waiting for headers (talkserver.wire.idle)

    # -- HTTPMessageDelegate ---------------------------------------------

    def headers_received(self, start_line: RequestStartLine, headers: HTTPHeaders):
        self.app.idle.waiting.pop(self.conn, None)
        if self._take(start_line.method, start_line.version, start_line.path, headers):
            return None
        self.routed = self.app.route_request(self.server_conn, self.conn)
        return self.routed.headers_received(start_line, headers)

    def _take(self, method: str, version: str, target: str, headers) -> bool:
        """Whether this request is a plain poll the fast path serves and the
        admission policy lets through at once; if so it is counted against
        its address and its cursor noted."""
        plain = self._plain(method, version, target, headers)
        return plain is not None and self._hold(*plain)

    def _plain(self, method: str, version: str, target: str, headers) -> tuple[str, int, bool] | None:
        """(target, cursor, gzip) of a plain poll that the admission policy
        lets through at once, from what the request says alone; else None."""
        cursor = self._plain_poll_cursor(method, version, target, headers)
        if cursor is None:
            return None
        # The admission policy's one question (it reads what the request
        # says, not where it comes from, so a head's answer can be kept).
        view = RequestView(method, target, headers, "")
        if not self.app.admission.admits_at_once(view):
            return None
        return target, cursor, accepts_gzip(headers.get("Accept-Encoding"))

    def _hold(self, target: str, cursor: int, gzip: bool) -> bool:
        """Take the poll if its cursor is not ahead of this process and its
        address is under the cap (past it the handlers' slow lane, or their
        429, takes it); count it and note what it asked."""
        if cursor > self.app.board.store.head:
            return False  # the handler waits for this process to catch up
        address = tornado_private.remote_address(self.conn)
        if not self.app.admission.hold_follower_under_cap(self, address):
            return False
        self.cursor = cursor
        self.address = address
        self.target = target
        self.gzip = gzip
        self.started = time.monotonic()
        self.gone = False
        return True

    def data_received(self, chunk: bytes):
        # A plain poll has no body, so only a routed request gets here.
        return self.routed.data_received(chunk)

    def finish(self) -> None:
        if self.routed is not None:
            self.routed.finish()
            return
        board = self.app.board
        body = board.feed.since(self.cursor)
        if body is not None:
            self.deliver(body)
            return
        self.conn.set_close_callback(self.on_close)
        if not lifecycle.park(board.waiters, self, self.conn.stream):
            self.on_close()  # gone already: give the slot back, send nothing

    def on_connection_close(self) -> None:
        if self.routed is not None:
            self.routed.on_connection_close()
        else:
            self.on_close()

    # -- the waiter ------------------------------------------------------

    def deliver(self, body: bytes) -> None:
        """Send this poll its answer now; the rest waits until after the
        wake loop (``_settle``), as for the handlers' polls."""
        # A large answer goes gzip-compressed to a client that accepts it,
        # from the same Feed cache as the handlers' (wakeup.encoded).
        head, body = wakeup.encoded(self.app.board.feed, poll_answer_head(), body, self.gzip)
        self.all_sent = wakeup.send_answer(self.conn.stream, head, body)
        if not _answered:
            wakeup.after_wake(_settle)
        _answered.append(self)

    def on_close(self) -> None:
        """The client went away while its poll waited: forget it, send nothing."""
        if self.gone:
            return
        self.gone = True
        self.app.board.waiters.forget(self)
        lifecycle.release(self.app, self)

    def _finish(self, logged: bool) -> None:
        """What follows an answer sent (once per poll, after the wake loop);
        ``logged``: whether polls get an access-log line."""
        app = self.app
        if self.gone:
            lifecycle.release(app, self)
            return
        self.gone = True
        conn = self.conn
        stream = conn.stream
        conn.set_close_callback(None)
        if logged:
            app.log_line(200, "GET", self.target, self.address, time.monotonic() - self.started, LONG_POLL)
        queued = not self.all_sent and stream.writing()
        # SlowReaders watches the stream only when something is left to send.
        lifecycle.release(app, self, stream if queued else None)
        if queued:
            # Back-pressure: what the socket did not take is queued, so the
            # next request on this connection is read only once it has
            # gone (a client that pipelines and never reads then holds one
            # answer, not one per request).  IOStream.write(b"") resolves
            # once everything written before it is sent.
            self._give_back()
            stream.write(b"").add_done_callback(self._sent)
        else:
            # The answer is in the kernel's hands: read the next request.
            self._read_next()

    def _sent(self, future) -> None:
        if future.exception() is None:
            self._read_next()
        # else the client left: Tornado ends the connection by itself.

    # -- the next request on this connection -----------------------------

    def _read_next(self) -> None:
        """Read the connection's next request head here, not in Tornado's
        request loop, which still waits for this request to finish.

        The stream's close callback is still Tornado's (set while it waits),
        so a client that leaves, the idle timeout, a head over
        ``max_header_size`` or a shutdown each close the stream and end
        Tornado's loop as they would have; nothing is left to do here then.

        Most often the stream is idle, and its read events come to
        ``_events`` (``tornado_private.take_read_events``), which takes a
        whole head in one read; otherwise (bytes already read ahead, a
        queued answer) IOStream reads it (``_read_head``).
        """
        conn = self.conn
        stream = conn.stream
        if stream is None or stream.closed():
            return  # the client left: Tornado ends the connection by itself
        idle = self.app.idle
        if idle.timeout:
            idle.waiting[conn] = idle.tick  # waiting for headers (talkserver.wire.idle)
        if self.reads or tornado_private.take_read_events(stream, self._events):
            self.reads = self.expecting = True
        else:
            self._read_head(stream)

    def _read_head(self, stream) -> None:
        """The next head, read by IOStream (anything the lean read does not take)."""
        try:
            head = stream.read_until_regex(_HEAD_END, max_bytes=tornado_private.header_limit(self.conn))
        except StreamClosedError:
            return
        head.add_done_callback(self._head_read)

    def _give_back(self) -> None:
        """Let IOStream handle the stream's events again."""
        if self.reads:
            self.reads = self.expecting = False
            stream = self.conn.stream
            if stream is not None:  # (None once detached: nothing to give back to)
                tornado_private.give_back_read_events(stream)

    def _events(self, fileobj, events: int) -> None:
        """The stream's events while the fast path holds them: a head it was
        waiting for is read here; anything else goes back to IOStream, which
        reads what came (a client pipelining ahead, Tornado then reads it
        when asked) or notices that the client left."""
        stream = self.conn.stream
        if not self.expecting or events != _READ or stream is None:
            self._give_back()
            if stream is not None:
                tornado_private.handle_events(stream, fileobj, events)
            return
        try:
            data = fileobj.recv(_HEAD_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # The client left (or its connection failed): as IOStream would.
            self._give_back()
            stream.close()
            return
        rest = b""
        plain = self.heads.get(data)
        if plain is None:
            end = _HEAD_END.search(data)
            if end is None or end.end() > tornado_private.header_limit(self.conn):
                # Part of a head, or one too long: IOStream reads on from
                # what came, as it would have all along.
                self._give_back()
                tornado_private.unread(stream, data)
                self._read_head(stream)
                return
            # A body or pipelined requests may follow the head.
            data, rest = data[:end.end()], data[end.end():]
        self.expecting = False
        self.app.idle.waiting.pop(self.conn, None)
        self._took(data, plain, rest)

    def _head_read(self, future) -> None:
        self.app.idle.waiting.pop(self.conn, None)
        if future.exception() is not None:
            return  # the stream is closed (see _read_next)
        self._took(future.result(), None)

    def _took(self, head: bytes, plain: tuple[str, int, bool] | None, rest: bytes = b"") -> None:
        """Serve ``head`` (one whole request head; ``plain``: what it asked,
        when known; ``rest``: what came after it) if it is a plain poll,
        else hand it all to Tornado."""
        if plain is None:
            plain = self._plain_head(head)
            if plain is not None:
                known = self.heads
                if len(known) >= MAX_PLAIN_HEADS:
                    known.clear()
                known[head] = plain
        stream = self.conn.stream
        if plain is not None and self._hold(*plain):
            if rest:
                # Requests sent ahead wait in IOStream's buffer, read after this answer.
                self._give_back()
                tornado_private.unread(stream, rest)
            self.finish()
            return
        # Not ours: Tornado reads this head again and answers it as usual.
        self._give_back()
        tornado_private.unread(stream, head + rest)
        self.conn.finish()

    def _plain_head(self, head: bytes) -> tuple[str, int, bool] | None:
        """``_plain`` for a raw head the lean read took, or None."""
        match = _PLAIN_HEAD.fullmatch(head.decode("latin1"))
        if match is None:
            return None
        headers = raw_headers(match.group(2))
        if headers is None or any(dict.__contains__(headers, name) for name in _PROXY_HEADERS):
            return None
        return self._plain("GET", "HTTP/1.1", match.group(1), headers)

    # -- which requests are plain polls ----------------------------------

    def _plain_poll_cursor(self, method: str, version: str, target: str, headers) -> int | None:
        """The cursor of a plain long poll the fast path may answer; None
        for any other request.  ``headers``: HTTPHeaders, or the lean
        read's RawHeaders."""
        if (
            method != "GET"
            or version != "HTTP/1.1"
            or not target.startswith(PREFIX)
            or "Content-Length" in headers
            or "Transfer-Encoding" in headers
            or "Expect" in headers
            or "close" in headers.get("Connection", "").lower()
            or self.app.following.pick_for(headers, True).name != LONG_POLL
        ):
            return None
        try:
            cursor = parse_cursor(target[len(PREFIX):])
        except BadInput:
            return None
        host = headers.get("Host")
        if host is None or not _PLAIN_HOST.fullmatch(host) or not tornado_private.keeps_alive(self.conn):
            return None  # Tornado's request parsing refuses or answers these itself
        return cursor
