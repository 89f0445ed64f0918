"""WebSocket: ``GET /talks`` upgraded to a socket that the server pushes to.

Every message the server sends is one text frame holding exactly what a
long poll answers, ``{"serverTime": T, "talks": [...]}`` (with ``"reset":
true`` when the cursor could not be answered with a diff).  The first comes
at once: the board, or the changes since ``?changesSince=T`` (possibly
none, so the client knows it is live and which cursor it holds).  Then one
message per change, or per batch of changes applied together.  A client
that reconnects with the last ``serverTime`` it saw misses nothing and
sees nothing twice.  docs/protocol.md has the whole contract.

A client sends nothing but control frames: pings are answered with pongs,
a close with a close.  A data frame larger than ``MAX_CLIENT_FRAME``
closes the socket with 1009, any other data frame with 1003 (this server
takes no data).  Frames from a client must be masked (1002 otherwise).

Why not Tornado's ``WebSocketHandler``: it keeps a handler, its request, a
protocol object and a reading coroutine per socket, and frames each
message once per socket.  Here the handshake is the handler's (the
admission policy, the 101 through ``finish()``, then ``detach()``, as
Tornado's own WebSocket code does), and a socket is then one small object
over its IOStream.  Fan-out is built like the event stream's (streams.py):
all open sockets are at the same cursor, so a change is looked up in the
Feed once, framed once, and the same bytes go to every socket.  Compression
(permessage-deflate) is not offered: it would compress each message once
per socket, with a compressor's state (up to some hundreds of KiB) per
socket, to save bytes on a board whose changes are small.

Liveness: one timer pings every socket every ``heartbeat`` seconds with the
same bytes; a socket that answered none of the last two pings is closed.
Back-pressure: a client with more than ``stream_buffer`` bytes unread is
closed instead of queued to (it reconnects with its last ``serverTime``).
On drain every socket gets a close frame with 1001 (going away).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Mapping

from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream, StreamClosedError
from tornado.web import HTTPError, RequestHandler

from talkserver.follow import lifecycle, wakeup
from talkserver.follow.slowreaders import unsent_bytes
from talkserver.follow.streams import DEFAULT_BUFFER_LIMIT, DEFAULT_HEARTBEAT
from talkserver.follow.transport import Transport
from talkserver.stores import StoreWriteFailed
from talkserver.wire.tornado_private import send_now
from talkserver.wire.validation import BadInput, parse_cursor

# RFC 6455, section 1.3: what the server appends to Sec-WebSocket-Key.
_KEY_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_CLIENT_FRAME = 4096
READ_CHUNK = 4096

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
GOING_AWAY, PROTOCOL_ERROR, UNACCEPTABLE, TOO_BIG = 1001, 1002, 1003, 1009


def frame(opcode: int, payload: bytes) -> bytes:
    """One unfragmented, unmasked frame (what a server sends)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def close_frame(code: int) -> bytes:
    """A close frame with ``code`` and no reason."""
    return frame(CLOSE, struct.pack("!H", code))


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a handshake's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _KEY_GUID).digest()).decode("ascii")


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (ValueError, TypeError):
        return False


