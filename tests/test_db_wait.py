"""Starting before PostgreSQL does: the server waits for it (``--db-wait``), within a bound.

At boot the database may come up after talkserver.  These tests start the
real command against a real cluster of their own (tests/postgres.py) that
is stopped, and start the cluster once the server says it is waiting.
"""

import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from .harness import WAIT, ServerProcess, until
from talkserver.testing.cluster import Cluster

WAITING = "waiting for the database"
# The first log line of a server that serves (tests/harness.py reads the same).
LISTENING = re.compile(r"talkserver listening on http://127\.0\.0\.1:(\d+)/")


@pytest.fixture
def stopped_cluster():
    """A cluster of this test's own with one database, stopped: (cluster, the database's URL)."""
    cluster = Cluster()
    url = cluster.new_database()
    cluster.stop()
    yield cluster, url
    cluster.destroy()


def talkserver(*args: str, cwd) -> subprocess.CompletedProcess:
    """Run the command to its end (one that serves would be stopped by the timeout)."""
    return subprocess.run([sys.executable, "-m", "talkserver", "--port=0", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=WAIT)


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "two workers"])
@pytest.mark.gen_test(timeout=2 * WAIT)
async def test_a_server_started_before_its_database_waits_then_serves(stopped_cluster, processes, tmp_path):
    cluster, url = stopped_cluster
    # Given a server started while PostgreSQL is down; ServerProcess returns
    # once the server has logged that it waits (the number is --db-wait).
    # With --processes the parent waits, before it starts any worker (given
    # in a file: ServerProcess would wait for a line per worker instead).
    config = tmp_path / "talkserver.conf"
    config.write_text(f"processes = {processes}\n")
    with ServerProcess(f"--db={url}", "--db-wait=60", f"--config={config}",
                       bound=re.compile(rf"{WAITING}, up to (\d+) s in all")) as server:
        assert server.process.poll() is None
        # When the database starts.
        cluster.start()
        # Then the server comes up on its own, and serves the board from it.
        port = int((await until(lambda: LISTENING.search(server.log()))).group(1))
        request = urllib.request.Request(f"http://127.0.0.1:{port}/talks/late", method="PUT",
                                         data=b'{"presenter": "Ada", "summary": "on time"}')
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            assert answer.status == 204
        assert cluster.psql("SELECT presenter FROM talks WHERE title = 'late'", database=url.rsplit("/", 1)[1]) == "Ada"
        log = server.log()
        # One line for the state it waited in, however many times it tried, and one when it ended.
        assert log.count(WAITING) == 1, log
        assert len(re.findall(r"the database answered after [\d.]+ s of waiting", log)) == 1, log
        assert "Traceback" not in log
        assert server.stop() == 0


def test_a_database_that_never_comes_ends_the_start_with_one_line_and_exit_2(stopped_cluster, tmp_path):
    _, url = stopped_cluster
    done = talkserver(f"--db={url}", "--db-wait=3", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    # The one warning of the state it waited in (several tries made in 3 s), then the one line it ends with.
    assert len(lines) == 2, done.stderr
    assert WAITING in lines[0] and "(--db-wait)" in lines[0]
    assert lines[1].startswith(f"talkserver: {url}: ")
    assert lines[1].endswith("; still unreachable after waiting 3 s (--db-wait)")


def test_db_wait_0_gives_up_at_once(stopped_cluster, tmp_path):
    _, url = stopped_cluster
    done = talkserver(f"--db={url}", "--db-wait=0", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"talkserver: {url}: ") and "(--db-wait)" not in line


def test_a_database_that_is_there_but_missing_is_not_waited_for(postgres_cluster, tmp_path):
    # Given a running PostgreSQL without the database named: waiting would not create it.
    done = talkserver(f"--db={postgres_cluster.url('no_such_board')}", "--db-wait=600", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("talkserver: ") and 'database "no_such_board" does not exist' in line
    assert WAITING not in done.stderr


def test_a_negative_wait_is_refused_in_one_line(tmp_path):
    done = talkserver("--db-wait=-1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["talkserver: --db-wait=-1: must be 0 or more (0: give up at once)"]


def test_ctrl_c_while_waiting_stops_with_one_line_and_no_traceback(stopped_cluster):
    _, url = stopped_cluster
    with ServerProcess(f"--db={url}", "--db-wait=60", bound=re.compile(rf"{WAITING}, up to (\d+) s in all")) as server:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(WAIT) == 2
        log = server.log()
        assert log.splitlines()[-1] == "talkserver: stopped while waiting for the database"
        assert "Traceback" not in log
