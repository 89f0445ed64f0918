"""/metrics: every metric it has always exported, the process metrics, and several workers' totals.

TODAYS_METRICS was recorded from a running ``python -m talkserver`` before
/metrics moved to prometheus_client, so the move (and any later one) is
checked to lose nothing: each name, type and label, and what each value
means.  Scrapes are parsed as Prometheus text, so ``1`` and ``1.0`` read
alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from talkserver.operation.metrics import Metrics

from .harness import ServerProcess, send, until
from .sse import StreamClient

# Name -> (type, label names), as /metrics exported them before prometheus_client.
TODAYS_METRICS = {
    "talkserver_waiting_clients": ("gauge", set()),
    "talkserver_slow_lane_clients": ("gauge", set()),
    "talkserver_talks": ("gauge", set()),
    "talkserver_board_bytes": ("gauge", set()),
    "talkserver_streams_open": ("gauge", set()),
    "talkserver_stream_events_total": ("counter", set()),
    "talkserver_streams_dropped_total": ("counter", set()),
    "talkserver_changes_total": ("counter", set()),
    "talkserver_requests_total": ("counter", {"code"}),
    "talkserver_writes_in_flight": ("gauge", set()),
    "talkserver_slow_readers_closed_total": ("counter", set()),
    "talkserver_gc_collections_total": ("counter", {"generation"}),
    "talkserver_gc_seconds_total": ("counter", {"generation"}),
    "talkserver_gc_collected_total": ("counter", {"generation"}),
    # No sample until an accept fails; its label is "error".
    "talkserver_accept_errors_total": ("counter", set()),
}
# Only with --db=postgresql://... (the --processes test below).
POSTGRES_METRICS = {
    "talkserver_store_reachable": ("gauge", set()),
    "talkserver_store_reconnects": ("gauge", set()),
}


@dataclass
class Family:
    """One metric of a scrape: its TYPE and its samples, (name, labels) -> value."""

    type: str
    samples: dict[tuple[str, frozenset], float] = field(default_factory=dict)

    def labels(self) -> set[str]:
        return {name for _, labels in self.samples for name, _ in labels}

    def value(self, **labels: str) -> float:
        for (_, have), value in self.samples.items():
            if have == frozenset(labels.items()):
                return value
        raise AssertionError(f"no sample with labels {labels}: {self.samples}")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[str, Family]:
    """The families of a scrape in the Prometheus text format, by name."""
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families[name] = Family(kind)
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            family = _family_of(families, name)
            family.samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return families


def _family_of(families: dict[str, Family], sample: str) -> Family:
    if sample in families:
        return families[sample]
    # A counter's _created, a summary's _sum and _count...
    for suffix in ("_created", "_total", "_sum", "_count", "_bucket"):
        base = sample[: -len(suffix)] if sample.endswith(suffix) else None
        for name in (base, f"{base}_total"):
            if name in families:
                return families[name]
    raise AssertionError(f"sample {sample} has no TYPE line")


async def scrape(port: int) -> dict[str, Family]:
    answer = await send(port, "GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.body.decode())




def assert_exports(families: dict[str, Family], expected: dict[str, tuple[str, set]]) -> None:
    """Every expected metric is there, with its type and labels (as samples show them)."""
    missing = sorted(set(expected) - set(families))
    assert not missing, f"lost from /metrics: {missing}"
    for name, (kind, labels) in expected.items():
        assert families[name].type == kind, f"{name} is a {families[name].type}, was a {kind}"
        assert families[name].labels() == labels, f"{name} has labels {families[name].labels()}, had {labels}"


TALK = {"presenter": "Ada", "summary": "s"}


@pytest.mark.gen_test(timeout=90)
async def test_every_metric_of_today_is_exported_and_means_what_it_did():
    with ServerProcess("--db=:memory:", "--poll-timeout=60", "--logging=warning") as server:
        port = server.port
        # Given: four changes, three refusals, a parked poll and an open stream.
        assert (await send(port, "PUT", "/talks/A", TALK)).status == 204
        assert (await send(port, "PUT", "/talks/B", TALK)).status == 204
        assert (await send(port, "POST", "/talks/A/comments", {"author": "Bo", "message": "m"})).status == 204
        assert (await send(port, "DELETE", "/talks/B")).status == 204
        assert (await send(port, "GET", "/talks/ghost")).status == 404
        assert (await send(port, "GET", "/talks?changesSince=nope")).status == 400
        assert (await send(port, "POST", "/metrics")).status == 405
        head = (await send(port, "GET", "/talks")).json()["serverTime"]
        poll = asyncio.ensure_future(send(port, "GET", f"/talks?changesSince={head}", timeout=60))
        stream = await StreamClient.open(port)
        assert [t["title"] for t in (await stream.event()).json()["talks"]] == ["A"]

        async def parked() -> bool:
            families = await scrape(port)
            return (families["talkserver_waiting_clients"].value() == 1
                    and families["talkserver_streams_open"].value() == 1)

        await until(parked)
        # When: scraped.
        before = await scrape(port)
        # And when a change wakes the poll and the stream.
        assert (await send(port, "PUT", "/talks/C", TALK)).status == 204
        woken = await poll
        assert [t["title"] for t in woken.json()["talks"]] == ["C"]
        assert [t["title"] for t in (await stream.event()).json()["talks"]] == ["C"]
        stream.close()

        async def released() -> bool:
            families = await scrape(port)
            return (families["talkserver_waiting_clients"].value() == 0
                    and families["talkserver_streams_open"].value() == 0)

        await until(released)
        after = await scrape(port)

    # Then: nothing is lost, and each value says what it always said.
    assert_exports(before, TODAYS_METRICS)
    assert_exports(after, TODAYS_METRICS)
    assert before["talkserver_changes_total"].value() == 4
    assert before["talkserver_talks"].value() == 1
    requests = before["talkserver_requests_total"]
    assert [requests.value(code=c) for c in ("204", "404", "400", "405")] == [4, 1, 1, 1]
    assert requests.value(code="200") >= 1  # the GET /talks, and the scrapes before this one
    assert before["talkserver_stream_events_total"].value() == 1
    assert before["talkserver_slow_lane_clients"].value() == 0
    assert before["talkserver_writes_in_flight"].value() == 0
    assert before["talkserver_streams_dropped_total"].value() == 0
    assert before["talkserver_slow_readers_closed_total"].value() == 0
    assert not before["talkserver_accept_errors_total"].samples
    # The tuned collector's one full collection before it freezes start-up objects.
    assert before["talkserver_gc_collections_total"].value(generation="2") >= 1
    assert before["talkserver_gc_seconds_total"].value(generation="2") >= 0
    assert before["talkserver_gc_collected_total"].value(generation="2") >= 0

    assert after["talkserver_changes_total"].value() == 5
    assert after["talkserver_talks"].value() == 2
    assert after["talkserver_requests_total"].value(code="204") == 5
    assert after["talkserver_stream_events_total"].value() == 2


# -- the process metrics and a registry per server ------------------------------------


PROCESS_METRICS = {
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_start_time_seconds": "gauge",
}


def resident_bytes(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_the_standard_process_metrics_describe_this_process():
    families = parse(Metrics().render())

    assert {name: families[name].type for name in PROCESS_METRICS} == PROCESS_METRICS
    assert families["process_resident_memory_bytes"].value() == pytest.approx(resident_bytes(), rel=0.5)
    assert families["process_open_fds"].value() >= 3
    assert families["process_start_time_seconds"].value() <= time.time()
    assert families["process_cpu_seconds_total"].value() > 0


def test_each_metrics_counts_alone_in_one_process():
    first, second = Metrics(), Metrics()  # as two servers in one test process
    first.counter("talkserver_requests_total", "requests", label="code").inc("200", 3)
    second.counter("talkserver_requests_total", "requests", label="code").inc("200")
    second.gauge("talkserver_talks", "talks", lambda: 7)

    assert parse(first.render())["talkserver_requests_total"].value(code="200") == 3
    assert parse(second.render())["talkserver_requests_total"].value(code="200") == 1
    assert "talkserver_talks" not in parse(first.render())
    assert parse(second.render())["talkserver_talks"].value() == 7


def test_a_gauge_is_read_when_scraped():
    waiting = [3]
    metrics = Metrics()
    metrics.gauge("talkserver_waiting_clients", "polls", lambda: waiting[0])
    assert parse(metrics.render())["talkserver_waiting_clients"].value() == 3
    waiting[0] = 5
    assert parse(metrics.render())["talkserver_waiting_clients"].value() == 5


def test_a_labelled_counter_with_no_count_yet_is_listed_empty():
    metrics = Metrics()
    metrics.counter("talkserver_accept_errors_total", "accept errors", label="error")
    families = parse(metrics.render())
    assert families["talkserver_accept_errors_total"].type == "counter"
    assert not families["talkserver_accept_errors_total"].samples


# -- sharing between workers (prometheus_client's multiprocess mode) ---------------------
#
# The multiprocess mode is for the whole process, so each worker here is a
# Python process of its own.  It ends with os._exit, as if killed (its
# files stay behind, as a live worker's do), or with a normal exit, as a
# worker that has drained.

WORKER = """
import json, os, sys
from talkserver.operation.metrics import Metrics, share_between_workers