class Socket:
    """One client's socket after the handshake: its stream and what it sent."""

    __slots__ = ("io", "sockets", "answered", "pending", "closing")

    def __init__(self, sockets: "WebSockets") -> None:
        self.io: IOStream | None = None  # once the handshake is answered
        self.sockets = sockets
        self.answered = sockets.beat  # the heartbeat its last pong answered
        self.pending = b""  # an incomplete frame from the client
        self.closing = False

    def send(self, data: bytes) -> bool:
        """Send ``data`` (shared bytes); False when the client has more than
        the buffer limit unread (the caller closes it)."""
        io = self.io
        if io.closed():
            return True  # the close callback forgets it
        sent = send_now(io, data)
        if sent is None:
            return True
        if sent < len(data):
            if unsent_bytes(io) > self.sockets.buffer_limit:
                return False
            try:
                io.write(memoryview(data)[sent:])  # a view keeps the bytes shared
            except StreamClosedError:
                pass
        return True

    def close(self, code: int) -> None:
        """Send a close frame with ``code``, then close the connection once it has left."""
        if self.closing or self.io.closed():
            return
        self.closing = True
        self.sockets.forget(self)
        try:
            self.io.write(close_frame(code)).add_done_callback(self._written_then_close)
        except StreamClosedError:
            pass

    def _written_then_close(self, future) -> None:
        _forget_traceback(future)
        self.io.close()

    # -- what the client sends -------------------------------------------

    def read(self) -> None:
        """Wait for the client's next bytes (one pending read per socket)."""
        try:
            self.io.read_bytes(READ_CHUNK, partial=True).add_done_callback(self._received)
        except StreamClosedError:
            pass

    def _received(self, future) -> None:
        if _forget_traceback(future):
            return  # closed: the close callback forgets it
        data = self.pending + future.result()
        while not self.closing:
            used = self._frame(data)
            if not used:
                break
            data = data[used:]
        self.pending = data
        if not self.closing:
            self.read()

    def _frame(self, data: bytes) -> int:
        """Act on the first complete frame of ``data``; how many bytes it took (0: incomplete)."""
        if len(data) < 2:
            return 0
        first, second = data[0], data[1]
        opcode, masked, size, at = first & 0x0F, second & 0x80, second & 0x7F, 2
        if size == 126:
            if len(data) < 4:
                return 0
            size, at = struct.unpack_from("!H", data, 2)[0], 4
        elif size == 127:
            if len(data) < 10:
                return 0
            size, at = struct.unpack_from("!Q", data, 2)[0], 10
        if not masked or first & 0x70:  # unmasked, or extension bits nobody agreed to
            self.close(PROTOCOL_ERROR)
            return 0
        if opcode < CLOSE:  # a data frame (text, binary, continuation): none is taken
            self.close(TOO_BIG if size > MAX_CLIENT_FRAME else UNACCEPTABLE)
            return 0
        if size > 125 or not first & 0x80:  # control frames are short and whole
            self.close(PROTOCOL_ERROR)
            return 0
        end = at + 4 + size
        if len(data) < end:
            return 0
        mask = data[at:at + 4]
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[at + 4:end]))
        if opcode == PING:
            if not self.send(frame(PONG, payload)):
                self.close(GOING_AWAY)
        elif opcode == PONG:
            self.answered = self.sockets.beat
        elif opcode == CLOSE:
            self.close(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000)
        else:
            self.close(PROTOCOL_ERROR)
        return end

    def gone(self) -> None:
        """The connection closed (either side): forget the socket and give its place back."""
        self.sockets.forget(self)
        if self.io.error is not None:
            # As collector.HTTPServer does for Tornado's connections: the
            # traceback would tie the stream into a cycle with its frames.
            self.io.error.__traceback__ = None


def _forget_traceback(future) -> bool:
    """Whether ``future`` failed; if so its exception's traceback is dropped,
    which would otherwise hold the frames (and the future) in a cycle."""
    error = future.exception()
    if error is None:
        return False
    error.__traceback__ = None
    return True


