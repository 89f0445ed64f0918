"""History cuts that later writes would hide, through HTTP: several real servers on one PostgreSQL board.

Real ``python -m talkserver`` processes, a real ``pg_dump``/``pg_restore``
of their database, real sockets.  A server is held still with SIGSTOP
while others write, so which server hears of the restore first is chosen
by the test, not by timing.  In the end every server serves the
database's board, answers a cursor from the lost stretch with the whole
board and ``reset``, and a cursor from before it with a diff.
"""

import os
import signal
from contextlib import contextmanager
from urllib.parse import quote

import pytest

from .harness import ServerProcess, send, until

LOST = [f"Lost {letter}" for letter in "ABCDEFGHIJ"]


@pytest.fixture
def database(postgres_cluster):
    return postgres_cluster.new_database()


def started(database):
    return ServerProcess(f"--db={database}", "--poll-timeout=5", "--logging=warning")


def hold(server):
    """Stop ``server`` (SIGSTOP): it neither catches up nor answers until ``release``."""
    os.kill(server.process.pid, signal.SIGSTOP)


def release(server):
    os.kill(server.process.pid, signal.SIGCONT)


@contextmanager
def held(*servers):
    """The servers held still for the block."""
    for server in servers:
        hold(server)
    try:
        yield
    finally:
        for server in servers:
            release(server)


async def board(server):
    return (await send(server.port, "GET", "/talks")).json()


async def put(server, title, presenter="Ann", summary="A talk"):
    """PUT a talk through ``server``; returns the serverTime it answers with afterwards (the write's stamp)."""
    answer = await send(server.port, "PUT", "/talks/" + quote(title), {"presenter": presenter, "summary": summary})
    assert answer.status == 204, answer.body
    return (await board(server))["serverTime"]


async def since(server, cursor):
    return (await send(server.port, "GET", f"/talks?changesSince={cursor}")).json()


async def has(server, title, presenter=None):
    talks = {t["title"]: t for t in (await board(server))["talks"]}
    return title in talks and (presenter is None or talks[title]["presenter"] == presenter)


async def every_server_serves(servers, expected):
    """Wait until each server's board is ``expected`` (the talks of the database's board)."""
    for server in servers:
        async def serves():
            return (await board(server))["talks"] == expected

        await until(serves)


async def check_cursors(servers, lost_stamps, before):
    """Every server: each cursor of the lost stretch gets the whole board with reset; ``before`` gets a diff."""
    expected = (await board(servers[0]))["talks"]
    for server in servers:
        for cursor in lost_stamps:
            answer = await since(server, cursor)
            assert answer.get("reset") is True, (server.port, cursor, answer)
            assert answer["talks"] == expected
        diff = await since(server, before)
        assert "reset" not in diff and {t["title"] for t in diff["talks"]} <= {t["title"] for t in expected}


@pytest.mark.gen_test(timeout=180)
async def test_a_lost_title_written_again_by_another_server_does_not_hide_the_cut(
    postgres_cluster, database, tmp_path
):
    with started(database) as s, started(database) as t:
        base = await put(s, "Base", "Bo")
        await until(lambda: has(t, "Base"))
        postgres_cluster.dump(database, tmp_path / "base.dump")
        # Given: S applied A..J; T, held still, applied none of them.
        hold(t)
        try:
            stamps = [await put(s, title) for title in LOST]
            # When: with S held still, the database goes back, and T (let go
            # only now) writes J again, stamped past S's head.
            with held(s):
                postgres_cluster.restore(database, tmp_path / "base.dump")
                release(t)
                assert await put(t, LOST[-1], "Cy") > stamps[-1]
        finally:
            release(t)
        # Then: S drops A..I and serves T's J; both reset every cursor of the lost stretch.
        expected = (await board(t))["talks"]
        assert [x["title"] for x in expected] == ["Base", LOST[-1]]
        await every_server_serves([s, t], expected)
        await check_cursors([s, t], stamps, base)
        assert any("history cut" in line for line in s.log().splitlines()), s.log()


@pytest.mark.gen_test(timeout=180)
async def test_a_cut_recorded_by_a_server_behind_makes_the_server_ahead_drop_what_it_applied_beyond_it(
    postgres_cluster, database, tmp_path
):
    with started(database) as s, started(database) as t:
        base = await put(s, "Base", "Bo")
        postgres_cluster.dump(database, tmp_path / "base.dump")
        stamps = [await put(s, title) for title in LOST]
        await until(lambda: has(t, LOST[-1]))
        # Given: T one change behind S.
        hold(t)
        try:
            stamps.append(await put(s, LOST[-1], "Di"))
            # When: with S held still, the database goes back; T (let go only
            # now) records the cut up to its own head, and writes J again.
            with held(s):
                postgres_cluster.restore(database, tmp_path / "base.dump")
                release(t)

                async def t_cut():
                    return "historyCut" in (await send(t.port, "GET", "/healthz")).json()

                await until(t_cut)
                await put(t, LOST[-1], "Cy")
        finally:
            release(t)
        # Then: S drops what it applied beyond the database too.
        expected = (await board(t))["talks"]
        assert [x["title"] for x in expected] == ["Base", LOST[-1]]
        await every_server_serves([s, t], expected)
        await check_cursors([s, t], stamps, base)


@pytest.mark.gen_test(timeout=240)
async def test_a_cut_under_three_servers_with_one_lagging_ends_with_the_databases_board(
    postgres_cluster, database, tmp_path
):
    with started(database) as s, started(database) as t, started(database) as lagging:
        base = await put(s, "Base", "Bo")
        await until(lambda: has(lagging, "Base"))
        postgres_cluster.dump(database, tmp_path / "base.dump")
        stamps = [await put(s, title) for title in LOST[:3]]
        await until(lambda: has(lagging, LOST[2]))
        # Given: the lagging server applied A..C; S and T applied A..J.
        with held(lagging):
            stamps += [await put(s, title) for title in LOST[3:]]
            await until(lambda: has(t, LOST[-1]))
            # When: the database goes back while the lagging server is held still.
            postgres_cluster.restore(database, tmp_path / "base.dump")
        await put(lagging, "After", "Cy")
        await put(t, LOST[-1], "Cy")
        # Then: all three serve the database's board, and reset the lost stretch alike.
        await until(lambda: has(s, LOST[-1], "Cy"))
        expected = (await board(s))["talks"]
        assert sorted(x["title"] for x in expected) == ["After", "Base", LOST[-1]]
        await every_server_serves([s, t, lagging], expected)
        await check_cursors([s, t, lagging], stamps, base)
