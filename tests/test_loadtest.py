"""talkserver-load against live servers in subprocesses, over real sockets.

A clean run must count every change reaching every client exactly once; a
server that drops or repeats changes (load_server.py) must be caught;
bad arguments and unreachable servers must end with a clear message.
"""

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import load, load_json, load_server as talkserver, refused_port, running

RESULT_FIELDS = {
    "clients", "writers", "duration_s", "changes", "deliveries", "lost",
    "duplicates", "errors", "fanout_ms", "last_client_ms", "copies_checked", "copies_matching",
}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_clean_run_delivers_every_change_to_every_client_exactly_once(tmp_path, loop):
    with talkserver() as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 300, "--writers", 2, "--duration", 3, "--loop", loop
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert RESULT_FIELDS <= result.keys()
    assert set(result["fanout_ms"]) == {"p50", "p90", "p99", "max"}
    assert (result["clients"], result["writers"], result["event_loop"]) == (300, 2, loop)
    assert result["duration_s"] >= 3
    assert result["changes"] > 0
    assert result["deliveries"] == result["changes"] * 300
    assert (result["lost"], result["duplicates"], result["errors"]) == (0, 0, 0)
    assert result["copies_matching"] == result["copies_checked"] == 300
    f = result["fanout_ms"]
    assert 0 < f["p50"] <= f["p90"] <= f["p99"] <= f["max"]
    assert "talkserver-load: clean" in done.stdout
    assert "\r" not in done.stdout  # no live progress when stdout is not a terminal


def test_the_real_server_with_its_per_address_limits_is_loaded_cleanly(tmp_path):
    """Clients are spread over 127.x addresses and writers wait out 429s, as polite clients do."""
    with running(
        sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:",
        "--max-polls-per-ip=20", "--write-rate=4", "--write-burst=2", "--limit-local-writes",
    ) as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 100, "--writers", 2, "--duration", 3,
            "--clients-per-address", 10,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert (result["lost"], result["duplicates"], result["errors"]) == (0, 0, 0)
    assert result["throttled"] > 0  # 2 writers at 4 writes/s cannot go as fast as answered
    assert result["deliveries"] == result["changes"] * 100
    assert result["copies_matching"] == 100


def test_from_one_address_polls_past_the_slow_lane_show_as_errors(tmp_path):
    # 20 wait for changes, 80 more wait in the slow lane, the last 20 get 429.
    with running(sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:", "--max-polls-per-ip=20") as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 120, "--writers", 1, "--duration", 1,
            "--clients-per-address", 0, "--drain", 1,
        )

    assert done.returncode == 1
    assert sum(n for kind, n in result["error_kinds"].items() if kind.startswith("HTTP 429")) > 0


def test_spaced_changes_report_each_changes_last_client_and_the_server_memory(tmp_path):
    with talkserver() as (url, pid):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 200, "--writers", 1, "--duration", 2,
            "--spaced", 0.1, "--pid", pid,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    last = result["last_client_ms"]
    assert result["changes"] >= 2 and len(last["per_change"]) == result["changes"]
    assert last["min"] <= last["median"] <= last["max"] == max(last["per_change"])
    assert result["deliveries"] == result["changes"] * 200
    memory = result["server_memory"]
    assert memory["pid"] == pid and memory["waiting_rss_kb"] > 0
    assert memory["per_client_kb"] == pytest.approx((memory["waiting_rss_kb"] - memory["idle_rss_kb"]) / 200, abs=0.01)
    assert "KiB per client" in done.stdout


def test_interval_changes_follow_the_clock_and_report_each_changes_last_client(tmp_path):
    with talkserver() as (url, _):
        # Due at 0.25, 0.5, 0.75 and 1.0 s; the next one (1.25 s) falls
        # after the 1.1 s of writing, however fast the server answers.
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 100, "--duration", 1.1, "--interval", 0.25,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert (result["mode"], result["interval_s"], result["writers"]) == ("interval", 0.25, 1)
    assert result["changes"] == 4
    assert len(result["last_client_ms"]["per_change"]) == 4
    assert result["deliveries"] == 4 * 100
    assert result["schedule_slip_ms"] >= 0
    assert "a change every 0.25 s by the clock (--interval" in done.stdout


