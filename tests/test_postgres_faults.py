"""PostgreSQL faults under running servers: a frozen database, a stop and start, a failover.

Real ``python -m talkserver`` processes on real PostgreSQL clusters of the
test's own (started by talkserver.testing.cluster), which the tests freeze with
SIGSTOP, stop, kill and promote.
"""

import asyncio
import itertools
import os
import re
import signal
import tempfile
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from talkserver.stores import Settings
from talkserver.stores.postgres import PostgresStore
from talkserver.testing.cluster import Cluster, port_free_now

from .harness import ServerProcess, send, until
from .postgres import processes, stopped

# Short, so the tests do not wait long; the default is 5 s.
DB_TIMEOUT = 2


@pytest.fixture
def own_cluster():
    """A cluster of this test's own, to freeze, stop and start under running servers."""
    cluster = Cluster()
    yield cluster
    cluster.destroy()


def started(*options):
    return ServerProcess("--poll-timeout=10", f"--db-timeout={DB_TIMEOUT}", "--logging=warning", *options)


def talk(title):
    return "/talks/" + quote(title, safe="")


async def put(server, title, timeout=30):
    return await send(server.port, "PUT", talk(title), {"presenter": "p", "summary": "s"}, timeout=timeout)


async def board(server):
    return {t["title"] for t in (await send(server.port, "GET", "/talks")).json()["talks"]}




def log_records(text):
    """The server's log as records; a line that starts no record (a traceback's) fails the test."""
    lines = text.splitlines()
    strays = [line for line in lines if not re.match(r"\[[DIWEC] \d{6} ", line)]
    assert not strays, "lines that are no log record:\n" + "\n".join(strays[:40])
    return lines


# -- a frozen database ------------------------------------------------------------


@pytest.mark.gen_test(timeout=180)
async def test_a_write_to_a_frozen_database_is_answered_in_time_and_never_falsely_refused(own_cluster):
    database = own_cluster.new_database()
    with started(f"--db={database}") as a, started(f"--db={database}") as b:
        for k in range(4):  # connections open and statements prepared, as on a server that has run a while
            assert (await put((a, b)[k % 2], f"before {k}")).status == 204
        await until(lambda: _same_boards(a, b))
        cursor = (await send(b.port, "GET", "/talks")).json()["serverTime"]
        before = await board(a)
        frozen = processes(own_cluster)

        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            titles = [f"frozen {k}" for k in range(4)]
            writes = [asyncio.ensure_future(put((a, b)[k % 2], title)) for k, title in enumerate(titles)]
            # Meanwhile: reads and polls are answered from memory.
            reads = [await send(s.port, "GET", "/talks") for s in (a, b)]
            old_poll = await send(b.port, "GET", f"/talks?changesSince={cursor - 1}")
            answers = await asyncio.gather(*writes)
            health = await send(a.port, "GET", "/healthz", timeout=3 * DB_TIMEOUT)
            still_frozen = all(stopped(pid) for pid in frozen)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)

        # Writes go on, and every server ends with the same board.
        async def writable():
            return all([(await put(s, f"after {s.port}")).status == 204 for s in (a, b)])

        await until(writable)
        await until(lambda: _same_boards(a, b))
        after = await board(a)
        log = a.log() + b.log()

    assert still_frozen, "the writes were answered only after PostgreSQL went on"
    assert [r.status for r in reads] == [200, 200]
    assert {t["title"] for t in reads[0].json()["talks"]} == before
    assert old_poll.status == 200 and "reset" not in old_poll.json()
    assert health.status == 503 and health.json()["database"]["reachable"] is False
    for title, answer in zip(titles, answers):
        assert answer.status in (503, 504), (title, answer)
        error = answer.json()["error"]
        if answer.status == 503:
            # Certainly not saved, so on no server.
            assert error.startswith("the change could not be saved: the database is unreachable")
            assert title not in after
        else:
            assert error.startswith("the change may or may not have been saved: the database is unreachable")
            assert "reload" in error
    assert {f"after {a.port}", f"after {b.port}"} <= after
    assert f"no answer within {DB_TIMEOUT} s" in log


