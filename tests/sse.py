"""A small server-sent events client over a raw socket, for the stream tests.

It reads an HTTP/1.1 answer (chunked or ended by the close) and splits the
body into blocks, each what came before a blank line: an event (``id``,
``data``), a ``retry`` hint, or a comment (the heartbeat).
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field

from .harness import WAIT, split_answer


@dataclass
class Block:
    """One blank-line-terminated block of an event stream."""

    id: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self):
        return json.loads(self.data)


class StreamClient:
    """One ``GET /talks`` event stream, opened with ``await StreamClient.open(...)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""  # the body of a non-200 answer
        self._chunked = False
        self._text = ""

    @classmethod
    async def open(
        cls,
        port: int,
        path: str = "/talks",
        headers: dict[str, str] | None = None,
        source: str = "127.0.0.1",
        http10: bool = False,
    ) -> "StreamClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        client = cls(reader, writer)
        await client._request(port, path, headers, http10)
        return client

    @classmethod
    async def open_on(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str,
                      path: str = "/talks", headers: dict[str, str] | None = None) -> "StreamClient":
        """A stream over a connection the caller opened (through TLS, a proxy), asking for ``Host: host``."""
        client = cls(reader, writer)
        await client._request(0, path, headers, False, host)
        return client

    @classmethod
    async def open_unread(cls, port: int, path: str = "/talks") -> socket.socket:
        """A stream whose client never reads, with a receive window as small as Linux allows."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
        await asyncio.get_running_loop().sock_sendall(sock, request.encode())
        return sock

    async def _request(self, port: int, path: str, headers: dict[str, str] | None, http10: bool,
                       host: str | None = None) -> None:
        version = "HTTP/1.0" if http10 else "HTTP/1.1"
        lines = [f"GET {path} {version}", f"Host: {host or f'127.0.0.1:{port}'}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        status_line, self.headers, _ = split_answer(head)
        self.status = int(status_line.split()[1])
        self._chunked = self.headers.get("transfer-encoding") == "chunked"
        if "content-length" in self.headers:
            self.body = await self.reader.readexactly(int(self.headers["content-length"]))

    async def _more(self) -> bool:
        """Read the next piece of the body into the text; False at its end."""
        if self._chunked:
            size = int((await self.reader.readline()).strip() or b"0", 16)
            if size == 0:
                return False
            data = await self.reader.readexactly(size + 2)
            self._text += data[:-2].decode("utf-8")
        else:
            data = await self.reader.read(65536)
            if not data:
                return False
            self._text += data.decode("utf-8")
        return True

    async def block(self, timeout: float = WAIT) -> Block | None:
        """The next block, or None when the server has ended the stream."""
        while "\n\n" not in self._text:
            if not await asyncio.wait_for(self._more(), timeout):
                return None
        raw, self._text = self._text.split("\n\n", 1)
        block = Block()
        for line in raw.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                block.comments.append(value)
            elif name == "id":
                block.id = value
            elif name == "data":
                block.data = value if block.data is None else block.data + "\n" + value
            elif name == "retry":
                block.retry = int(value)
        return block

    async def event(self, timeout: float = WAIT) -> Block:
        """The next block that carries data (retry hints and heartbeats are skipped), within ``timeout`` in all."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                block = await self.block(max(left, 0.001))
            except asyncio.TimeoutError:
                raise AssertionError(f"no event within {timeout:g} s (heartbeats only)") from None
            assert block is not None, "the stream ended before the next event"
            if block.data is not None:
                return block

    async def ended(self, timeout: float = WAIT) -> bool:
        """Read to the end of the stream, within ``timeout`` in all; True once the server has ended it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            block = await self.block(max(deadline - asyncio.get_running_loop().time(), 0.001))
            if block is None:
                return True

    def close(self) -> None:
        self.writer.close()