def test_interval_changes_do_not_wait_for_clients_that_cannot_poll(tmp_path):
    """--spaced would wait for all 40 clients; the clock does not.

    One address, a cap of 5: 25 polls wait in the slow lane and the last 10
    are refused (past five times the cap), so some clients never poll."""
    with running(sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:", "--max-polls-per-ip=5") as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 40, "--clients-per-address", 0,
            "--duration", 1.1, "--interval", 0.25, "--drain", 1,
        )

    assert result["changes"] == 4
    assert sum(n for kind, n in result["error_kinds"].items() if kind.startswith("HTTP 429")) > 0


def test_churning_clients_hang_up_and_come_back_without_losing_a_change(tmp_path):
    with talkserver() as (url, pid):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 100, "--duration", 2, "--interval", 0.1,
            "--churn", 0.5, "--pid", pid,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert result["churn_s"] == 0.5
    assert result["hang_ups"] > 0
    assert result["reconnects"] >= result["hang_ups"]
    assert (result["lost"], result["duplicates"], result["errors"]) == (0, 0, 0)
    assert result["copies_matching"] == 100
    assert "hang-ups, --churn 0.5 s" in done.stdout


def test_the_server_memory_is_sampled_every_second_of_the_run(tmp_path):
    with talkserver() as (url, pid):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 20, "--duration", 2.5, "--interval", 0.5, "--pid", pid,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    samples = result["server_rss_kb"]
    assert len(samples) >= 3
    assert [t for t, _ in samples] == sorted(t for t, _ in samples)
    assert all(kb > 0 for _, kb in samples)
    assert "server RSS over the run" in done.stdout


def test_changes_a_server_never_delivers_are_counted_as_lost(tmp_path):
    with talkserver("drop") as (url, _):
        done, result = load_json(tmp_path, "--url", url, "--clients", 20, "--duration", 2, "--rate", 8, "--drain", 1)

    assert done.returncode == 1
    # Every deletion is missed by every client, and nothing else is.
    assert result["lost"] > 0 and result["lost"] % 20 == 0
    assert result["copies_matching"] == 0
    assert result["duplicates"] == 0
    assert "NOT CLEAN" in done.stdout


