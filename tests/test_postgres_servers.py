"""Many servers on one PostgreSQL board: consistency, crashes, lost connections.

Real ``python -m talkserver`` processes on a real PostgreSQL (the session's
throwaway cluster, a new database per test), driven over real sockets.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest
from tornado.httpclient import AsyncHTTPClient

from talkserver.testing.cluster import Cluster

from . import consistency
from .harness import ServerProcess, metric, send, until


@pytest.fixture
def database(postgres_cluster):
    return postgres_cluster.new_database()


def started(*options):
    """A server on the shared store, its polls answered within 10 s when nothing changes."""
    return ServerProcess("--poll-timeout=10", *options)


async def poll(port, cursor, timeout=30):
    return await send(port, "GET", f"/talks?changesSince={cursor}", timeout=timeout)


async def head(port):
    return (await send(port, "GET", "/talks")).json()["serverTime"]


# -- two servers, one board --------------------------------------------------


@pytest.mark.gen_test(timeout=300)
async def test_two_servers_alternating_polls_and_writes_give_every_follower_the_same_board(database):
    with started(f"--db={database}") as a, started(f"--db={database}") as b:
        report = await consistency.run([a.base, b.base], writes=400, writers=8, followers=20)
    consistency.check(report)
    assert report.final["talks"], "the storm left no talks to compare"


@pytest.mark.gen_test(timeout=120)
async def test_a_cursor_from_another_server_waits_for_its_change_instead_of_resetting(database):
    with started(f"--db={database}") as a, started(f"--db={database}") as b:
        cursor = await head(a.port)
        waiting = asyncio.ensure_future(poll(b.port, cursor))
        await send(a.port, "PUT", "/talks/Juggling", {"presenter": "Kim", "summary": "Three balls"})
        seen_on_a = (await poll(a.port, cursor)).json()
        # b may not have applied the change yet; a's newer cursor is still no reset there.
        next_on_b = asyncio.ensure_future(poll(b.port, seen_on_a["serverTime"]))
        woken = (await waiting).json()
        await send(a.port, "PUT", "/talks/Knitting", {"presenter": "Bo", "summary": "Socks"})
        following = (await next_on_b).json()
    assert [t["title"] for t in woken["talks"]] == ["Juggling"]
    assert woken["serverTime"] == seen_on_a["serverTime"]
    assert "reset" not in woken and "reset" not in following
    assert [t["title"] for t in following["talks"]] == ["Knitting"]


@pytest.mark.gen_test(timeout=120)
async def test_a_server_killed_mid_storm_loses_no_acknowledged_write(database):
    with started(f"--db={database}") as a, started(f"--db={database}") as b:
        acknowledged = []
        stop = asyncio.Event()

        async def writer(number):
            for k in range(100_000):
                if stop.is_set():
                    return
                server = (a, b)[k % 2]
                title = f"w{number} #{k}"
                try:
                    answer = await send(server.port, "PUT", "/talks/" + title.replace(" ", "%20").replace("#", "%23"),
                                        {"presenter": "p", "summary": "s"}, timeout=10)
                except (OSError, IndexError):
                    continue  # the killed server: refused, or closed with no answer (not acknowledged)
                if answer.status == 204:
                    acknowledged.append(title)

        writing = [asyncio.ensure_future(writer(n)) for n in range(8)]
        cursor = await head(b.port)
        await until(lambda: len(acknowledged) >= 50)
        a.kill()
        killed_at = len(acknowledged)
        await until(lambda: len(acknowledged) >= killed_at + 50)  # b alone takes the writes on
        stop.set()
        await asyncio.gather(*writing)

        async def b_has_everything():
            board = (await send(b.port, "GET", "/talks")).json()
            return set(acknowledged) <= {t["title"] for t in board["talks"]}

        await until(b_has_everything)  # b applies a's last commits by NOTIFY or by its timer
        board = (await send(b.port, "GET", "/talks")).json()
        since_cursor = (await poll(b.port, cursor)).json()
    titles = {t["title"] for t in board["talks"]}
    assert killed_at > 10 and len(acknowledged) > killed_at
    assert set(acknowledged) <= titles
    # A client that followed a from the start goes on through b with its cursor.
    assert "reset" not in since_cursor
    assert set(acknowledged) <= {t["title"] for t in since_cursor["talks"]}


@pytest.mark.gen_test(timeout=120)
async def test_changes_arrive_after_the_listening_connection_is_killed(database, postgres_cluster):
    with started(f"--db={database}") as a, started(f"--db={database}") as b:
        cursor = await head(b.port)
        killed = postgres_cluster.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'talkserver-listen'"
        )
        await send(a.port, "PUT", "/talks/Knitting", {"presenter": "Bo", "summary": "Socks"})
        answer = (await poll(b.port, cursor, timeout=15)).json()
        metrics = (await send(b.port, "GET", "/metrics")).body.decode()
    assert killed == "2"
    assert [t["title"] for t in answer["talks"]] == ["Knitting"]
    assert metric(metrics, "talkserver_store_reconnects") >= 1


# -- --processes ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=300)
async def test_processes_2_on_one_port_give_every_follower_the_same_board(database):
    with started(f"--db={database}", "--processes=2") as server:
        report = await consistency.run([server.base], writes=400, writers=8, followers=20)
    consistency.check(report)


@pytest.mark.gen_test(timeout=120)
async def test_metrics_count_the_waiting_clients_of_every_worker(database):
    with started(f"--db={database}", "--processes=2") as server:
        cursor = await head(server.port)
        client = AsyncHTTPClient(force_instance=True, max_clients=50)
        polls = [client.fetch(f"{server.base}/talks?changesSince={cursor}", request_timeout=30) for _ in range(30)]

        await until(lambda: waiting(server, 30))
        await send(server.port, "PUT", "/talks/Wake", {"presenter": "p", "summary": "s"})
        answers = await asyncio.gather(*polls)
        client.close()
    assert all([t["title"] for t in json.loads(r.body)["talks"]] == ["Wake"] for r in answers)


@pytest.mark.gen_test(timeout=120)
async def test_sigterm_drains_every_worker_and_the_parent_exits_0(database):
    with started(f"--db={database}", "--processes=2") as server:
        cursor = await head(server.port)
        polls = [asyncio.ensure_future(poll(server.port, cursor)) for _ in range(20)]
        await until(lambda: waiting(server, 20))
        server.terminate()
        answers = await asyncio.gather(*polls)
        code = await asyncio.get_running_loop().run_in_executor(None, server.stop)
    assert code == 0
    assert all(a.status == 200 and a.json()["talks"] == [] for a in answers)


@pytest.mark.gen_test(timeout=120)
async def test_a_worker_that_dies_is_replaced(database):
    with started(f"--db={database}", "--processes=2") as server:
        async def forked():
            return len(children(server.process.pid)) == 2

        await until(forked)  # the port is bound before the workers are forked
        workers = children(server.process.pid)
        os.kill(workers[0], signal.SIGKILL)

        async def replaced():
            now = children(server.process.pid)
            return len(now) == 2 and workers[0] not in now

        await until(replaced)
        answer = await send(server.port, "PUT", "/talks/After", {"presenter": "p", "summary": "s"})
    assert answer.status == 204


async def waiting(server, count):
    """Whether /metrics counts ``count`` waiting polls over all workers."""
    text = (await send(server.port, "GET", "/metrics")).body.decode()
    return metric(text, "talkserver_waiting_clients") == count


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_processes_refuse_a_store_they_cannot_share(tmp_path):
    for db in ("talks.db", ":memory:"):
        done = subprocess.run([sys.executable, "-m", "talkserver", "--processes=2", f"--db={db}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=20)
        assert done.returncode != 0
        assert done.stderr.strip().splitlines() == [
            "talkserver: --processes=2 needs a store the processes can share:"
            " use --db=postgresql://... (SQLite and :memory: serve one process)"
        ]


def test_a_postgresql_url_without_the_driver_names_the_extra(tmp_path):
    # asyncpg made unimportable, as on an installation without the extra.
    code = "import sys; sys.modules['asyncpg'] = None; from talkserver.command.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "--db=postgresql://u@127.0.0.1:1/x"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "talkserver: the PostgreSQL store needs the asyncpg driver: from a checkout, make run-postgres DB=..."
        f" installs it; otherwise {sys.executable} -m pip install 'talkserver[postgres]'"
    ]


# -- PostgreSQL going away -------------------------------------------------------


@pytest.fixture
def own_cluster():
    """A cluster of this test's own, to stop and start under a running server."""
    cluster = Cluster()
    yield cluster
    cluster.destroy()