class WebSockets(Transport):
    """The open sockets of one board, and the frames they share.

    Settings: ``heartbeat`` (seconds between pings; a socket that answers
    none for two intervals is closed) and ``stream_buffer`` (unread bytes
    past which a socket is closed), the same as event streams'.
    """

    name = "websocket"

    def __init__(self, board, settings: Mapping) -> None:
        super().__init__(board, settings)
        self.feed = board.feed
        self.heartbeat = settings.get("heartbeat", DEFAULT_HEARTBEAT)
        self.buffer_limit = settings.get("stream_buffer", DEFAULT_BUFFER_LIMIT)
        self.beat = 0
        self._open: dict[Socket, None] = {}
        self._admission = None  # the Application's, set at the first handshake
        self._head = board.store.head  # every open socket has had every change up to here
        self._timer: PeriodicCallback | None = None
        self._ping = frame(PING, b"")
        self._going_away = close_frame(GOING_AWAY)
        metrics = board.metrics
        metrics.gauge("talkserver_websockets_open", "WebSockets open now.", lambda: len(self._open))
        self._messages = metrics.counter("talkserver_websocket_messages_total", "Messages sent to WebSockets.")
        self._dropped = metrics.counter(
            "talkserver_websockets_dropped_total",
            "WebSockets closed because their client did not read or answered no ping.",
        )
        board.subscribe(self.publish)

    def __len__(self) -> int:
        return len(self._open)

    def takes(self, headers: Mapping, has_cursor: bool) -> bool:
        return "websocket" in headers.get("Upgrade", "").lower()

    async def follow(self, handler: RequestHandler) -> None:
        """The handshake (the admission policy has passed it), then the socket."""
        request = handler.request
        headers = request.headers
        if request.method != "GET" or request.version != "HTTP/1.1":
            raise HTTPError(400, "a WebSocket handshake is an HTTP/1.1 GET")
        if "upgrade" not in headers.get("Connection", "").lower():
            raise HTTPError(400, "a WebSocket handshake needs Connection: Upgrade")
        if headers.get("Sec-WebSocket-Version") != "13":
            handler.set_header("Sec-WebSocket-Version", "13")
            raise HTTPError(426, "this server speaks WebSocket version 13 (RFC 6455)")
        key = headers.get("Sec-WebSocket-Key", "")
        if not _valid_key(key):
            raise HTTPError(400, "Sec-WebSocket-Key must be 16 bytes in base64")
        raw = handler.get_query_argument("changesSince", None, strip=False)
        try:
            cursor = None if raw is None else parse_cursor(raw)
        except BadInput as e:
            raise HTTPError(400, "%s", e) from None
        if cursor is not None and cursor > self.board.store.head:
            try:
                await self.board.caught_up()
            except StoreWriteFailed as e:
                raise HTTPError(503, "cannot check this cursor against the database now (%s); try again", e) from None
        handler.following = self.name
        handler.clear_header("Content-Type")
        handler.set_status(101)
        handler.set_header("Upgrade", "websocket")
        handler.set_header("Connection", "Upgrade")
        handler.set_header("Sec-WebSocket-Accept", accept_key(key))
        # Counted against its address with polls and streams; served past
        # the cap as a stream is (one shared write per change), refused past
        # five times it (Refusal, 429) before the handshake is answered.
        socket = Socket(self)
        admission = handler.application.admission
        admission.hold_follower(socket, request.remote_ip or "")
        if lifecycle.client_gone(request.connection.stream):
            admission.release(socket)
            return  # it left while its password or cursor was checked: never opened
        self._admission = admission
        handler.finish()
        socket.io = io = handler.detach()
        io.set_close_callback(socket.gone)
        self._open[socket] = None
        self._start_beating()
        body = self.feed.everything() if cursor is None else self.feed.since(cursor)
        if body is None:
            body = self.feed.timeout_answer()  # nothing new: the cursor it holds, and live
        self._send({socket: None}, frame(TEXT, body))
        socket.read()

    def publish(self) -> None:
        """Send the newest change to every socket (the board calls this once per change)."""
        body = self.feed.since(self._head)
        self._head = self.feed.store.head
        if body is not None and self._open:
            self._send(self._open, frame(TEXT, body))

    def forget(self, socket: Socket) -> None:
        """A socket that closed or is closing: no more messages, its place given back."""
        if self._open.pop(socket, 0) is None:
            self._admission.release(socket)

    def end_all(self) -> int:
        """The drain: a close frame with 1001 (going away) to every socket."""
        ending = list(self._open)
        for socket in ending:
            socket.close(GOING_AWAY)
        return len(ending)

    # -- shared writes and the heartbeat ---------------------------------

    def _send(self, sockets: dict, data: bytes, count: bool = True) -> None:
        wakeup.push_to_all(sockets, lambda socket: socket.send(data),
                           self._messages if count else None, self._dropped, self._drop)

    def _drop(self, socket: Socket) -> None:
        """A socket too far behind: closed; it reconnects with its last
        serverTime and loses nothing."""
        self.forget(socket)
        socket.io.close()

    def _start_beating(self) -> None:
        if self._timer is None and self.heartbeat > 0:
            self._timer = PeriodicCallback(self._beat, self.heartbeat * 1000)
            self._timer.start()

    def _beat(self) -> None:
        if not self._open:
            self._timer.stop()
            self._timer = None
            return
        self.beat += 1
        silent = [socket for socket in self._open if self.beat - socket.answered > 2]
        for socket in silent:
            self._dropped.inc()
            self.forget(socket)
            socket.io.close()
        self._send(self._open, self._ping, count=False)