async def _same_boards(*servers):
    boards = [await board(s) for s in servers]
    return all(b == boards[0] for b in boards)


# -- operators' log lines ------------------------------------------------------------


@pytest.mark.gen_test(timeout=180)
async def test_postgresql_stopped_and_started_gives_one_line_per_state_change_and_no_traceback(own_cluster):
    loop = asyncio.get_running_loop()
    with started(f"--db={own_cluster.new_database()}") as server:
        assert (await put(server, "first")).status == 204
        cursor = (await send(server.port, "GET", "/talks")).json()["serverTime"]
        stop = asyncio.Event()

        async def busy():
            # Writes, and polls whose cursor needs a catch-up, all through the outage.
            for k in itertools.count():
                if stop.is_set():
                    return
                await put(server, f"busy {k}")
                await send(server.port, "GET", f"/talks?changesSince={cursor + 10**9}")
                await asyncio.sleep(0.1)

        traffic = asyncio.ensure_future(busy())
        await loop.run_in_executor(None, own_cluster.stop)
        await asyncio.sleep(3.5)  # several rounds of trying again
        await loop.run_in_executor(None, own_cluster.start)
        await until(lambda: _writable(server))
        stop.set()
        await traffic
        health = (await send(server.port, "GET", "/healthz")).json()
        records = log_records(server.log())

    store_lines = [line for line in records if "PostgreSQL is" in line]
    assert len(store_lines) == 2, store_lines
    assert "PostgreSQL is unreachable (" in store_lines[0] and "trying again every 1 s" in store_lines[0]
    assert "PostgreSQL is reachable again after " in store_lines[1]
    assert health == {"ok": True, "database": {"reachable": True, "primary": f"127.0.0.1:{own_cluster.port}"}}


async def _writable(server):
    return (await put(server, "probe")).status == 204


# -- failover to a standby ---------------------------------------------------------


class Standby(Cluster):
    """A streaming-replication standby of ``primary``, made with pg_basebackup -R and started."""

    def __init__(self, primary: Cluster) -> None:
        self.durable = False
        self.bin, self.owner = primary.bin, primary.owner
        self.dir = Path(tempfile.mkdtemp(prefix="talkserver-pg-standby-"))
        self.data = self.dir / "data"
        self.port = port_free_now()  # PostgreSQL cannot bind port 0
        self._names = itertools.count()
        if self.owner is not None:
            os.chown(self.dir, *self.owner)
        self._run("pg_basebackup", "-D", str(self.data), "-R", "-X", "stream", "--no-sync",
                  "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres")
        self.start()

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")


@pytest.fixture
def primary_and_standby():
    primary = Cluster()
    standby = None
    try:
        standby = Standby(primary)
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