@pytest.mark.gen_test(timeout=240)
async def test_postgresql_restarted_under_load_loses_no_acknowledged_write(own_cluster):
    loop = asyncio.get_running_loop()
    with started(f"--db={own_cluster.new_database()}", "--logging=info") as server:
        acknowledged, refused = [], []
        stop = asyncio.Event()

        async def writer(number):
            for k in range(100_000):
                if stop.is_set():
                    return
                answer = await send(server.port, "PUT", f"/talks/w{number}-{k}", {"presenter": "p", "summary": "s"})
                (acknowledged if answer.status == 204 else refused).append((f"w{number}-{k}", answer))
                if answer.status != 204:
                    await asyncio.sleep(0.05)

        writing = [asyncio.ensure_future(writer(n)) for n in range(4)]
        await until(lambda: len(acknowledged) >= 20)
        await loop.run_in_executor(None, own_cluster.stop)

        # While it is away: writes are refused, reads go on from memory.
        during = await send(server.port, "PUT", "/talks/During", {"presenter": "p", "summary": "s"})
        read = await send(server.port, "GET", "/talks")
        health = await send(server.port, "GET", "/healthz")
        await loop.run_in_executor(None, own_cluster.start)

        async def writable():
            answer = await send(server.port, "PUT", "/talks/After", {"presenter": "p", "summary": "s"})
            return answer.status == 204

        await until(writable)
        await until(lambda: "PostgreSQL is reachable again" in server.log())  # logged once, when it is back
        after_restart = len(acknowledged)
        await until(lambda: len(acknowledged) >= after_restart + 20)  # writing goes on after the restart
        stop.set()
        await asyncio.gather(*writing)
        board = {t["title"] for t in (await send(server.port, "GET", "/talks")).json()["talks"]}
        health_after = await send(server.port, "GET", "/healthz")
        metrics = (await send(server.port, "GET", "/metrics")).body.decode()
        log = server.log()

    assert during.status == 503
    assert during.json()["error"].startswith("the change could not be saved: the database is unreachable")
    assert read.status == 200 and {t["title"] for t in read.json()["talks"]} >= {acknowledged[0][0]}
    assert health.status == 503
    assert health.json() == {"ok": False, "database": {"reachable": False, "primary": f"127.0.0.1:{own_cluster.port}"}}
    assert health_after.status == 200
    # 504: in flight when PostgreSQL stopped, so perhaps saved; 503: certainly not.
    assert refused and all(answer.status in (503, 504) for _, answer in refused)
    assert not {title for title, answer in refused if answer.status == 503} & board
    assert {title for title, _ in acknowledged} | {"After"} <= board
    assert "During" not in board
    assert metric(metrics, "talkserver_store_reachable") == 1
    assert metric(metrics, "talkserver_store_reconnects") >= 1
    assert "PostgreSQL is unreachable" in log and "PostgreSQL is reachable again" in log


@pytest.mark.gen_test(timeout=120)
async def test_a_talks_owner_is_the_same_on_every_server(database):
    protect = ("--protect-talks", "--cookie-secret=the same on every host")
    with started(f"--db={database}", *protect) as a, started(f"--db={database}", *protect) as b:
        proposed = await send(a.port, "PUT", "/talks/Mine", {"presenter": "Ada", "summary": "s"})
        cookie = proposed.headers["set-cookie"].split(";")[0]
        await until(lambda: _has_talk(b.port, "Mine"))
        strangers_delete = await send(b.port, "DELETE", "/talks/Mine")
        owners_replace = await send(b.port, "PUT", "/talks/Mine", {"presenter": "Ada", "summary": "v2"},
                                    headers={"Cookie": cookie})
    assert strangers_delete.status == 403
    assert owners_replace.status == 204


async def _has_talk(port, title):
    return (await send(port, "GET", f"/talks/{title}")).status == 200
