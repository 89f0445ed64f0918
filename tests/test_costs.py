"""Costs a client can impose are bounded: slow readers, aborted writes, descriptors, a lost file.

Each test runs the ``talkserver`` command and plays the unlucky or hostile
client over real sockets.
"""

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest

from .harness import ServerProcess, metric_of, metric_reaches, rss_bytes, send, until

TALK = {"presenter": "Ada", "summary": "Engines"}




def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def non_reader(port: int, request: bytes) -> socket.socket:
    """A client with a tiny receive window that sends ``request`` and never reads."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    return s


async def fill_board(port: int, talks: int, summary_size: int) -> int:
    """Propose ``talks`` talks; returns the size of the whole board's answer."""
    summary = "x" * summary_size
    for i in range(talks):
        answer = await send(port, "PUT", f"/talks/T{i}", {"presenter": "Ada", "summary": summary})
        assert answer.status == 204
    return len((await send(port, "GET", "/talks")).body)


# -- slow readers -------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_slow_readers_of_a_large_answer_share_one_copy_of_it():
    with ServerProcess("--db=:memory:") as server:
        # Given a 6 MB board (more than the kernel's socket buffers take)
        size = await fill_board(server.port, 1200, 5000)
        assert size > 6_000_000
        before = rss_bytes(server.process.pid)

        # When 40 clients ask for it (keep-alive and Connection: close alike) and read nothing
        readers = []
        for i in range(40):
            extra = b"Connection: close\r\n" if i % 2 else b""
            readers.append(non_reader(server.port, b"GET /talks HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n"))
        await send(server.port, "GET", "/talks/T0")  # all 40 have been answered by now
        grown = rss_bytes(server.process.pid) - before

        # Then the server holds far less than a copy per client (240 MB)
        try:
            assert grown < 5 * size, f"RSS grew by {grown / 1e6:.0f} MB"
        finally:
            for s in readers:
                s.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_client_that_leaves_an_answer_unread_past_the_send_timeout_is_disconnected():
    with ServerProcess("--db=:memory:", "--send-timeout=2") as server:
        await fill_board(server.port, 1200, 5000)
        # Given two clients that do not read, and one that does
        stuck = [non_reader(server.port, b"GET /talks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") for _ in range(2)]

        # When the send timeout has passed
        await metric_reaches(server.port, "talkserver_slow_readers_closed_total", 2)

        # Then those two were closed and the reader is served as usual
        reader = await send(server.port, "GET", "/talks")
        assert len(reader.json()["talks"]) == 1200
        for s in stuck:
            s.close()


# -- aborted writes -------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_writes_whose_client_left_mid_body_are_not_in_flight_and_do_not_hold_up_a_stop():
    with ServerProcess("--db=:memory:") as server:
        body = json.dumps(TALK).encode()
        # Given 50 writes that sent half their body and then went away
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"PUT /talks/Half%d HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (i, len(body))
                      + body[: len(body) // 2])
            await asyncio.sleep(0.01)
            s.close()

        # Then none is left in flight, nothing was stored, and a stop does not wait for them
        await metric_reaches(server.port, "talkserver_writes_in_flight", 0)
        assert (await send(server.port, "GET", "/talks")).json()["talks"] == []
        assert server.stop() == 0
        assert "still unfinished" not in server.log()


# -- out of file descriptors ------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_out_of_descriptors_the_server_backs_off_logs_briefly_counts_and_recovers():
    with ServerProcess("--db=:memory:", open_files=40) as server:
        # Given more clients than the server has descriptors for
        hogs = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(60)]
        await until(lambda: "cannot accept connections" in server.log())
        cpu_before = cpu_seconds(server.process.pid)
        await asyncio.sleep(3)

        # Then it does not spin (a bound a busy machine only makes easier), nor flood its log
        cpu = cpu_seconds(server.process.pid) - cpu_before
        for s in hogs:
            s.close()
        assert cpu < 1.5, f"{cpu:.1f} s of CPU in 3 s"
        assert server.log().count("cannot accept connections") <= 2
        assert server.log().count("Traceback") == 0

        # And once descriptors are free again it serves, and /metrics tells what happened
        answer = await send(server.port, "GET", "/talks")
        assert answer.status == 200
        errors = await metric_of(server.port, "talkserver_accept_errors_total", error="EMFILE")
        assert errors > 0


# -- the database file removed or replaced ------------------------------------------


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("how", ["removed", "replaced"])
async def test_writes_are_refused_with_503_once_the_database_file_is_gone(how):
    with ServerProcess() as server:
        assert (await send(server.port, "PUT", "/talks/Before", TALK)).status == 204
        db = server.cwd / "talks.db"
        if how == "removed":
            db.unlink()
        else:
            (server.cwd / "other.db").write_bytes(b"")
            os.replace(server.cwd / "other.db", db)

        refused = await send(server.port, "PUT", "/talks/After", TALK)

        assert refused.status == 503
        assert "removed or replaced" in refused.json()["error"]
        assert "removed or replaced" in server.log()
        titles = [t["title"] for t in (await send(server.port, "GET", "/talks")).json()["talks"]]
        assert titles == ["Before"]
