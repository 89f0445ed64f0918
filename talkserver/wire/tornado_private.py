"""Every use of Tornado's private state, in one place.

Tornado's public interfaces (``RequestHandler``, ``HTTPMessageDelegate``,
``HTTPConnection.write_headers/write/finish``, ``IOStream``,
``HTTPServer``) cover almost everything talkserver does.  What they do not
cover is here: each function says which public behaviour it stands in
for, and why the public way was not enough (most often: its cost per
request, multiplied by 10,000 woken polls).  Nothing else in talkserver
reaches into Tornado's underscored names or around IOStream to the
socket, so a Tornado upgrade is checked here and nowhere else.

The fast path (talkserver.follow.fastpolls) also leans on how
``HTTP1Connection`` behaves, not only on names: it answers without
``write_headers``, then reads the connection's next request head while
Tornado's own loop for that connection waits, and reads the connection's
undocumented ``params`` and ``context`` (``header_limit``,
``keeps_alive``, ``remote_address`` below).

talkserver.wire.tornado_check uses every function here, and that
behaviour, over a loopback connection when the ``talkserver`` command
starts: a Tornado where any of it fails is refused in one line naming
the versions supported, instead of failing on the first request.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

import tornado.tcpserver
import tornado.web
from tornado.iostream import IOStream

# -- a response's headers ------------------------------------------------------


def response_headers(handler: tornado.web.RequestHandler) -> list[tuple[str, str]]:
    """The headers ``handler`` would send, as ``flush()`` would send them.

    Public equivalent: none; RequestHandler renders its headers only when it
    writes them.  A parked poll's header block is rendered once, ahead of
    time, and shared (talkserver.follow.wakeup).
    """
    return list(handler._headers.get_all())  # type: ignore[attr-defined]


def mark_headers_written(handler: tornado.web.RequestHandler) -> None:
    """Tell ``handler`` its headers and body went out already (wakeup.send_answer).

    Public equivalent: ``finish(body)``, which renders and writes the
    answer itself; a woken poll's answer has been sent as shared, framed
    bytes, so ``finish()`` must only do the rest (logging, on_finish,
    reading the next request) and write nothing.
    """
    handler._headers_written = True  # type: ignore[attr-defined]


# -- a connection ----------------------------------------------------------------


def chunking(connection: object) -> bool:
    """Whether ``connection`` frames the body of its answer as HTTP/1.1 chunks.

    Public equivalent: ``HTTPConnection.write``, which frames each chunk
    itself; an event stream writes one shared, already framed event to
    every stream instead, so it needs to know the framing.
    """
    return bool(getattr(connection, "_chunking_output", False))


def close_when_finished(connection: object) -> None:
    """Close the connection once the answer is finished, whatever keep-alive
    the client asked for.

    Public equivalent: an answer with ``Connection: close``; but Tornado
    decides keep-alive from the request alone and overrides the header for
    an HTTP/1.0 client that sent ``Connection: keep-alive``.  An event
    stream over HTTP/1.0 has no chunking and no length, so only the close
    can tell its client that the server ended it.
    """
    connection._disconnect_on_finish = True  # type: ignore[attr-defined]


def remote_address(connection: object) -> str:
    """The client's address on ``connection`` (an HTTP1Connection), "" when unknown.

    Public equivalent: ``HTTPServerRequest.remote_ip``, which Tornado sets
    from the same ``context`` when it makes the request object; the fast
    path makes none.  (With ``xheaders`` the context holds the proxy's
    address until Tornado reads a request; fastpolls leaves such requests
    to Tornado.)
    """
    return connection.context.remote_ip or ""  # type: ignore[attr-defined]


def header_limit(connection: object) -> int:
    """The largest request head ``connection`` accepts (``HTTPServer(max_header_size=...)``).

    Public equivalent: none once the server is made; the fast path reads
    the next head itself and must refuse what Tornado would.
    """
    return connection.params.max_header_size  # type: ignore[attr-defined]


def keeps_alive(connection: object) -> bool:
    """Whether ``connection``'s server keeps connections alive (``no_keep_alive`` not set)."""
    return not connection.params.no_keep_alive  # type: ignore[attr-defined]


