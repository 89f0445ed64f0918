"""The load test's clients: raw HTTP/1.1 long pollers and writers on asyncio.

One process has to hold 10,000 connections and keep up with a server that
answers them all within a fraction of a second, so a client is a small
``asyncio.Protocol`` that parses answers itself, not a task per client with
an HTTP library.  When an answer arrives a poller does only what a browser
must do at once: note the time, pick ``serverTime`` out of the bytes and send
the next ``GET /talks?changesSince=...``.  The JSON is parsed and checked
later, in batches, by the ``Tally`` (tally.py), so the receive times of a
burst are not pushed back by the bookkeeping of the answers before them.

Only what talk servers send is understood: answers framed by
``Content-Length`` (or bodiless ones such as 204), keep-alive unless the
server says ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time

from urllib.parse import quote

clock = time.perf_counter

_SERVER_TIME = re.compile(rb'"serverTime"\s*:\s*(-?[0-9]+)')

# Pause before a client retries after an error answer or a lost connection,
# as the book's browser client does, so a failing server is not hammered.
RETRY_BACKOFF = 0.5


class ProtocolError(Exception):
    """The server sent something that is not an HTTP/1.1 answer we can frame."""


class Refused(ProtocolError):
    """A talk server (it answered ``{"error": ...}``) refused the request."""


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: write requests, split the answers.

    Subclasses implement ``answered(now, status, body)``; ``now`` is the
    clock reading when the answer's last byte arrived.
    """

    __slots__ = ("transport", "_buffer", "_parts", "_need", "_close_after", "source", "retry_after")

    def __init__(self, source: str | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        # A large answer (a big board) is gathered in parts and joined once
        # it is whole: adding each read to the buffer would copy it again
        # at every read.  Its bytes so far, and how many are still to come.
        self._parts: list[bytes] = []
        self._need = 0
        self._close_after = False
        # The local address to connect from (None: the system's choice).
        self.source = source
        # Seconds the last 429 answer asked to wait (its Retry-After).
        self.retry_after: float | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._buffer = b""
        self._parts, self._need = [], 0

    def data_received(self, data: bytes) -> None:
        now = clock()
        if self._need:
            self._parts.append(data)
            self._need -= len(data)
            if self._need > 0:
                return
            data, self._parts, self._need = b"".join(self._parts), [], 0
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            try:
                status = int(head[9:12])
                length = _content_length(head)
            except (ValueError, ProtocolError) as e:
                self.failed(f"bad answer from the server: {e}")
                return
            stop = end + 4 + length
            if len(buffer) < stop:
                if stop - len(buffer) > 65536:
                    self._need = stop - len(buffer)
                    self._parts, buffer = [buffer], b""
                break
            body = buffer[end + 4 : stop]
            buffer = buffer[stop:]
            if b"\r\nconnection: close" in head:
                self._close_after = True
            if status == 429:
                self.retry_after = _retry_after(head)
            self.answered(now, status, body)
        self._buffer = buffer

    def send(self, request: bytes) -> None:
        """Write one request (the answer comes to ``answered``)."""
        if self._close_after and self.transport is not None:
            # The server said it closes after its last answer: the request
            # goes on a new connection once connection_lost has run.
            self.transport.close()
            return
        self.transport.write(request)

    def answered(self, now: float, status: int, body: bytes) -> None:
        raise NotImplementedError

    def failed(self, reason: str) -> None:
        """Drop a connection that sent something unusable."""
        if self.transport is not None:
            self.transport.close()


def _retry_after(head: bytes) -> float | None:
    """The seconds in a Retry-After header, if there is one in that form."""
    start = head.find(b"\r\nretry-after:")
    if start < 0:
        return None
    end = head.find(b"\r\n", start + 2)
    try:
        return float(head[start + 14 : end if end >= 0 else None])
    except ValueError:
        return None


def _content_length(head: bytes) -> int:
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        if b"\r\ntransfer-encoding:" in head:
            raise ProtocolError("chunked answers are not supported")
        return 0
    start += 17
    end = head.find(b"\r\n", start)
    return int(head[start : end if end >= 0 else None])


class Target:
    """Where the load goes: host, port and the request bytes built once.

    Real browsers come from many addresses, and a talk server limits what
    one address may do (talkserver: 200 waiting polls and 20 writes/s by
    default).  So on a loopback target, where every address in 127.0.0.0/8
    reaches the server, clients are spread over source addresses,
    ``per_address`` to each (0: all from the system's choice).
    """

    def __init__(
        self, host: str, port: int, per_address: int = 0, host_header: str | None = None,
        authorization: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.per_address = per_address if _is_loopback_ipv4(host) else 0
        # "localhost" may resolve to ::1 first, which no 127.x source can reach.
        self._connect_host = "127.0.0.1" if self.per_address and host == "localhost" else host
        # The Host every request names: the URL's, unless a proxy in front
        # routes or checks by another name (--host-header).
        self.host_header = (host_header or f"{host}:{port}").encode("ascii")
        # The header lines every request carries: Host, and the credentials
        # of a password-protected server (credentials.py).
        self.headers = b"Host: " + self.host_header + b"\r\n"
        if authorization is not None:
            self.headers += b"Authorization: " + authorization.encode("ascii") + b"\r\n"
        self.get_talks = self.request("GET", "/talks")
        self._poll_prefix = b"GET /talks?changesSince="
        self._poll_suffix = b" HTTP/1.1\r\n" + self.headers + b"\r\n"

    def poll(self, cursor: bytes) -> bytes:
        """``GET /talks?changesSince=cursor``, ready to write."""
        return self._poll_prefix + cursor + self._poll_suffix

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """Any request, ready to write."""
        head = f"{method} {path} HTTP/1.1\r\n".encode("ascii") + self.headers
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode("ascii")
        return head + b"\r\n" + (body or b"")

    def poller_source(self, index: int) -> str | None:
        """The address poller number ``index`` sends from (127.0.0.2 onwards)."""
        if not self.per_address:
            return None
        n = 2 + index // self.per_address
        return f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"

    def writer_source(self, index: int) -> str | None:
        """The address writer number ``index`` sends from: one each, apart from the pollers'."""
        if not self.per_address:
            return None
        return f"127.255.{index // 254}.{index % 254 + 1}"

    async def connect(self, protocol: Connection) -> None:
        loop = asyncio.get_running_loop()
        local = None if protocol.source is None else (protocol.source, 0)
        await loop.create_connection(lambda: protocol, self._connect_host, self.port, local_addr=local)


def _is_loopback_ipv4(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


class Follower:
    """How a client that follows the board (a poller, or an event stream in
    streams.py) ends its connection: the loss is counted, and the client
    comes back after RETRY_BACKOFF with the cursor it had, unless told to stop.

    Subclasses declare the slots ``_start_following`` fills, and ``transport``.
    """

    __slots__ = ()

    def _start_following(self, target: "Target", hub: "Hub") -> None:
        """The state every follower starts with: no cursor or copy yet, not waiting."""
        self.target, self.hub = target, hub
        self.cursor: bytes | None = None
        self.copy: dict | None = None
        self.last: dict[str, int] = {}
        self.joined: float | None = None
        self.waiting = False
        self.closing = False

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.hub.connected -= 1
        if self.waiting:
            self.waiting = False
            self.hub.waiting -= 1
        if not self.closing:
            self.hub.reconnects += 1
            asyncio.get_running_loop().call_later(RETRY_BACKOFF, self.hub.reconnect, self)

    def close(self) -> None:
        """Stop following and hang up."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def hang_up(self) -> None:
        """Drop the connection as a browser leaving would; the client comes
        back after RETRY_BACKOFF with the cursor it had (see churn.py)."""
        if self.transport is not None and not self.transport.is_closing():
            self.hub.hang_ups += 1
            self.transport.close()


class Poller(Follower, Connection):
    """A browser's long-polling loop, as small as it can be.

    ``GET /talks`` once, then ``GET /talks?changesSince=serverTime`` again
    and again; errors and lost connections are retried with the same
    cursor after a short pause.  Every 200 answer goes to ``inbox`` as
    ``(poller, now, body)`` for the tally; ``copy`` and ``last`` belong to
    the tally too (the poller's view of the board and, per title, the
    newest change it has seen).
    """

    __slots__ = ("target", "hub", "cursor", "copy", "last", "joined", "waiting", "closing")

    def __init__(self, target: Target, hub: "Hub", source: str | None = None) -> None:
        super().__init__(source)
        self._start_following(target, hub)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.hub.connected += 1
        self._close_after = False
        self._ask()

    def _ask(self) -> None:
        if self.closing or self.transport is None or self.transport.is_closing():
            return
        if self.cursor is None:
            self.send(self.target.get_talks)
        else:
            self.send(self.target.poll(self.cursor))
            self.waiting = True
            self.hub.waiting += 1

    def answered(self, now: float, status: int, body: bytes) -> None:
        hub = self.hub
        if self.waiting:
            self.waiting = False
            hub.waiting -= 1
        hub.answers += 1
        if status != 200:
            hub.error(refusal(status, body))
            asyncio.get_running_loop().call_later(RETRY_BACKOFF, self._ask)
            return
        found = _SERVER_TIME.search(body)
        if found is None:
            hub.error("an answer without serverTime")
            asyncio.get_running_loop().call_later(RETRY_BACKOFF, self._ask)
            return
        self.cursor = found.group(1)
        hub.inbox.append((self, now, body))
        hub.ask_soon(self)


class Hub:
    """What all pollers of one run share: counters, the inbox, reconnecting."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.connected = 0
        self.waiting = 0
        self.answers = 0
        self.reconnects = 0
        self.hang_ups = 0
        self.errors: dict[str, int] = {}
        self.inbox: list[tuple[Poller, float, bytes]] = []
        self._asking: list[Poller] = []
        self._connecting: set[asyncio.Task] = set()

    def ask_soon(self, poller: Poller) -> None:
        """Send ``poller``'s next poll once the answers already readable are read.

        A browser polls again at once; a few microseconds later, after the
        other sockets of this burst have been read, keeps the receive times
        of a burst from waiting behind thousands of writes.
        """
        if not self._asking:
            asyncio.get_running_loop().call_soon(self._ask_all)
        self._asking.append(poller)

    def _ask_all(self) -> None:
        asking, self._asking = self._asking, []
        for poller in asking:
            poller._ask()

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def reconnect(self, poller: Poller) -> None:
        """Open a new connection for ``poller`` (it keeps its cursor)."""
        if poller.closing:
            return
        task = asyncio.ensure_future(self._reconnect(poller))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _reconnect(self, poller: Poller) -> None:
        try:
            await self.target.connect(poller)
        except OSError as e:
            self.error(f"connect: {e.strerror or e}")
            asyncio.get_running_loop().call_later(RETRY_BACKOFF, self.reconnect, poller)


class Writer(Connection):
    """One writer's keep-alive connection: one request at a time, awaited."""

    __slots__ = ("target", "_answer")

    def __init__(self, target: Target, source: str | None = None) -> None:
        super().__init__(source)
        self.target = target
        self._answer: asyncio.Future | None = None

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes, float | None]:
        """Send one request and return (status, body, Retry-After seconds of a 429 or None).

        Raises OSError on a lost connection.
        """
        if self._close_after and self.transport is not None:
            # The server closes after its last answer: hang up first, so the
            # old connection's end is not taken for the new one's.
            self.transport.close()
            for _ in range(1000):
                if self.transport is None:
                    break
                await asyncio.sleep(0.001)
        if self.transport is None or self.transport.is_closing():
            self._close_after = False
            await self.target.connect(self)
        data = None if body is None else json.dumps(body).encode("utf-8")
        self._answer = asyncio.get_running_loop().create_future()
        self.send(self.target.request(method, path, data))
        status, answer = await self._answer
        return status, answer, self.retry_after if status == 429 else None

    def answered(self, now: float, status: int, body: bytes) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((status, body))

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError("the server closed the connection"))

    def failed(self, reason: str) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError(reason))
        super().failed(reason)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _json_error(body: bytes) -> str | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer["error"] if isinstance(answer, dict) and isinstance(answer.get("error"), str) else None


