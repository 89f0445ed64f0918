"""The load test's event-stream client (``--transport=sse``).

A ``Streamer`` is what a browser's ``EventSource`` does, as small as it can
be: one ``GET /talks`` with ``Accept: text/event-stream``, kept open; each
event's ``data`` goes to the same inbox and tally as a poller's answers, so
both transports are measured the same way.  When the server ends the stream
(or drops a client that fell behind) it reconnects after a short pause with
``Last-Event-ID`` set to the last event's id, as EventSource does.

It reads answers chunked (``Transfer-Encoding: chunked``) or ended by the
close, and anything but a 200 is counted as an error and retried.
"""

from __future__ import annotations

import asyncio

from talkserver.loadtest.clients import Follower, Hub, Target, clock, refusal


class Streamer(Follower, asyncio.Protocol):
    """One client following the board over an event stream.

    It has what the tally and the run expect of a poller: ``cursor``,
    ``copy``, ``last``, ``joined``, ``waiting`` (here: the stream is open
    and the server has registered it) and ``close()``.
    """

    __slots__ = (
        "target", "hub", "source", "transport", "cursor", "copy", "last", "joined",
        "waiting", "closing", "_head", "_chunked", "_raw", "_text",
    )

    def __init__(self, target: Target, hub: Hub, source: str | None = None) -> None:
        self.source = source
        self.transport: asyncio.Transport | None = None
        self._start_following(target, hub)
        self._reset()

    def _reset(self) -> None:
        self._head = True  # still reading the status line and headers
        self._chunked = False
        self._raw = b""  # bytes not yet de-chunked
        self._text = b""  # event-stream text not yet split into blocks

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.hub.connected += 1
        self._reset()
        request = b"GET /talks HTTP/1.1\r\n" + self.target.headers + b"Accept: text/event-stream\r\n"
        if self.cursor is not None:
            request += b"Last-Event-ID: " + self.cursor + b"\r\n"
        transport.write(request + b"\r\n")

    def data_received(self, data: bytes) -> None:
        now = clock()
        raw = self._raw + data if self._raw else data
        if self._head:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                self._raw = raw
                return
            head = raw[:end].lower()
            raw = raw[end + 4 :]
            self._head = False
            status = int(head[9:12]) if head[9:12].isdigit() else 0
            self.hub.answers += 1
            if status != 200:
                # The refusal's body has usually come with its head.
                self.hub.error(refusal(status, raw))
                self.transport.close()  # connection_lost retries after a pause
                return
            self._chunked = b"\r\ntransfer-encoding: chunked" in head
        if self._chunked:
            pieces = []
            while True:
                line_end = raw.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(raw[:line_end].split(b";", 1)[0], 16)
                stop = line_end + 2 + size + 2
                if len(raw) < stop:
                    break
                if size == 0:
                    self.transport.close()  # the server ended the stream
                    raw = b""
                    break
                pieces.append(raw[line_end + 2 : stop - 2])
                raw = raw[stop:]
            self._raw = raw
            text = self._text + b"".join(pieces) if self._text else b"".join(pieces)
        else:
            self._raw = b""
            text = self._text + raw if self._text else raw
        blocks = text.split(b"\n\n")
        self._text = blocks.pop()
        for block in blocks:
            self._block(now, block)

    def _block(self, now: float, block: bytes) -> None:
        if not self.waiting:
            # The server sends its first block (a retry hint at least) once
            # the stream is registered for every later change.
            self.waiting = True
            self.hub.waiting += 1
        data = block.find(b"data: ")
        if data < 0:
            return  # a retry hint or a heartbeat comment
        if block.startswith(b"id: "):
            self.cursor = block[4 : block.index(b"\n")]
        self.hub.inbox.append((self, now, block[data + 6 :]))