# -- a stream's unsent bytes and direct sends ---------------------------------


def unsent_bytes(stream: IOStream) -> int:
    """Bytes queued on ``stream`` that the socket has not taken yet.

    Public equivalent: ``IOStream.writing()``, which says only whether
    any are; bounding what a slow reader holds needs how many.
    """
    return len(stream._write_buffer)  # type: ignore[attr-defined]


def send_now(stream: IOStream, data: bytes) -> int | None:
    """Send what the socket takes of ``data`` at once, if nothing is queued
    before it; returns the bytes sent (0 when they must be queued), or None
    when the client is gone (the stream is then closed).

    Public equivalent: ``IOStream.write(data)``, which makes a Future per
    write and keeps a reference to the data until sent: a good part of the
    cost of answering 10,000 woken polls (docs/benchmarks.md).  A direct
    send keeps the byte order only with nothing queued, hence the check.
    """
    if stream.writing():
        return 0
    try:
        return stream.socket.send(data)
    except BlockingIOError:
        return 0
    except OSError:
        # EPIPE, ECONNRESET, ...: one client's trouble must not stop the
        # loop for the others; on_connection_close follows.
        stream.close(exc_info=True)
        return None


def unread(stream: IOStream, data: bytes) -> None:
    """Put ``data``, just read from ``stream``, back in front of its read
    buffer, so the next read returns it again.

    Public equivalent: none; IOStream has no peek.  The fast path reads a
    kept-alive connection's next request head itself (fastpolls.py) and,
    when it is not a plain poll, hands it back to Tornado's own request
    loop to be read and answered as if the fast path had never looked.
    """
    stream._read_buffer[:0] = data  # type: ignore[attr-defined]
    stream._read_buffer_size += len(data)  # type: ignore[attr-defined]


def take_read_events(stream: IOStream, handler: Callable[[object, int], None]) -> bool:
    """Have the IOLoop call ``handler(socket, events)`` instead of ``stream``'s
    own handler for the stream's events, if the stream is idle: listening
    for reads only (as it does to notice a client that leaves), with
    nothing read ahead, queued or pending.  False, changing nothing, if not.

    Public equivalent: ``IOStream.read_until_regex``, which makes a Future,
    tries a read at once (a failed system call when the client has not
    asked yet), and then goes through IOStream's read buffer and its
    callbacks; about a fifth of the server's CPU when 10,000 woken polls
    ask again (docs/profiles).  Swapping the entry of the IOLoop's table
    of handlers changes no registration with the kernel, so taking and
    giving back cost no system call, and ``IOStream.close`` still removes
    the entry whichever handler it holds.
    """
    if stream.closed():
        return False
    io_loop = stream.io_loop
    fd = stream.socket.fileno()
    if (
        fd not in io_loop.readers  # type: ignore[attr-defined]
        or fd in io_loop.writers  # type: ignore[attr-defined]
        or stream._read_buffer_size  # type: ignore[attr-defined]
        or stream.reading()
        or stream.writing()
    ):
        return False
    handlers = io_loop.handlers  # type: ignore[attr-defined]
    handlers[fd] = (handlers[fd][0], handler)
    return True


def give_back_read_events(stream: IOStream) -> None:
    """Undo ``take_read_events``: ``stream``'s own handler gets its events again."""
    if stream.socket is None:
        return  # closed: IOStream.close removed the entry
    handlers = stream.io_loop.handlers  # type: ignore[attr-defined]
    fd = stream.socket.fileno()
    entry = handlers.get(fd)
    if entry is not None:
        handlers[fd] = (entry[0], stream._handle_events)  # type: ignore[attr-defined]


def handle_events(stream: IOStream, fileobj: object, events: int) -> None:
    """Pass events the handler of ``take_read_events`` does not take to ``stream``
    (which reads what came, or notices that its client left)."""
    stream._handle_events(fileobj, events)  # type: ignore[attr-defined]