directory, number, given = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
share_between_workers(directory, number)
metrics = Metrics()
metrics.gauge("talkserver_waiting_clients", "polls", lambda: given["waiting"])
metrics.gauge("talkserver_talks", "talks", lambda: given["talks"], merge="max")
metrics.gauge("talkserver_store_reachable", "reachable", lambda: given["reachable"], merge="min")
requests = metrics.counter("talkserver_requests_total", "requests", label="code")
metrics.counter("talkserver_accept_errors_total", "accept errors", label="error")
for code, count in given["requests"].items():
    requests.inc(code, count)
metrics.publish()
scrape = metrics.render()
rss = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
print(json.dumps({"scrape": scrape, "rss": rss}), flush=True)
if not given["exit_cleanly"]:
    os._exit(0)
"""


def worker(directory, number, waiting=0, talks=0, reachable=1, requests=None, exit_cleanly=False):
    """Run worker ``number``, which publishes these values, to its end: (its scrape, its resident bytes)."""
    given = {"waiting": waiting, "talks": talks, "reachable": reachable, "requests": requests or {},
             "exit_cleanly": exit_cleanly}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(directory), str(number), json.dumps(given)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    answer = json.loads(done.stdout)
    return parse(answer["scrape"]), answer["rss"]


def test_a_scrape_of_one_worker_describes_every_worker(tmp_path):
    worker(tmp_path, 0, waiting=30, talks=5, reachable=1, requests={"200": 7})
    scraped, _ = worker(tmp_path, 1, waiting=12, talks=4, reachable=0, requests={"200": 1, "204": 2})

    assert scraped["talkserver_waiting_clients"].value() == 42
    assert scraped["talkserver_talks"].value() == 5
    assert scraped["talkserver_store_reachable"].value() == 0
    assert scraped["talkserver_requests_total"].value(code="200") == 8
    assert scraped["talkserver_requests_total"].value(code="204") == 2
    assert not scraped["talkserver_accept_errors_total"].samples


def test_the_process_metrics_add_up_every_worker(tmp_path):
    _, first = worker(tmp_path, 0)
    scraped, second = worker(tmp_path, 1)

    assert {name: scraped[name].type for name in PROCESS_METRICS} == PROCESS_METRICS
    assert scraped["process_resident_memory_bytes"].value() == pytest.approx(first + second, rel=0.2)
    assert scraped["process_resident_memory_bytes"].value() > 1.5 * max(first, second)
    assert scraped["process_cpu_seconds_total"].value() > 0


def test_a_replaced_worker_keeps_its_counts_but_not_its_gauges(tmp_path):
    worker(tmp_path, 0, waiting=30, requests={"200": 7})  # killed, then restarted:
    worker(tmp_path, 0, waiting=3, requests={"200": 1})
    scraped, _ = worker(tmp_path, 1, waiting=1)

    assert scraped["talkserver_waiting_clients"].value() == 4
    assert scraped["talkserver_requests_total"].value(code="200") == 8


def test_a_worker_that_exits_takes_its_gauges_along(tmp_path):
    worker(tmp_path, 0, waiting=30, requests={"200": 7}, exit_cleanly=True)
    scraped, _ = worker(tmp_path, 1, waiting=2)

    assert scraped["talkserver_waiting_clients"].value() == 2
    assert scraped["talkserver_requests_total"].value(code="200") == 7


# -- a server of several processes -------------------------------------------------------


def workers_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


@pytest.mark.gen_test(timeout=120)
async def test_under_processes_a_scrape_of_any_worker_has_every_metric_and_the_whole_servers_totals(
    postgres_cluster,
):
    database = postgres_cluster.new_database()
    options = (f"--db={database}", "--processes=2", "--poll-timeout=60", "--logging=warning")
    with ServerProcess(*options) as server:
        port = server.port
        # Given: writes and refusals, each on its own connection (to either worker).
        for i in range(12):
            assert (await send(port, "PUT", f"/talks/T{i}", TALK)).status == 204
        for _ in range(6):
            assert (await send(port, "GET", "/talks/ghost")).status == 404
        head = (await send(port, "GET", "/talks")).json()["serverTime"]
        # And 30 parked polls, spread by the kernel over the workers.
        polls = [asyncio.ensure_future(send(port, "GET", f"/talks?changesSince={head}", timeout=60))
                 for _ in range(30)]

        async def all_parked() -> bool:
            return (await scrape(port))["talkserver_waiting_clients"].value() == 30

        await until(all_parked)
        # When: scraped several times (each scrape reaches either worker).
        scrapes = [await scrape(port) for _ in range(6)]
        rss = [resident_bytes(pid) for pid in workers_of(server.process.pid)]

        # Then: every scrape has every metric and the whole server's counts.
        for families in scrapes:
            assert_exports(families, TODAYS_METRICS | POSTGRES_METRICS)
            assert {name: families[name].type for name in PROCESS_METRICS} == PROCESS_METRICS
            assert families["talkserver_changes_total"].value() == 12
            assert families["talkserver_talks"].value() == 12
            assert families["talkserver_requests_total"].value(code="204") == 12
            assert families["talkserver_requests_total"].value(code="404") == 6
            assert families["talkserver_waiting_clients"].value() == 30
            # (The server's log says why a worker found PostgreSQL unreachable.)
            assert families["talkserver_store_reachable"].value() == 1, server.log()
        assert len(rss) == 2
        assert scrapes[-1]["process_resident_memory_bytes"].value() > 1.5 * max(rss)

        # When a worker is killed (the one holding more connections, so some polls),
        # its polls fail and it is replaced.
        workers = workers_of(server.process.pid)
        killed = max(workers, key=sockets_of)
        os.kill(killed, signal.SIGKILL)

        async def settled() -> bool:
            now = workers_of(server.process.pid)
            if len(now) != 2 or killed in now:
                return False
            pending = sum(not poll.done() for poll in polls)
            return (await scrape(port))["talkserver_waiting_clients"].value() == pending

        await until(settled, timeout=40)
        # Then: the dead worker's waiting polls are no longer counted, its requests still are.
        after = await scrape(port)
        assert after["talkserver_waiting_clients"].value() < 30
        assert after["talkserver_requests_total"].value(code="204") == 12
        assert (await send(port, "PUT", "/talks/Wake", TALK)).status == 204
        await asyncio.gather(*polls, return_exceptions=True)
