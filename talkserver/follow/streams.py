"""Server-sent events: ``GET /talks`` with ``Accept: text/event-stream``.

A stream is the long poll without the re-poll: the connection stays open
and every change is pushed as one event,

    id: <serverTime>
    data: <the JSON a poll would get>

so ``Last-Event-ID`` (sent by a reconnecting ``EventSource``) is a cursor
like ``changesSince``, and wins over it.  This module is a thin transport
over the board's Feed: it frames answers, it does not make them.

Fan-out is built like the long poll's (wakeup.py).  All open streams are
at the same cursor, the head of the last change, because each one gets
every change after its first event.  So a change is looked up in the Feed
once (its cached JSON bytes), framed once into an event (once more with
HTTP/1.1 chunk framing), and that one bytes object goes to every stream:
a direct ``send`` when nothing is queued on the socket, else the rest is
queued on the IOStream.  One timer sends the heartbeat comment to every
stream.

A client that does not read has its unsent bytes bounded: when more than
``buffer_limit`` bytes are already queued for it, the stream is closed
instead of queued further (counted as dropped).  Its ``EventSource``
reconnects with ``Last-Event-ID`` and gets every change it missed,
coalesced into one event (one entry per title) by the Feed.
"""

from __future__ import annotations

import random
from asyncio import Future
from typing import Mapping

from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream
from tornado.web import HTTPError, RequestHandler

from talkserver.follow import lifecycle, wakeup
from talkserver.wire import tornado_private
from talkserver.follow.slowreaders import unsent_bytes
from talkserver.follow.transport import Transport
from talkserver.wire.validation import BadInput, parse_cursor

EVENT_STREAM_TYPE = "text/event-stream"
DEFAULT_HEARTBEAT = 15.0
DEFAULT_BUFFER_LIMIT = 1024 * 1024
# The reconnection delay suggested to EventSource (ms); each stream gets a
# value between half and one and a half of it, so that the browsers of a
# server that went away do not all come back in the same instant.
RETRY_MS = 2000
_HEARTBEAT = b": heartbeat\n\n"


def _chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (Transfer-Encoding: chunked)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


class Frame:
    """Bytes for every stream: as they are, and as one chunk."""

    __slots__ = ("raw", "chunked")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.chunked = _chunk(raw)


def event(server_time: int, body: bytes) -> bytes:
    """One event carrying a ``/talks`` answer whose serverTime is ``server_time``.

    The answer is compact JSON, which has no line breaks, so one ``data:``
    line holds it.
    """
    return b"id: %d\ndata: " % server_time + body + b"\n\n"


class EventStream:
    """One client's open stream: its socket, its framing and its end."""

    __slots__ = ("io", "chunked", "ended")

    def __init__(self, handler: RequestHandler) -> None:
        connection = handler.request.connection
        self.io: IOStream = connection.stream
        # Tornado chunks the body of an HTTP/1.1 answer without a length;
        # an HTTP/1.0 one (nginx's default upstream) is ended by the close.
        self.chunked: bool = tornado_private.chunking(connection)
        self.ended: Future = Future()

    def write(self, frame: Frame, limit: int) -> bool:
        """Send ``frame``; False when the client has more than ``limit`` bytes unread."""
        io = self.io
        if io.closed():
            return True  # on_connection_close ends the stream
        data = frame.chunked if self.chunked else frame.raw
        sent = wakeup.send_now(io, data)
        if sent is None:
            return True  # the client is gone; on_connection_close ends the stream
        if sent < len(data):
            if unsent_bytes(io) > limit:
                return False
            # A memoryview keeps the shared bytes shared (IOStream copies
            # only small pieces).
            io.write(memoryview(data)[sent:])
        return True

    def end(self) -> None:
        """Let the handler finish the answer (the client left, or the server stops)."""
        if not self.ended.done():
            self.ended.set_result(None)


