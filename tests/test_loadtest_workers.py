"""talkserver-load --workers N: the clients in N processes, one verdict.

Nothing may be lost, doubled or failed by splitting the run: every change
still reaches every client once, a server that drops or repeats changes is
still caught, and the figures are those of all deliveries together.
"""

import sys
from array import array

from talkserver.loadtest.tally import merge, percentile
from talkserver.loadtest.workers import shares

from .harness import load, load_json, load_server as talkserver, running


def test_a_run_in_three_workers_gives_one_clean_verdict_and_one_plot(tmp_path):
    with running(sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:", "--max-polls-per-ip=0") as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 300, "--writers", 2, "--duration", 2, "--workers", 3,
            "--plot", tmp_path / "fanout.png",
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert result["workers"] == 3
    assert result["changes"] > 0 and result["deliveries"] == result["changes"] * 300
    assert (result["lost"], result["duplicates"], result["errors"]) == (0, 0, 0)
    assert result["copies_matching"] == result["copies_checked"] == 300
    assert result["fanout_ms"]["p50"] > 0
    assert len([line for line in done.stdout.splitlines() if line.startswith("talkserver-load: ")]) == 1
    assert "300 (long polls) in 3 processes" in done.stdout
    assert (tmp_path / "fanout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_changes_a_server_never_delivers_are_lost_in_every_worker(tmp_path):
    with talkserver("drop") as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 20, "--duration", 2, "--rate", 8, "--drain", 1, "--workers", 2,
        )

    assert done.returncode == 1
    assert result["lost"] > 0 and result["lost"] % 20 == 0  # every client missed every deletion
    assert result["copies_matching"] == 0 and result["duplicates"] == 0


def test_changes_a_server_sends_twice_are_duplicates_in_every_worker(tmp_path):
    with talkserver("repeat") as (url, _):
        done, result = load_json(tmp_path, "--url", url, "--clients", 20, "--duration", 2, "--rate", 8, "--workers", 2)

    assert done.returncode == 1
    assert result["duplicates"] >= 20 and result["lost"] == 0
    assert result["copies_matching"] == 20


def test_event_streams_in_two_workers_run_clean(tmp_path):
    with talkserver() as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--transport", "sse", "--clients", 100, "--duration", 2, "--interval", 0.2,
            "--workers", 2,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert result["deliveries"] == result["changes"] * 100 > 0


def test_shares_split_the_clients_into_contiguous_near_equal_ranges():
    assert shares(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]
    assert shares(40_000, 4) == [range(n * 10_000, (n + 1) * 10_000) for n in range(4)]
    assert [len(r) for r in shares(5, 5)] == [1] * 5


def test_merged_percentiles_are_over_all_deliveries_not_averages_of_percentiles():
    # Given one worker with fast deliveries and one with a few slow ones,
    fast = {"latencies_ms": array("d", [1.0] * 90), "last_receive": {1: 5.0}, "deliveries": 90, "error_kinds": {"x": 1}}
    slow = {"latencies_ms": array("d", [100.0] * 10), "last_receive": {1: 7.0, 2: 3.0}, "deliveries": 10, "error_kinds": {"x": 2}}

    # when merged,
    merged = merge([fast, slow])

    # then the p50 is the fast one and the p99 the slow one, as in one process.
    latencies = sorted(merged["latencies_ms"])
    assert (percentile(latencies, 0.5), percentile(latencies, 0.99)) == (1.0, 100.0)
    assert merged["deliveries"] == 100
    assert merged["last_receive"] == {1: 7.0, 2: 3.0}  # the latest receive per change
    assert merged["error_kinds"] == {"x": 3}


def test_more_workers_than_clients_exits_2():
    done = load("--clients", 2, "--workers", 3)

    assert done.returncode == 2
    assert "--workers 3: more workers than --clients 2" in done.stderr


def test_a_worker_killed_mid_run_makes_the_run_not_clean_and_says_how_it_ended(tmp_path):
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    def workers_of(pid: int) -> list[int]:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(child) for child in children
                if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()]

    with running(sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:", "--max-polls-per-ip=0") as (url, _):
        run = subprocess.Popen(
            [sys.executable, "-m", "talkserver.loadtest", "--url", url, "--clients", "40", "--writers", "1",
             "--duration", "4", "--rate", "5", "--workers", "2", "--drain", "1", "--json", str(tmp_path / "out.json")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + 30
        while len(workers_of(run.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # the run is under way
        os.kill(workers_of(run.pid)[0], signal.SIGKILL)
        output, _ = run.communicate(timeout=120)

    assert run.returncode != 0, output
    assert "NOT CLEAN" in output
    assert "ended before its outcome (its process was killed by signal 9)" in output
