"""Under --processes every log line says which process wrote it (a real PostgreSQL)."""

import contextlib
import os
import re
import signal
import subprocess
import time

import pytest

from .harness import ServerProcess

TAG = re.compile(r"^\[(parent|w\d+)\] ")


@pytest.fixture
def database(postgres_cluster):
    return postgres_cluster.new_database()


def workers_of(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_each_worker_and_the_parent_tag_their_log_lines(database):
    with ServerProcess(f"--db={database}", "--processes=2") as server:
        wait_for(lambda: "talkserver worker 1 serving" in server.log() and "talkserver worker 0 serving" in server.log())
        for _ in range(6):
            assert server.request("GET", "/talks")[0] == 200
        victim = workers_of(server.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: f"pid {victim}" in server.log())
        assert server.stop() == 0
        lines = server.log().splitlines()

    assert lines and all(TAG.match(line) for line in lines), "\n".join(l for l in lines if not TAG.match(l))
    # The first line is the parent's and names the port bound, as without --processes.
    assert lines[0].startswith("[parent] ") and f"talkserver listening on http://127.0.0.1:{server.port}/" in lines[0]
    assert any(re.match(r"\[w0\] .*talkserver worker 0 serving", line) for line in lines)
    assert any(re.match(r"\[w1\] .*talkserver worker 1 serving", line) for line in lines)
    assert any(re.match(r"\[w[01]\] .*200 GET /talks \(127\.0\.0\.1\)", line) for line in lines)
    # Tornado's fork_processes, in the parent, reports the killed worker it restarts.
    assert any(line.startswith("[parent] ") and f"pid {victim}" in line for line in lines)


def test_a_single_process_has_no_tag(tmp_path):
    with ServerProcess("--db=:memory:") as server:
        server.request("GET", "/talks")
        assert server.stop() == 0
        lines = server.log().splitlines()

    assert any("talkserver listening on" in line for line in lines)
    assert not any(TAG.match(line) for line in lines)


def test_a_worker_that_stops_answering_is_replaced(database):
    with ServerProcess(f"--db={database}", "--processes=2") as server:
        wait_for(lambda: "talkserver worker 1 serving" in server.log() and "talkserver worker 0 serving" in server.log())
        parent = server.process.pid
        # Given a worker that stops (its event loop no longer turns; it does not die)
        victim = workers_of(parent)[0]
        os.kill(victim, signal.SIGSTOP)
        try:
            # Then the parent notices, says so in one line, and a new worker takes its place
            wait_for(lambda: f"(pid {victim}) has not answered for" in server.log(), timeout=60)
            replaced = re.search(rf"^\[parent\] .*worker (\d) \(pid {victim}\) has not answered for \d+ s: killed, "
                                 "to be replaced$", server.log(), re.M)
            assert replaced, server.log()
            number = replaced.group(1)
            wait_for(lambda: len(workers_of(parent)) == 2 and victim not in workers_of(parent))
            wait_for(lambda: server.log().count(f"talkserver worker {number} serving") == 2)
            # ...which answers: requests reach both workers, the new one included
            served_after = len(server.log())

            def new_worker_answered():
                assert server.request("GET", "/talks")[0] == 200
                return re.search(rf"^\[w{number}\] .*200 GET /talks", server.log()[served_after:], re.M)

            wait_for(new_worker_answered)
        finally:
            with contextlib.suppress(ProcessLookupError):  # a stopped worker would never see the stop pipe
                os.kill(victim, signal.SIGKILL)
        assert server.stop() == 0