@pytest.mark.gen_test(timeout=240)
async def test_servers_on_a_multi_host_url_take_writes_again_after_the_standby_is_promoted(primary_and_standby):
    primary, standby = primary_and_standby
    name = primary.new_database().rsplit("/", 1)[1]
    # Synchronous: a commit is acknowledged once the standby has it, so
    # every acknowledged write reached the standby.
    await until(lambda: _replicating(primary))
    primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'")
    primary.psql("SELECT pg_reload_conf()")
    await until(lambda: _replicating(primary, "sync"))
    url = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{name}"
           "?target_session_attrs=read-write")

    with started(f"--db={url}") as a, started(f"--db={url}") as b:
        acknowledged, unknown = set(), set()
        stop = asyncio.Event()

        async def writer(number):
            for k in itertools.count():
                if stop.is_set():
                    return
                title = f"w{number} #{k}"
                answer = await put((a, b)[k % 2], title)
                if answer.status == 204:
                    acknowledged.add(title)
                elif answer.status == 504:
                    unknown.add(title)
                else:
                    await asyncio.sleep(0.1)

        writing = [asyncio.ensure_future(writer(n)) for n in range(4)]
        await until(lambda: _more_than(acknowledged, 20))
        for pid in processes(primary):
            os.kill(pid, signal.SIGKILL)
        killed_at = len(acknowledged)
        await asyncio.get_running_loop().run_in_executor(None, standby.promote)
        # Writes go on through both servers, with no restart.
        await until(lambda: _more_than(acknowledged, killed_at + 20))
        stop.set()
        await asyncio.gather(*writing)
        await until(lambda: _same_boards(a, b))
        healths = [(await send(s.port, "GET", "/healthz")).json() for s in (a, b)]
        boards = [await board(s) for s in (a, b)]
        with started(f"--db={url}") as c:  # one that knows only what the database has
            late = await board(c)
        logs = [log_records(s.log()) for s in (a, b)]

    in_database = set(standby.psql("SELECT title FROM talks", name).splitlines())
    assert acknowledged <= in_database
    assert boards == [late, late] and acknowledged <= late
    assert late <= acknowledged | unknown
    new_primary = f"127.0.0.1:{standby.port}"
    assert healths == [{"ok": True, "database": {"reachable": True, "primary": new_primary}}] * 2
    for records in logs:
        assert any(f"the PostgreSQL primary is now {new_primary} (was 127.0.0.1:{primary.port})" in line
                   for line in records)


async def _replicating(primary, state="async"):
    return primary.psql("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'") == state


async def _more_than(titles, count):
    return len(titles) > count


# -- edges: slow is not away, a missing GRANT, the reason given ------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_write_that_is_slow_is_answered_504_and_does_not_mark_the_database_away(postgres_cluster):
    database = postgres_cluster.new_database()
    loop = asyncio.get_running_loop()
    with started(f"--db={database}") as server:
        assert (await put(server, "first")).status == 204
        # Another session holds the head row (every write's lock) longer than --db-timeout.
        locked = loop.run_in_executor(None, postgres_cluster.psql,
                                      f"BEGIN; SELECT * FROM head FOR UPDATE; SELECT pg_sleep({DB_TIMEOUT + 1.5}); COMMIT",
                                      database.rsplit("/", 1)[1])
        await until(lambda: "pg_sleep" in postgres_cluster.psql("SELECT string_agg(query, ' ') FROM pg_stat_activity"))

        slow = await put(server, "slow")
        health = await send(server.port, "GET", "/healthz")
        after = await put(server, "after")  # waits for the lock, well inside the timeout
        await locked
        log = server.log()

    assert slow.status == 504 and "no answer within" in slow.json()["error"]
    assert health.status == 200 and health.json()["database"]["reachable"] is True
    assert after.status == 204
    assert "PostgreSQL is unreachable" not in log


@pytest.mark.gen_test(timeout=120)
async def test_a_missing_grant_is_answered_503_with_one_log_line_naming_the_privilege(postgres_cluster):
    database = postgres_cluster.new_database()
    name = database.rsplit("/", 1)[1]
    role = f"writer_{name}"
    with started(f"--db={database}") as owner:  # creates the schema as the superuser
        assert (await put(owner, "Made by the owner")).status == 204
    postgres_cluster.psql(f"CREATE ROLE {role} LOGIN")
    postgres_cluster.psql(
        f"GRANT USAGE ON SCHEMA public TO {role}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public"
        f" TO {role}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}; REVOKE INSERT ON comments FROM {role}",
        name,
    )
    limited = database.replace("postgres@", f"{role}@", 1)
    with started(f"--db={limited}") as server:
        assert (await put(server, "Talk")).status == 204
        refused = [await send(server.port, "POST", talk("Talk") + "/comments", {"author": "a", "message": "m"})
                   for _ in range(3)]
        health = await send(server.port, "GET", "/healthz")
        talks = (await send(server.port, "GET", "/talks")).json()["talks"]
        records = log_records(server.log())

    for answer in refused:
        assert answer.status == 503, answer.body
        assert answer.json()["error"].endswith("the database refuses this server's user: INSERT on comments is not granted")
    lines = [line for line in records if "privilege" in line]
    assert len(lines) == 1, lines
    assert "PostgreSQL refuses a change for want of a privilege: INSERT on comments" in lines[0]
    assert health.status == 200
    assert [t["comments"] for t in talks if t["title"] == "Talk"] == [[]]


