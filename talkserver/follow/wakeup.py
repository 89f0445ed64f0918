"""Answering thousands of woken long polls at once: bytes first, bookkeeping after.

When a change wakes 10,000 parked polls, what the clients wait for is the
bytes on their sockets; everything else Tornado does per response
(formatting headers, futures, access-log line, starting to read the next
request) can come after the last client has its answer.  So a woken poll is
answered in two steps:

1. ``write_answer`` (inside the wake loop): the whole response, status line,
   headers and body, is written to the socket in one ``send``.  The header
   block was rendered when the poll was parked (``answer_head``) and the
   framed response is shared by every poll with the same head and body, so
   this step is a dict lookup and one system call per client.
2. ``finish_written`` (when the handler's coroutine resumes, after the wake
   loop; ``later`` resolves the handlers' futures in one callback once the
   loop is done): ``RequestHandler.finish()`` runs as usual, except that it
   has nothing left to write, so logging, ``on_finish`` and keep-alive
   happen the Tornado way.

Answers that are ready when a request arrives (``ApiHandler.send_json``)
take the same two steps back to back, which spares them Tornado's header
rendering too.  Only plain HTTP/1.1 keep-alive GETs with no output transforms take this
path; ``answer_head`` returns None for anything else (HTTP/1.0,
``Connection: close``, gzip), and those get the ordinary ``finish(body)``.
"""

from __future__ import annotations

from asyncio import Future
from typing import TYPE_CHECKING, Callable, Collection, TypeVar

from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError
from tornado.log import app_log
from tornado.web import RequestHandler

from talkserver.follow.waiters import no_collection
from talkserver.wire import tornado_private
from talkserver.wire.compression import GZIP_MIN, accepts_gzip, labelled
# Sends that skip IOStream's Future per write (see tornado_private).
from talkserver.wire.tornado_private import send_now

if TYPE_CHECKING:
    from talkserver.operation.metrics import Counter

T = TypeVar("T")

# Framed responses shared by the polls of one wake-up; keyed by (head, body)
# and dropped wholesale when full, since the next change makes them stale.
# Large bodies are never framed (copied): they go out after their head.
_frames: dict[tuple[bytes, bytes], bytes] = {}
_MAX_FRAMES = 16
LARGE_BODY = 64 * 1024
# Header blocks are the same for most parked polls; sharing them keeps a
# waiting client's memory small.
_heads: dict[bytes, bytes] = {}
_MAX_HEADS = 256
_settling: list[tuple[Callable[..., None], tuple]] = []


def answer_head(handler: RequestHandler) -> bytes | None:
    """The status line and headers a 200 answer to this request would carry,
    without Content-Length; None when the request needs Tornado's own path.

    Tornado's HTTP1Connection.write documents (as deprecated but allowed)
    that a pre-encoded header block may go out without write_headers; this
    is that, with the block rendered as write_headers would render it.
    """
    request = handler.request
    params = getattr(request.connection, "params", None)
    if (
        handler.get_status() != 200
        or request.version != "HTTP/1.1"
        or request.method != "GET"
        or request.headers.get("Connection", "").lower() == "close"
        or params is None
        or params.no_keep_alive
        or handler.application.transforms
    ):
        return None
    lines = ["HTTP/1.1 200 OK"]
    lines += [f"{name}: {value}" for name, value in tornado_private.response_headers(handler) if name != "Content-Length"]
    head = ("\r\n".join(lines) + "\r\n").encode("latin1")
    if len(_heads) >= _MAX_HEADS:
        _heads.clear()
    return _heads.setdefault(head, head)


def encoded(feed, head: bytes, body: bytes, gzip: bool) -> tuple[bytes, bytes]:
    """The header block and body that carry ``body``, an answer of ``feed``
    (a talkserver.follow.feed.Feed), to a client that accepts gzip or not
    (``accepts_gzip``): gzip-compressed, once per state, when it does and
    the answer is large (talkserver.wire.compression)."""
    if len(body) < GZIP_MIN:
        return head, body
    return labelled(head, gzip), feed.gzipped(body) if gzip else body


def encode_for(handler: RequestHandler, feed, body: bytes) -> bytes:
    """``encoded`` for an answer Tornado will send: sets the handler's
    headers and returns the body to finish with."""
    if len(body) < GZIP_MIN:
        return body
    handler.set_header("Vary", "Accept-Encoding")
    if not accepts(handler):
        return body
    handler.set_header("Content-Encoding", "gzip")
    return feed.gzipped(body)


