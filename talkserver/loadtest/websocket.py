"""The load test's WebSocket client (``--transport=websocket``).

A ``Socket`` follows the board over one WebSocket (RFC 6455) on a raw
``asyncio.Protocol``, as small as the poller, so that one process holds
10,000 of them:

- the handshake: ``GET /talks`` (``?changesSince=T`` to resume) with
  ``Upgrade: websocket``, a random ``Sec-WebSocket-Key`` and the run's Host
  and credentials; anything but ``101`` with the right
  ``Sec-WebSocket-Accept`` is an error, and the client retries;
- the frames: every server message is one text message holding what a poll
  answers (``{"serverTime": T, "talks": [...]}``, with ``"reset": true``
  when the cursor could not be answered with a diff).  Messages may come
  fragmented (continuation frames, with control frames between them) and a
  frame may be split across reads or share one with the next;
- the client sends nothing but control frames, masked as clients must: a
  pong for every ping (same payload), and a close answering the server's;
- when the socket ends (a close frame, a dropped connection) the client
  comes back after a pause with ``changesSince`` set to the last
  ``serverTime`` it had, as polls and event streams do (clients.Follower).

Each message goes to the same inbox and tally as a poll's answer, so lost,
duplicated and latency mean the same for every transport.  The socket counts
as waiting from its first message: the server sends it once the socket is
registered for every later change.  No extension is asked for, so frames
come uncompressed and with no reserved bits.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re

from talkserver.loadtest.clients import Follower, Hub, Target, clock, refusal

# RFC 6455, 1.3: the server proves it read the key by hashing it with this.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
# Close codes this client sends: 1000 answering a normal close, 1002 when
# the server broke the protocol.
NORMAL, PROTOCOL_ERROR = 1000, 1002

_SERVER_TIME = re.compile(rb'"serverTime"\s*:\s*(-?[0-9]+)')


def accept_for(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final frame from a client, masked with a fresh random key
    (RFC 6455, 5.3: every frame a client sends is masked).  Only control
    frames are sent here, so the payload is at most 125 bytes."""
    mask = os.urandom(4)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (len(payload) // 4 + 1))[: len(payload)], "big"))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked.to_bytes(len(payload), "big")


class Socket(Follower, asyncio.Protocol):
    """One client following the board over a WebSocket.

    It has what the tally and the run expect of a poller: ``cursor``,
    ``copy``, ``last``, ``joined``, ``waiting`` (here: the first message has
    come) and ``close()``.
    """

    __slots__ = (
        "target", "hub", "source", "transport", "cursor", "copy", "last", "joined",
        "waiting", "closing", "_key", "_open", "_buffer", "_parts", "_need", "_fragments", "_closed_by_us",
    )

    def __init__(self, target: Target, hub: Hub, source: str | None = None) -> None:
        self.source = source
        self.transport: asyncio.Transport | None = None
        self._start_following(target, hub)
        self._reset()

    def _reset(self) -> None:
        self._key = base64.b64encode(os.urandom(16))
        self._open = False  # the 101 has come and been checked
        self._buffer = b""
        # A frame longer than what has come is gathered in parts, joined
        # once it is whole (adding each read to the buffer would copy a
        # large board again at every read): its bytes so far and its size.
        self._parts: list[bytes] = []
        self._need = 0
        # The parts of a fragmented message so far (None: no message open).
        self._fragments: list[bytes] | None = None
        self._closed_by_us = False

    def connection_made(self, transport) -> None:
        """Send the upgrade request (resuming from ``cursor`` if there is one)."""
        self.transport = transport
        self.hub.connected += 1
        self._reset()
        path = b"/talks" if self.cursor is None else b"/talks?changesSince=" + self.cursor
        transport.write(
            b"GET " + path + b" HTTP/1.1\r\n" + self.target.headers
            + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            + b"Sec-WebSocket-Key: " + self._key + b"\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        """Check the handshake's answer, then take every whole frame."""
        now = clock()
        if self._need:
            self._parts.append(data)
            self._need -= len(data)
            if self._need > 0:
                return
            data, self._parts, self._need = b"".join(self._parts), [], 0
        buffer = self._buffer + data if self._buffer else data
        if not self._open:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            head, buffer = buffer[:end], buffer[end + 4 :]
            if not self._handshake(head, buffer):
                return
        rest = self._frames(now, buffer)
        if self._need:
            self._buffer, self._parts = b"", [rest]
        else:
            self._buffer = rest

    def _handshake(self, head: bytes, rest: bytes) -> bool:
        """Check the server's answer to the upgrade; False (and the
        connection closed, to be retried) when it is not a WebSocket."""
        self.hub.answers += 1
        lines = head.split(b"\r\n")
        status = lines[0][9:12]
        if status != b"101":
            # A refusal's body has usually come with its head.
            self.hub.error(refusal(int(status), rest) if status.isdigit() else "an upgrade answered without a status")
            self.transport.close()  # connection_lost retries after a pause
            return False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"sec-websocket-accept") != accept_for(self._key):
            self.hub.error("WebSocket: the server's Sec-WebSocket-Accept does not match the key")
            self.transport.close()
            return False
        if headers.get(b"upgrade", b"").lower() != b"websocket":
            self.hub.error("WebSocket: the 101 answer does not upgrade to websocket")
            self.transport.close()
            return False
        self._open = True
        return True

    def _frames(self, now: float, buffer: bytes) -> bytes:
        """Handle every whole frame in ``buffer``; returns the rest."""
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length = second & 0x7F
            start = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length = int.from_bytes(buffer[2:4], "big")
                start = 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length = int.from_bytes(buffer[2:10], "big")
                start = 10
            if second & 0x80 or first & 0x70:
                # Server frames are never masked, and no extension was
                # agreed that would set a reserved bit.
                self._fail("a masked frame or reserved bits from the server")
                return b""
            stop = start + length
            if len(buffer) < stop:
                if stop > 65536:
                    self._need = stop - len(buffer)  # gathered in parts
                break
            payload = buffer[start:stop]
            buffer = buffer[stop:]
            if not self._frame(now, first & 0x80, first & 0x0F, payload):
                return b""
        return buffer

    def _frame(self, now: float, fin: int, opcode: int, payload: bytes) -> bool:
        """One frame; False when the connection is ending."""
        if opcode >= CLOSE:
            if not fin or len(payload) > 125:
                self._fail("a fragmented or oversized control frame")
                return False
            if opcode == PING:
                self.transport.write(client_frame(PONG, payload))
            elif opcode == CLOSE:
                if not self._closed_by_us:
                    # Echo the code, then hang up; the server has said its
                    # last word (1001 on shutdown, say) and the client comes
                    # back with its cursor.
                    self.transport.write(client_frame(CLOSE, payload[:2] if len(payload) >= 2 else b""))
                self.transport.close()
                return False
            return True  # a pong: nothing to do
        if opcode == CONTINUATION:
            if self._fragments is None:
                self._fail("a continuation frame with no message begun")
                return False
            self._fragments.append(payload)
            if not fin:
                return True
            payload, self._fragments = b"".join(self._fragments), None
        elif opcode in (TEXT, BINARY):
            if self._fragments is not None:
                self._fail("a new message before the last one ended")
                return False
            if not fin:
                self._fragments = [payload]
                return True
            if opcode == BINARY:
                self.hub.error("WebSocket: a binary message")
                return True
        else:
            self._fail(f"a frame of unknown opcode {opcode}")
            return False
        self._message(now, payload)
        return True

    def _message(self, now: float, payload: bytes) -> None:
        if not self.waiting:
            self.waiting = True
            self.hub.waiting += 1
        found = _SERVER_TIME.search(payload)
        if found is None:
            self.hub.error("a message without serverTime")
            return
        self.cursor = found.group(1)
        self.hub.inbox.append((self, now, payload))

    def _fail(self, what: str) -> None:
        """The server broke the protocol: count it, close with 1002, retry."""
        self.hub.error(f"WebSocket: {what}")
        self._closed_by_us = True
        self.transport.write(client_frame(CLOSE, PROTOCOL_ERROR.to_bytes(2, "big")))
        self.transport.close()

    def close(self) -> None:
        """Stop following: a close frame (1000), then hang up."""
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            if self._open:
                self._closed_by_us = True
                self.transport.write(client_frame(CLOSE, NORMAL.to_bytes(2, "big")))
            self.transport.close()