@pytest.mark.gen_test(timeout=120)
async def test_the_reason_503_answers_give_is_the_current_one(own_cluster):
    loop = asyncio.get_running_loop()
    with started(f"--db={own_cluster.new_database()}") as server:
        assert (await put(server, "first")).status == 204
        # Stopped: first "shutting down", then nothing listens on the port at all.
        await loop.run_in_executor(None, own_cluster.stop)

        async def refused_for_the_current_reason():
            answer = await put(server, "during")
            return answer.status == 503 and _connection_refused(answer.json()["error"]) and answer

        answer = await until(refused_for_the_current_reason)
        await asyncio.sleep(1.5)  # more rounds of trying again: the reason stays current
        again = await put(server, "later")
        log = server.log()

    assert "PostgreSQL is unreachable" in log
    for refused in (answer, again):
        error = refused.json()["error"]
        assert refused.status == 503 and "shutting down" not in error and _connection_refused(error), error


def _connection_refused(error):
    # asyncio's words for ECONNREFUSED: "[Errno 111] Connect call failed (...)".
    return "Connect call failed" in error or "refused" in error.lower()


@pytest.mark.gen_test(timeout=60)
async def test_giving_a_connection_back_to_the_pool_stays_inside_the_timeout(own_cluster):
    url = own_cluster.new_database()
    await (await PostgresStore.open(url, Settings(follow=False))).close()  # the schema, made
    # A pool that retires each connection after one query, as asyncpg's does
    # after 50,000: giving it back closes it, which waits for the database.
    pool = await asyncpg.create_pool(url, min_size=0, max_size=1, max_queries=1)
    store = PostgresStore(url, pool, timeout=1)
    frozen = []

    async def answered_then_the_database_freezes(conn):
        value = await conn.fetchval("SELECT 41 + 1")
        frozen.extend(processes(own_cluster))  # this connection's backend among them
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        return value

    try:
        # Bounded here only so a hang fails the test instead of stalling it.
        value = await asyncio.wait_for(store._on_connection(answered_then_the_database_freezes), 15)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        pool.terminate()
    assert value == 42


@pytest.mark.gen_test(timeout=60)
async def test_a_failed_return_of_a_connection_to_the_pool_leaves_no_traceback_in_the_log(postgres_cluster, caplog):
    import gc
    import logging

    url = postgres_cluster.new_database()
    pool = await asyncpg.create_pool(url, min_size=0, max_size=1)
    other = await asyncpg.create_pool(url, min_size=0, max_size=1)
    store = PostgresStore(url, pool, timeout=5)
    # asyncpg refuses to take back a connection (here: one of another pool,
    # which it refuses at once; while PostgreSQL stops, one whose holder the
    # pool took back as the connection closed).  The release runs as a task;
    # an error nobody reads is logged with a traceback when the task is freed.
    stray = await other.acquire()
    try:
        with caplog.at_level(logging.DEBUG):
            await store._release(stray, asyncio.get_running_loop().time() + 5)
            await asyncio.sleep(0.1)
            gc.collect()
            await asyncio.sleep(0)
    finally:
        await other.release(stray)
        await other.close()
        await pool.close()

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "returning a connection to the pool failed: " in caplog.text  # read, and noted at debug level