def reason(body: bytes, limit: int = 200) -> str:
    """The server's own words for a refusal: the ``error`` of a JSON answer
    (talk servers send ``{"error": message}``), else the first line of the
    text a proxy sent, cut to ``limit`` characters; "" when there is none."""
    error = _json_error(body)
    text = (error if error is not None else body.decode("utf-8", "replace")).strip()
    line = text.split("\n", 1)[0].strip() if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def refusal(status: int, body: bytes) -> str:
    """An error kind for the results: ``HTTP 429: <the server's message>``."""
    why = reason(body)
    return f"HTTP {status}: {why}" if why else f"HTTP {status}"


def talk_path(title: str, comments: bool = False) -> str:
    """The URL path of a talk (or of its comments)."""
    path = "/talks/" + quote(title, safe="")
    return path + "/comments" if comments else path


async def fetch_talks(target: Target, timeout: float = 10.0) -> list[dict]:
    """``GET /talks`` on a fresh connection: the server's whole board."""
    writer = Writer(target)
    try:
        status, body, _ = await asyncio.wait_for(writer.request("GET", "/talks"), timeout)
    finally:
        writer.close()
    if status != 200:
        why = reason(body)
        error = Refused if _json_error(body) else ProtocolError
        raise error(f"GET /talks answered HTTP {status}" + (f": {why}" if why else ""))
    try:
        answer = json.loads(body)
        talks = answer["talks"]
        int(answer["serverTime"])
    except (ValueError, KeyError, TypeError):
        raise ProtocolError("GET /talks did not answer {\"serverTime\": ..., \"talks\": [...]}") from None
    if not isinstance(talks, list):
        raise ProtocolError("GET /talks answered talks that are not a list")
    return talks


