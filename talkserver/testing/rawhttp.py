"""One request over a raw socket, and HTTP answers taken apart.

``send`` speaks HTTP/1.1 itself over a socket of its own (from any
127.x source address, which is how one machine plays several clients);
``split_answer`` is the one place an answer's head is taken apart, and
``parse_answer`` and ``read_answer`` (the next answer on a kept-alive
connection) use it.  ``exchange`` is one request on a kept-alive
``http.client`` connection.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from typing import NamedTuple

from talkserver.testing import WAIT


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    """One request on a kept-alive ``conn``: (status, decoded JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data)
    response = conn.getresponse()
    raw = response.read()
    return response.status, (json.loads(raw) if raw else None)


class Headers(dict):
    """An answer's header values by lower-case name; ``lines``: its header
    lines as sent, (name, value) in order."""

    lines: list[tuple[str, str]]


class Answer(NamedTuple):
    """One HTTP answer; unpacks as (status, headers, body)."""

    status: int
    headers: Headers  # lower-case names; headers.lines as sent
    body: bytes

    def json(self):
        return json.loads(self.body)

    def without_date(self) -> tuple:
        """Status, header lines in order and body, all but the Date: what two equal answers share."""
        return self.status, [(n, v) for n, v in self.headers.lines if n.lower() != "date"], self.body


async def send(
    port: int,
    method: str,
    path: str,
    body: bytes | str | dict | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    timeout: float = WAIT,
) -> Answer:
    """One request on its own connection (``Connection: close``) and its answer."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b""))
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return parse_answer(raw)


def split_answer(raw: bytes) -> tuple[str, Headers, bytes]:
    """An HTTP answer's bytes as (status line, headers by lower-case name, the bytes after the head).

    The one place the tests take an answer's head apart.
    """
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = Headers()
    headers.lines = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
        headers.lines.append((name.strip(), value.strip()))
    return status_line, headers, rest


def parse_answer(raw: bytes) -> Answer:
    """An HTTP/1.1 answer with a Content-Length (or none, for 204) from its bytes."""
    status_line, headers, rest = split_answer(raw)
    length = int(headers.get("content-length", "0"))
    return Answer(int(status_line.split()[1]), headers, rest[:length])


async def read_answer(connection, head_only: bool = False, timeout: float = WAIT) -> Answer:
    """The next answer on a kept-alive ``connection`` (an asyncio StreamReader
    or a Tornado IOStream), its body read by Content-Length (none with
    ``head_only``, for an answer to HEAD)."""
    if isinstance(connection, asyncio.StreamReader):
        head = await asyncio.wait_for(connection.readuntil(b"\r\n\r\n"), timeout)
        read_bytes = connection.readexactly
    else:
        head = await asyncio.wait_for(connection.read_until(b"\r\n\r\n"), timeout)
        read_bytes = connection.read_bytes
    status_line, headers, _ = split_answer(head)
    length = 0 if head_only else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(read_bytes(length), timeout) if length else b""
    return Answer(int(status_line.split()[1]), headers, body)
