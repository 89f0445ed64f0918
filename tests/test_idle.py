"""The idle timeout with one timer for every connection (talkserver/wire/idle.py):
connections that wait for a request's headers too long are closed; a
parked poll, which has sent its headers, is not."""

import asyncio

import pytest

from .harness import ServerProcess, parse_answer, read_answer


async def read_to_end(reader, timeout=30):
    return await asyncio.wait_for(reader.read(), timeout)


@pytest.mark.gen_test(timeout=60)
async def test_a_kept_alive_connection_idle_after_its_answer_is_closed_after_the_timeout():
    with ServerProcess("--db=:memory:", "--idle-timeout=1") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /talks?changesSince=0 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())

        # The answer comes, then nothing more, and the server hangs up
        raw = await read_to_end(reader)

        assert parse_answer(raw).status == 200
        assert parse_answer(raw).json()["talks"] == []
        writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_connection_that_never_finishes_its_headers_is_closed_after_the_timeout():
    with ServerProcess("--db=:memory:", "--idle-timeout=1") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /talks?changesSince=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished

        assert await read_to_end(reader) == b""
        writer.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_poll_waiting_longer_than_the_idle_timeout_is_answered_not_closed():
    with ServerProcess("--db=:memory:", "--idle-timeout=1", "--poll-timeout=4") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /talks?changesSince=0 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        first = await read_answer(reader)
        cursor = first.json()["serverTime"]

        # When the next poll waits past the idle timeout (until the 4 s poll timeout)
        writer.write(
            f"GET /talks?changesSince={cursor} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
        )
        raw = await read_to_end(reader)

        # Then it gets its (empty) answer before the connection goes idle and is closed
        answer = parse_answer(raw)
        assert answer.status == 200 and answer.json() == {"serverTime": cursor, "talks": []}
        writer.close()
