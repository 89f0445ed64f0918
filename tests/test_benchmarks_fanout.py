"""The fan-out benchmarks run end to end at a small size.

benchmarks/fanout_ab.py: talkserver, the
Node peer and nchan each take their turn under the same long-poll load, and
the report sets them side by side, with each server's CPU per follower per
change.  benchmarks/fifty_thousand.sh: --processes on PostgreSQL and
talkserver-load --workers give one clean verdict and the memory per
waiting poll.  (The figures themselves belong in docs/benchmarks.md, not
here.)"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from talkserver.testing.cluster import port_free_now

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fanout_ab.py"


def test_fanout_ab_sets_talkserver_node_and_nchan_side_by_side_with_nothing_lost(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--interval", "0.3", "--rounds", "1", "--clients", "40", "--duration", "1.2",
         "--port", "0", "--out", str(tmp_path), "--label", "t"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    header = next(line for line in done.stdout.splitlines() if line.startswith("| round |"))
    assert header.split(" | ")[1:6] == ["talkserver ms", "node ms", "nchan ms", "talkserver / node", "talkserver / nchan"]
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| 1 |")]
    assert row.split(" | ")[-1] == "0/0/0 ; 0/0/0 ; 0/0/0 |"
    for who in ("talkserver", "node", "nchan"):
        result = json.loads((tmp_path / f"t-{who}-1.json").read_text())
        assert result["changes"] >= 4 and result["deliveries"] == result["changes"] * 40, who
        assert result["server_cpu_percent"] is not None and result["server_memory"]["per_client_kb"] is not None, who
        assert re.search(rf"round 1 {who} .* us/follower/change", done.stdout), who


def test_fanout_ab_refuses_nchan_alone_with_another_transport_before_starting_anything(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--interval", "0.3", "--only", "nchan", "--transport", "sse", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith("--only nchan follows by long poll only: leave out --transport")
    assert not (tmp_path / "out").exists()


def test_fifty_thousand_runs_at_a_small_size_and_reports_memory_per_waiting_poll(tmp_path):
    root = SCRIPT.parents[1]
    env = {**os.environ, "CLIENTS": "300", "PROCESSES": "2", "WORKERS": "2", "DURATION": "3",
           "PORT": str(port_free_now())}
    done = subprocess.run(["sh", "benchmarks/fifty_thousand.sh"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    assert "talkserver-load: clean: nothing lost, doubled or failed" in done.stdout, done.stdout
    assert re.search(r"clients\s+300 \(long polls\) in 2 processes", done.stdout), done.stdout
    per_poll = float(re.search(r"memory per waiting poll: ([0-9.]+) KiB", done.stdout).group(1))
    assert per_poll > 0
