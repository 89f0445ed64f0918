"""SIGTERM drains the server: waiting polls answered at once, writes finished, exit 0.

"No acknowledged write lost" is checked by opening the server's database
(the default talks.db in its own directory) after it has exited: every
write that got its 204 must be there.
"""

import asyncio
import socket

import pytest

from talkserver.stores.sqlite import SQLiteStore

from .harness import WAIT, ServerProcess, parse_answer, send, until, metric_reaches

TALK = {"presenter": "Ada", "summary": "Engines"}


async def exit_code(server):
    return await server.stopped()


async def stored_titles(server):
    """The titles in the database a stopped server left behind."""
    store = SQLiteStore(str(server.cwd / "talks.db"))
    try:
        return {talk["title"] for talk in store.all_talks()}
    finally:
        await store.close()


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_answers_200_waiting_polls_at_once_with_no_changes_and_exits_0():
    with ServerProcess("--poll-timeout=120") as server:
        await send(server.port, "PUT", "/talks/Before", TALK)
        cursor = (await send(server.port, "GET", "/talks")).json()["serverTime"]
        polls = [asyncio.ensure_future(send(server.port, "GET", f"/talks?changesSince={cursor}")) for _ in range(200)]
        await metric_reaches(server.port, "talkserver_waiting_clients", 200)

        server.terminate()
        answers = await asyncio.gather(*polls)  # each send gives up after WAIT, well before the 120 s poll timeout

        assert {a.status for a in answers} == {200}
        assert {a.body for a in answers} == {answers[0].body}
        assert answers[0].json() == {"serverTime": cursor, "talks": []}
        assert await exit_code(server) == 0
        assert "stopped: answered 200 waiting polls; 1 talk in the store" in server.log()


@pytest.mark.gen_test(timeout=120)
async def test_a_write_still_arriving_at_sigterm_is_finished_and_stored():
    with ServerProcess() as server:
        body = b'{"presenter": "Ada", "summary": "sent in two halves"}'
        half = len(body) // 2
        writer = socket.create_connection(("127.0.0.1", server.port))
        writer.sendall(
            f"PUT /talks/Late HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:half]
        )
        await metric_reaches(server.port, "talkserver_writes_in_flight", 1)

        server.terminate()
        await until(lambda: "stopping: answering waiting polls, finishing writes" in server.log())
        assert server.process.poll() is None, "the server stopped before the write in flight finished"
        writer.sendall(body[half:])  # a server that had not waited for it could not answer now
        writer.settimeout(WAIT)
        answer = parse_answer(b"".join(iter(lambda: writer.recv(65536), b"")))
        writer.close()

        assert answer.status == 204
        assert await exit_code(server) == 0
        assert await stored_titles(server) == {"Late"}


@pytest.mark.gen_test(timeout=120)
async def test_writes_acknowledged_during_sigterm_are_all_in_the_store():
    with ServerProcess("--write-rate=0") as server:
        acknowledged, attempted = [], []

        async def writer(name):
            for n in range(100_000):
                title = f"{name}-{n}"
                attempted.append(title)
                try:
                    answer = await send(server.port, "PUT", f"/talks/{title}", TALK, timeout=10)
                except (OSError, ValueError, IndexError):
                    return  # refused or cut off: the server has stopped
                if answer.status == 204:
                    acknowledged.append(title)

        writers = [asyncio.ensure_future(writer(f"w{i}")) for i in range(8)]
        await until(lambda: len(acknowledged) >= 50)
        server.terminate()
        await asyncio.wait_for(asyncio.gather(*writers), WAIT)

        assert await exit_code(server) == 0
        stored = await stored_titles(server)
        assert set(acknowledged) <= stored <= set(attempted)
        assert len(acknowledged) >= 50
