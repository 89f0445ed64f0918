"""Back-pressure on the fast path: a client that pipelines polls and never
reads holds one answer in the server, not one per request."""

import asyncio
import socket

import pytest

from .harness import ServerProcess, rss_bytes, send

POLLS = 20_000
MB = 1024 * 1024


async def pipeline_without_reading(port: int, request: bytes, count: int) -> tuple[socket.socket, int]:
    """Send ``count`` copies of ``request`` on one connection, reading nothing,
    until all are sent or the server stops taking them; returns the socket
    and how many bytes it took."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    data = memoryview(request * count)
    sent = 0
    idle = 0
    # The server stops taking requests once its answers wait on a full
    # socket; a few idle rounds in a row say it has stopped for good.
    while sent < len(data) and idle < 20:
        try:
            taken = sock.send(data[sent:])
        except BlockingIOError:
            taken = 0
        sent += taken
        idle = 0 if taken else idle + 1
        await asyncio.sleep(0.05)
    return sock, sent


@pytest.mark.gen_test(timeout=120)
async def test_a_client_pipelining_polls_without_reading_cannot_grow_the_servers_memory():
    with ServerProcess("--db=:memory:") as server:
        # Given a board whose whole answer is a few kB
        for i in range(5):
            answer = await send(server.port, "PUT", f"/talks/T{i}", {"presenter": "Ada", "summary": "x" * 300})
            assert answer.status == 204
        size = len((await send(server.port, "GET", "/talks")).body)
        assert size > 1500
        for _ in range(20):  # warm up what every answer allocates
            assert (await send(server.port, "GET", "/talks?changesSince=0")).status == 200
        before = rss_bytes(server.process.pid)

        # When one client pipelines 20,000 polls that all have news, and never
        # reads (each padded to 1 kB, so that together they are more than
        # the kernel's socket buffers hold: the client can send them all only
        # if the server reads them all)
        request = (
            f"GET /talks?changesSince=0 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"X-Padding: {'p' * 1000}\r\n\r\n"
        ).encode()
        sock, taken = await pipeline_without_reading(server.port, request, POLLS)
        try:
            # Then other clients are served as usual
            answer = await send(server.port, "GET", "/talks", source="127.0.0.2")
            assert answer.status == 200 and len(answer.json()["talks"]) == 5
            answer = await send(server.port, "GET", "/talks/T3", source="127.0.0.3")
            assert answer.json()["summary"] == "x" * 300
            # and the server holds a bounded amount for the client (queued
            # answers for 20,000 polls would be 20,000 x its few kB)
            grown = rss_bytes(server.process.pid) - before
            assert grown < 4 * MB, f"RSS grew by {grown / MB:.1f} MB; the server took {taken / MB:.1f} MB of requests"
        finally:
            sock.close()