class LazyQueue:
    """A ``collections.deque`` made when first appended to and dropped when
    emptied, for the queues IOStream keeps per connection (``lighten``).

    An empty deque already holds a block of 64 slots, about 760 bytes with
    the object; an idle connection here holds one pointer.  Only the
    operations IOStream uses are offered.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque | None = None

    def append(self, item) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)

    def popleft(self):
        if self._items is None:
            raise IndexError("pop from an empty queue")
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def clear(self) -> None:
        self._items = None

    def __getitem__(self, index: int):
        if self._items is None:
            raise IndexError("queue index out of range")
        return self._items[index]

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __bool__(self) -> bool:
        return self._items is not None

    def __iter__(self):
        return iter(()) if self._items is None else iter(self._items)


def lighten(stream: IOStream) -> None:
    """Give ``stream``'s two write queues (its write buffer's pieces and the
    futures of its writes) the form that costs nothing while empty.

    Public equivalent: none; IOStream makes both as deques when it is
    made.  Empty, they were about 1.5 KiB of a waiting poll's 8 (a fifth),
    and nearly every connection keeps them empty: answers go out with one
    direct send (``send_now``) and a queue forms only for a slow reader.
    """
    stream._write_buffer._buffers = LazyQueue()  # type: ignore[attr-defined]
    stream._write_futures = LazyQueue()  # type: ignore[attr-defined]


def _nodelay_stays_on(value: bool) -> None:
    """IOStream.set_nodelay for a stream whose TCP_NODELAY stays on."""


def keep_nodelay_on(stream: IOStream) -> None:
    """Set TCP_NODELAY on ``stream`` once, for its whole life.

    Public equivalent: ``IOStream.set_nodelay``, which HTTP1Connection
    calls twice per request (on to flush the end of an answer, off again
    for the next), two system calls per poll, about 6 % of the server's
    CPU while 1,500 polls come back every 0.5 s.  talkserver writes each
    answer in one ``send`` (or one event per change), so nothing waits to
    be coalesced and the delay never helps; the instance's method is
    replaced by one that keeps it on.
    """
    stream.set_nodelay(True)
    stream.set_nodelay = _nodelay_stays_on  # type: ignore[method-assign]


# -- an aborted upload ------------------------------------------------------------


def drop_body_error(request) -> BaseException | None:
    """Let a streamed-body request whose client left be freed by reference counting.

    Public behaviour it completes: ``RequestHandler.on_connection_close``,
    which for a ``@stream_request_body`` handler fails the request's body
    future with StreamClosedError.  ``RequestHandler._execute`` awaits that
    future, so the error is raised there and keeps a traceback whose frame
    holds the handler, which holds the request, which holds the future: a
    cycle of about 8 kB per aborted upload that only a full collection
    frees.  Called once ``_execute`` has caught it, this drops the traceback.
    Returns the error whose traceback was dropped, or None when there was
    none (the start-up check sees it happen).
    """
    future = request._body_future  # type: ignore[attr-defined]
    if future.done() and future.exception() is not None:
        future.exception().__traceback__ = None
        return future.exception()
    return None


# -- the listening sockets ---------------------------------------------------------


def add_listening_sockets(
    server: tornado.tcpserver.TCPServer,
    sockets: Iterable,
    add_accept_handler: Callable[[object, Callable], Callable[[], None]],
) -> None:
    """``TCPServer.add_sockets``, accepting through ``add_accept_handler``
    (talkserver.web.accept's, which backs off when out of file descriptors).

    Public equivalent: ``add_sockets``, which always uses
    ``tornado.netutil.add_accept_handler``.  The sockets are recorded where
    ``TCPServer.stop()`` looks for them, so stopping works as usual.
    """
    for sock in sockets:
        server._sockets[sock.fileno()] = sock  # type: ignore[attr-defined]
        server._handlers[sock.fileno()] = add_accept_handler(sock, server._handle_connection)  # type: ignore[attr-defined]


def take_header_timeout(server) -> float | None:
    """Turn off ``server``'s per-request header timeout; returns it, for
    talkserver.wire.idle to enforce with one timer for all connections.

    Public equivalent: ``HTTPServer(idle_connection_timeout=...)``, which
    wraps every header read in its own timeout (a Future and a timer per
    request).  ``conn_params`` is not underscored, but not documented either.
    """
    params = server.conn_params
    timeout = params.header_timeout
    params.header_timeout = None
    return timeout