def test_changes_a_server_sends_twice_are_counted_as_duplicates(tmp_path):
    with talkserver("repeat") as (url, _):
        done, result = load_json(tmp_path, "--url", url, "--clients", 20, "--duration", 2, "--rate", 8)

    assert done.returncode == 1
    assert result["duplicates"] >= 20  # at least the first change, to every client
    assert result["lost"] == 0
    assert result["copies_matching"] == 20


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clients", "0"], "--clients: 0 must be greater than 0"),
        (["--clients", "many"], "--clients: 'many' is not a number"),
        (["--duration", "-1"], "--duration: -1 must be greater than 0"),
        (["--url", "ftp://127.0.0.1:21"], "give an http:// URL"),
        (["--url", "http://127.0.0.1:8000/talks"], "without a path"),
        (["--url", "http://127.0.0.1:port"], "the port is not a number"),
        (["--writers", "2", "--spaced", "1"], "use it with --writers 1"),
        (["--writers", "2", "--interval", "1"], "--interval makes one change at a time"),
        (["--interval", "1", "--spaced", "1"], "--interval sets the pace"),
        (["--interval", "0"], "--interval: 0 must be greater than 0"),
        (["--churn", "-2"], "--churn: -2 must be greater than 0"),
        (["--clients", "10000000"], "open files, more than the limit"),
        (["--pid", "999999999"], "no such process"),
        (["--json", "no/such/dir/out.json"], "--json no/such/dir/out.json: the directory no/such/dir does not exist"),
        (["--plot", "no/such/dir/out.png"], "the directory no/such/dir does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message):
    done = load(*args)

    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_an_unreachable_server_exits_2_with_a_clear_message():
    with refused_port() as port:  # nothing listens there
        done = load("--url", f"http://127.0.0.1:{port}", "--clients", 5, "--duration", 1)

    assert done.returncode == 2
    assert f"cannot reach http://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_server_that_is_not_a_talk_server_exits_2(tmp_path):
    with running(sys.executable, "-u", "-m", "http.server", "PORT", "--bind", "127.0.0.1", "--directory", str(tmp_path)) as (url, _):
        done = load("--url", url, "--clients", 5, "--duration", 1)

    assert done.returncode == 2
    assert "does not answer like a talk server: GET /talks answered HTTP 404" in done.stderr


def on_a_terminal(*args) -> tuple[int, str]:
    """Run talkserver-load with a terminal for its output; (exit status, everything it wrote)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "talkserver.loadtest", *map(str, args)],
        stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL, text=True,
    )
    os.close(terminal)
    output = b""
    while True:
        ready, _, _ = select.select([controller], [], [], 30)
        try:
            chunk = os.read(controller, 4096) if ready else b""
        except OSError:  # the terminal closes when the process ends
            chunk = b""
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=30), output.decode()


def test_the_progress_line_shows_the_drain_and_counts_deliveries_over_a_moving_window():
    # A server that never sends deletions: the copies never match, so the
    # drain lasts its full 2.5 s and is shown.
    with talkserver("drop") as (url, _):
        status, text = on_a_terminal("--url", url, "--clients", 30, "--duration", 2.5, "--rate", 8, "--drain", 2.5)

    lines = text.split("\r")
    draining = [line for line in lines if line.startswith("drain")]
    assert status == 1
    assert draining and all("copies = GET /talks 0/30" in line for line in draining)
    # The first second of the drain still counts the writing just before it.
    rate = int(draining[0].split("deliveries/s")[1].split()[0])
    assert rate > 0


def test_live_progress_is_shown_on_a_terminal():
    with talkserver() as (url, _):
        status, text = on_a_terminal("--url", url, "--clients", 30, "--duration", 2.5)

    assert status == 0
    assert "\rwrite" in text and "connected 30/30" in text and "deliveries/s" in text
    assert "talkserver-load: clean" in text


def test_the_percentile_curve_keeps_the_median_and_the_outlier_apart():
    from talkserver.loadtest.plot import percentile_curve

    latencies = sorted([10.0 + i / 1000 for i in range(9_999)] + [5_000.0])

    xs, ms = percentile_curve(latencies, points=400)

    assert xs[0] == 1 and xs[-1] == 10_000  # from 0 % to the last of 10,000 deliveries
    assert ms == sorted(ms)
    assert 10.0 <= ms[0] < 10.1 and ms[-1] == 5_000.0
    median = ms[min(range(len(xs)), key=lambda i: abs(xs[i] - 2))]  # x = 2 is p50
    assert 14.9 < median < 15.1
    assert sum(1 for v in ms if v > 100) < 5  # the outlier is a step at the end, not the scale


def test_the_plot_is_a_png(tmp_path):
    with talkserver() as (url, _):
        done = load("--url", url, "--clients", 20, "--duration", 1, "--rate", 10, "--plot", tmp_path / "fanout.png")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fanout.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "talkserver-load"

    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)

    assert done.returncode == 0
    assert "--clients" in done.stdout and "--spaced" in done.stdout


# -- through a proxy: the Host sent, the server's reason shown ---------------


def test_a_refused_first_request_shows_the_servers_reason(tmp_path):
    # Given a server that answers only to the name a proxy would send,
    with running(
        sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:", "--allowed-hosts=talks.example.org",
    ) as (url, _):
        # when the load tool sends the URL's own host,
        refused = load("--url", url, "--clients", 5, "--duration", 1)
        # and when it sends the name the server expects.
        done, result = load_json(
            tmp_path, "--url", url, "--host-header", "talks.example.org", "--clients", 20, "--duration", 1,
        )

    assert refused.returncode == 2
    assert f"{url} refused: GET /talks answered HTTP 400: " in refused.stderr
    assert "talks.example.org" not in refused.stderr  # the server's words, not the tool's
    message = refused.stderr.split("GET /talks answered HTTP 400: ", 1)[1].strip()
    assert "host" in message.lower() and len(message) > 10
    assert "Traceback" not in refused.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["host_header"] == "talks.example.org"
    assert result["deliveries"] == result["changes"] * 20 > 0
    assert "as Host: talks.example.org" in done.stdout


def test_polls_refused_midway_are_counted_with_the_servers_reason(tmp_path):
    with running(sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:", "--max-polls-per-ip=5") as (url, _):
        done, result = load_json(
            tmp_path, "--url", url, "--clients", 40, "--writers", 1, "--duration", 1,
            "--clients-per-address", 0, "--drain", 1,
        )

    refused = {kind: n for kind, n in result["error_kinds"].items() if kind.startswith("HTTP 429: ")}
    assert done.returncode == 1
    assert refused and all(len(kind) > len("HTTP 429: ") for kind in refused)


@pytest.mark.parametrize("args", [["--host-header", "two words"], ["--host-header", ""]])
def test_a_host_header_that_is_no_host_name_exits_2(args):
    done = load(*args)

    assert done.returncode == 2
    assert "--host-header" in done.stderr and "Traceback" not in done.stderr


def test_the_plot_title_names_the_run():
    from talkserver.loadtest.report import plot_title

    title = plot_title({
        "clients": 10000, "transport": "sse", "mode": "interval", "interval_s": 0.5, "writers": 1, "rate": None,
        "url": "http://10.0.0.5:8000", "host_header": "talks.example.org", "started": "2026-11-30 06:40:00 UTC",
    })

    assert "10,000 clients on event streams" in title
    assert "a change every 0.5 s" in title
    assert "http://10.0.0.5:8000 (Host: talks.example.org)" in title
    assert "2026-11-30 06:40:00 UTC" in title


def test_the_load_tester_imports_nothing_of_the_server():
    # A fresh interpreter: what importing the load tester loads, and nothing else.
    code = (
        "import sys, talkserver.loadtest, talkserver.loadtest.cli, talkserver.loadtest.streams, talkserver.loadtest.plot; "
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()

    # talkserver.operation.openfiles is shared by both and imports nothing
    # (nor does its package's __init__, a docstring).
    shared = {"talkserver.operation", "talkserver.operation.openfiles"}
    server_modules = [
        m for m in loaded
        if m.startswith("talkserver.") and not m.startswith("talkserver.loadtest") and m not in shared
    ]
    assert "talkserver.loadtest.cli" in loaded
    assert server_modules == []
    assert not any(m == "tornado" or m.startswith("tornado.") for m in loaded)


def test_counts_in_the_summary_and_plot_title_take_the_right_plural():
    from talkserver.loadtest.report import plot_title, plural

    title = plot_title({
        "clients": 1, "transport": "websocket", "mode": "load", "interval_s": None, "writers": 1, "rate": None,
        "url": "http://127.0.0.1:8000", "host_header": None, "started": "2026-12-07 12:00:00 UTC", "workers": 2,
    })

    assert [plural(1, "hang-up"), plural(1037, "hang-up"), plural(1, "process", "processes"), plural(4, "process", "processes")] == [
        "1 hang-up", "1037 hang-ups", "1 process", "4 processes",
    ]
    assert plural(10_000, "client", grouped=True) == "10,000 clients"
    assert "1 clients" not in title and "on WebSockets in 2 processes, 1 writer" in title
