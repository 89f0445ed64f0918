"""What /metrics has always exported: every name, type and label, and what each value means.

Recorded from a running ``python -m talkserver`` before /metrics moved to
prometheus_client, so the move (and any later one) is checked to lose
nothing.  The scrape is parsed as Prometheus text, so a value of ``1`` and
of ``1.0`` read alike.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import pytest

from talkserver.metrics import Metrics
from .harness import ServerProcess, send
from .sse import StreamClient

# Name -> (type, label names), as /metrics exported them before prometheus_client.
TODAYS_METRICS = {
    "talkserver_waiting_clients": ("gauge", set()),
    "talkserver_slow_lane_clients": ("gauge", set()),
    "talkserver_talks": ("gauge", set()),
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


async def until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


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


# -- sharing between workers ---------------------------------------------------




def worker(directory, number, waiting, talks, requests):
    metrics = Metrics()
    metrics.gauge("talkserver_waiting_clients", "polls", lambda: waiting)
    metrics.gauge("talkserver_talks", "talks", lambda: talks, merge="max")
    counter = metrics.counter("talkserver_requests_total", "requests", label="code")
    for code, count in requests.items():
        counter.inc(code, count)
    metrics.share_with(str(directory), number)
    metrics.publish()
    return metrics


def test_a_scrape_of_one_worker_describes_every_worker(tmp_path):
    worker(tmp_path, 0, waiting=30, talks=5, requests={"200": 7})
    scraped = worker(tmp_path, 1, waiting=12, talks=4, requests={"200": 1, "204": 2})

    lines = scraped.render().splitlines()

    assert "talkserver_waiting_clients 42" in lines
    assert "talkserver_talks 5" in lines
    assert 'talkserver_requests_total{code="200"} 8' in lines
    assert 'talkserver_requests_total{code="204"} 2' in lines


def test_a_restarted_worker_replaces_its_own_file(tmp_path):
    worker(tmp_path, 0, waiting=30, talks=5, requests={})
    worker(tmp_path, 0, waiting=3, talks=5, requests={})  # the same worker, restarted
    scraped = worker(tmp_path, 1, waiting=1, talks=5, requests={})
    assert "talkserver_waiting_clients 4" in scraped.render().splitlines()


def test_without_sharing_the_registry_renders_its_own_values():
    metrics = Metrics()
    metrics.gauge("talkserver_waiting_clients", "polls", lambda: 3)
    assert "talkserver_waiting_clients 3" in metrics.render().splitlines()
