"""Every use of Tornado's private state, in one place, and the check that it is there.

Tornado's public interfaces (``RequestHandler``, ``HTTPMessageDelegate``,
``HTTPConnection.write_headers/write/finish``, ``IOStream``,
``HTTPServer``) cover almost everything talkserver does.  What they do not
cover is here: each function says which public behaviour it stands in
for, and why the public way was not enough (most often: its cost per
request, multiplied by 10,000 woken polls).  Nothing else in talkserver
reaches into Tornado's underscored names or around IOStream to the
socket, so a Tornado upgrade is checked here and nowhere else.

``refuse_unsupported()`` runs first thing in the ``talkserver`` command:
when the installed Tornado lacks any of what this module uses, the server
refuses to start, in one line naming the versions it supports, instead of
failing on the first request.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable

import tornado
import tornado.http1connection
import tornado.httpserver
import tornado.iostream
import tornado.tcpserver
import tornado.web
from tornado.iostream import IOStream

# The Tornado releases this module was written against and tested with.
SUPPORTED = ((6, 4), (7, 0))
SUPPORTED_TEXT = "6.4 to 6.x"


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


def drop_body_error(request) -> None:
    """Let a streamed-body request whose client left be freed by reference counting.

    Public behaviour it completes: ``RequestHandler.on_connection_close``,
    which for a ``@stream_request_body`` handler fails the request's body
    future with StreamClosedError.  ``RequestHandler._execute`` awaits that
    future, so the error is raised there and keeps a traceback whose frame
    holds the handler, which holds the request, which holds the future: a
    cycle of about 8 kB per aborted upload that only a full collection
    frees.  Called once ``_execute`` has caught it, this drops the traceback.
    """
    future = request._body_future  # type: ignore[attr-defined]
    if future.done() and future.exception() is not None:
        future.exception().__traceback__ = None


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


# -- the start-up check -----------------------------------------------------------


def _uses(owner: object, method: str, *names: str) -> bool:
    """Whether ``owner.method`` exists and its code refers to every one of ``names``."""
    code = getattr(getattr(owner, method, None), "__code__", None)
    return code is not None and all(name in code.co_names for name in names)


def missing() -> list[str]:
    """What this module uses and the installed Tornado lacks (empty: all there)."""
    web, h1, io, tcp = tornado.web, tornado.http1connection, tornado.iostream, tornado.tcpserver
    needs = {
        "RequestHandler._headers": _uses(web.RequestHandler, "clear", "_headers"),
        "RequestHandler._headers_written": _uses(web.RequestHandler, "flush", "_headers_written"),
        "HTTP1Connection._chunking_output": _uses(h1.HTTP1Connection, "write_headers", "_chunking_output"),
        "HTTP1Connection._disconnect_on_finish": _uses(h1.HTTP1Connection, "_finish_request", "_disconnect_on_finish"),
        "IOStream._write_buffer": _uses(io.BaseIOStream, "__init__", "_write_buffer")
        and hasattr(getattr(io, "_StreamBuffer", None), "__len__"),
        "IOStream.socket": _uses(io.IOStream, "__init__", "socket"),
        "IOStream._read_buffer, _read_buffer_size": _uses(io.BaseIOStream, "_consume", "_read_buffer", "_read_buffer_size")
        and _uses(io.BaseIOStream, "__init__", "_read_buffer", "_read_buffer_size"),
        "RequestHandler.on_connection_close and _body_future": _uses(
            web.RequestHandler, "on_connection_close", "_body_future"
        ),
        "TCPServer._sockets, _handlers, _handle_connection": _uses(tcp.TCPServer, "__init__", "_sockets", "_handlers")
        and callable(getattr(tcp.TCPServer, "_handle_connection", None)),
        "HTTP1Connection toggling IOStream.set_nodelay": _uses(h1.HTTP1Connection, "finish", "set_nodelay")
        and _uses(h1.HTTP1Connection, "_finish_request", "set_nodelay"),
        "HTTPServer.conn_params.header_timeout": _uses(tornado.httpserver.HTTPServer, "initialize", "conn_params")
        and _uses(h1.HTTP1Connection, "_read_message_inner", "header_timeout"),
    }
    return [name for name, present in needs.items() if not present]


def problem() -> str | None:
    """One line saying why the installed Tornado will not do, or None."""
    low, high = SUPPORTED
    if not low <= tuple(tornado.version_info[:2]) < high:
        return f"talkserver: needs Tornado {SUPPORTED_TEXT}, not {tornado.version}"
    lacking = missing()
    if lacking:
        return (f"talkserver: needs Tornado {SUPPORTED_TEXT}; the installed Tornado {tornado.version} "
                f"lacks {', '.join(lacking)}")
    return None


def refuse_unsupported() -> None:
    """Exit with status 2 and one line when the installed Tornado will not do."""
    line = problem()
    if line is not None:
        print(line, file=sys.stderr)
        raise SystemExit(2)