class Streams(Transport):
    """The open event streams of one board, and the change events they share.

    Settings: ``heartbeat`` (seconds between heartbeat comments) and
    ``stream_buffer`` (unread bytes past which a stream is closed).
    """

    name = "stream"

    def __init__(self, board, settings: Mapping) -> None:
        super().__init__(board, settings)
        feed, metrics = board.feed, board.metrics
        self.feed = feed
        self.heartbeat = settings.get("heartbeat", DEFAULT_HEARTBEAT)
        self.buffer_limit = settings.get("stream_buffer", DEFAULT_BUFFER_LIMIT)
        self._open: dict[EventStream, None] = {}
        # Every open stream has had every change up to here.
        self._head = feed.store.head
        self._beat: PeriodicCallback | None = None
        self._heartbeat = Frame(_HEARTBEAT)
        metrics.gauge("talkserver_streams_open", "Event streams open now.", lambda: len(self._open))
        self._events = metrics.counter("talkserver_stream_events_total", "Events written to event streams.")
        self._dropped = metrics.counter(
            "talkserver_streams_dropped_total", "Event streams closed because their client did not read."
        )

        board.subscribe(self.publish)

    def __len__(self) -> int:
        return len(self._open)

    def takes(self, headers: Mapping, has_cursor: bool) -> bool:
        # What EventSource sends (EVENT_STREAM_TYPE).
        return EVENT_STREAM_TYPE in headers.get("Accept", "")

    async def follow(self, handler: RequestHandler) -> None:
        if handler.request.method != "HEAD":
            handler.following = self.name
        await follow(handler, self)

    def client_gone(self, follower: "EventStream") -> None:
        follower.end()

    def first_frame(self, cursor: int | None) -> Frame:
        """What a new stream gets at once: a retry hint, then the board or the
        changes after ``cursor`` (nothing more when nothing is new)."""
        body = self.feed.everything() if cursor is None else self.feed.since(cursor)
        retry = b"retry: %d\n\n" % random.randint(RETRY_MS // 2, RETRY_MS * 3 // 2)
        return Frame(retry if body is None else retry + event(self.feed.store.head, body))

    def add(self, stream: EventStream, first: Frame) -> None:
        """Open ``stream``: send it ``first`` and then every change."""
        self._open[stream] = None
        self._send({stream: None}, first)
        if self._beat is None and self.heartbeat > 0:
            self._beat = PeriodicCallback(self._send_heartbeat, self.heartbeat * 1000)
            self._beat.start()

    def discard(self, stream: EventStream) -> None:
        """Forget a stream that has ended."""
        self._open.pop(stream, None)

    def publish(self) -> None:
        """Send the newest change to every stream (the board calls this once per change)."""
        body = self.feed.since(self._head)
        self._head = self.feed.store.head
        if body is not None and self._open:
            self._send(self._open, Frame(event(self._head, body)))

    def end_all(self) -> int:
        """End every open stream cleanly (shutting down); returns how many."""
        ending = list(self._open)
        self._open.clear()
        for stream in ending:
            stream.end()
        return len(ending)

    def _send_heartbeat(self) -> None:
        if self._open:
            self._send(self._open, self._heartbeat, count=False)

    def _send(self, streams: dict, frame: Frame, count: bool = True) -> None:
        limit = self.buffer_limit
        wakeup.push_to_all(streams, lambda stream: stream.write(frame, limit),
                           self._events if count else None, self._dropped, self._drop)

    def _drop(self, stream) -> None:
        """A stream too far behind: closing ends the answer through
        on_connection_close; the client reconnects with Last-Event-ID and
        loses nothing."""
        self._open.pop(stream, None)
        stream.io.close()


def stream_cursor(handler: RequestHandler) -> int | None:
    """The stream's starting cursor: ``Last-Event-ID`` if sent, else
    ``changesSince``, else None (the whole board).

    EventSource reconnects to its original URL, stale ``changesSince``
    included, and sends the id of the last event it saw: that one wins.
    """
    raw = handler.request.headers.get("Last-Event-ID") or handler.get_query_argument("changesSince", None, strip=False)
    if raw is None:
        return None
    try:
        return parse_cursor(raw)
    except BadInput as e:
        raise HTTPError(400, "%s", e) from None


async def follow(handler: RequestHandler, streams: Streams) -> None:
    """Answer ``handler``'s request with an event stream until it ends.

    Counted as a long poll against the client's address.  Returns when the
    client has gone or the server ends the stream; the handler then
    finishes as usual.
    """
    cursor = stream_cursor(handler)
    handler.set_header("Content-Type", EVENT_STREAM_TYPE)
    # nginx would otherwise buffer the stream (see docs/deploy.md).
    handler.set_header("X-Accel-Buffering", "no")
    if handler.request.method == "HEAD":
        handler.flush()  # GET's headers, no Content-Length; nothing follows
        return
    if handler.request.version != "HTTP/1.1":
        # Without chunking only the close can end the body, so this
        # connection is not kept alive whatever the client asked.
        tornado_private.close_when_finished(handler.request.connection)
    # Past the per-address cap a stream is still served, as a poll is in
    # the slow lane: a crowd behind one NAT degrades, it does not starve.
    # A stream costs a change one shared write, so it needs no rounds; it
    # holds a socket, as a slow-lane poll does, and the same hard limit
    # (429 past five times the cap) bounds both.
    lifecycle.admit(handler)
    first = streams.first_frame(cursor)
    handler.flush()  # the status line and headers; the events follow on the socket
    stream = EventStream(handler)
    handler.follower = stream
    if lifecycle.client_gone(handler.request.connection.stream):
        return  # it left while its password was checked: never opened
    streams.add(stream, first)
    try:
        await stream.ended
    finally:
        streams.discard(stream)