def accepts(handler: RequestHandler) -> bool:
    """Whether the handler's client accepts gzip."""
    return accepts_gzip(handler.request.headers.get("Accept-Encoding"))


def write_answer(handler: RequestHandler, head: bytes, body: bytes) -> None:
    """Put a complete 200 answer on the handler's socket now (``send_answer``)."""
    send_answer(handler.request.connection.stream, head, body)


def send_answer(stream: IOStream, head: bytes, body: bytes) -> bool:
    """Put a complete 200 answer, ``head`` (from ``answer_head``) then
    ``body``, on ``stream`` now; True when the socket took all of it (nothing
    is queued on the stream then).

    A small answer goes out as one framed block, shared by the polls of one
    wake-up.  A large one goes out as its header block with the body's first
    64 KiB (one system call, a small copy), and the rest of the body is
    queued as a view of the shared bytes: a thousand slow readers of a 5 MB
    answer share one copy of it instead of holding one each.  (Sending the
    head and the body apart cost a second system call per client and made a
    1,000-client wake-up slower; docs/benchmarks.md.)
    """
    if stream.closed():
        return False
    if len(body) > LARGE_BODY:
        # The head and the body's first part in one send (one system call,
        # a small copy); the rest is queued as a view of the shared body.
        first = head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:LARGE_BODY]
        return _send(stream, first, rest=memoryview(body)[LARGE_BODY:])
    frame = _frames.get((head, body))
    if frame is None:
        frame = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        if len(_frames) >= _MAX_FRAMES:
            _frames.clear()
        _frames[(head, body)] = frame
    return _send(stream, frame)


def _send(stream: IOStream, data: bytes, rest: memoryview | None = None) -> bool:
    """Write ``data`` now as far as the socket takes it, then queue what is
    left of it and ``rest`` (a view, never copied); True when nothing had
    to be queued, False when something was or the client is gone."""
    sent = send_now(stream, data)
    if sent is None:
        return False
    if sent == len(data) and not rest:
        return True
    try:
        if sent < len(data):
            # A view, not a slice: IOStream keeps it without copying.
            stream.write(memoryview(data)[sent:])
        if rest:
            stream.write(rest)
    except StreamClosedError:
        pass
    return False


def push_to_all(followers: Collection[T], send: Callable[[T], bool], delivered: Counter | None,
                dropped: Counter, drop: Callable[[T], None]) -> None:
    """Push one shared message to every follower of a pushing transport
    (event streams, WebSockets): ``send(follower)`` says whether it took
    it (False: too much is unread already).  Counts what was delivered in
    ``delivered`` (None: not counted, e.g. a heartbeat), then counts in
    ``dropped`` and ``drop``s each follower that did not take it, after
    the loop, so that no client waits behind another's close.
    """
    slow = []
    # As for woken polls: a collection in the middle of the loop would
    # hold back every client after it.
    with no_collection():
        for follower in followers:
            if not send(follower):
                slow.append(follower)
    if delivered is not None:
        delivered.inc(amount=len(followers) - len(slow))  # type: ignore[arg-type]
    for follower in slow:
        dropped.inc()
        drop(follower)


def later(future: Future, result: object) -> None:
    """Resolve ``future`` with ``result`` once the current wake loop is over.

    Resolving a future schedules its waiting coroutine one by one; batching
    them into one callback keeps that work out of the loop of writes.
    """
    after_wake(_resolve, future, result)


def after_wake(callback: Callable[..., None], *args: object) -> None:
    """Call ``callback(*args)`` once the current wake loop is over, in one
    IOLoop callback with every other call deferred by the same loop."""
    if not _settling:
        IOLoop.current().add_callback(_settle)
    _settling.append((callback, args))


def _resolve(future: Future, result: object) -> None:
    if not future.done():
        future.set_result(result)


def _settle() -> None:
    batch = _settling[:]
    del _settling[:]
    for callback, args in batch:
        try:
            callback(*args)
        except Exception:
            # One poll's trouble must not leave the others unfinished.
            app_log.exception("finishing an answered poll failed")


def finish_written(handler: RequestHandler) -> None:
    """``finish()`` for a handler whose answer ``write_answer`` has sent."""
    # finish() writes the headers unless they count as written; the body
    # went with them, so what it flushes is empty.
    tornado_private.mark_headers_written(handler)
    handler.finish()
