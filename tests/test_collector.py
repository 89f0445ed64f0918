"""A long poll's objects are freed by reference counting, never left for the collector.

Each test switches the cyclic garbage collector off, parks real long polls
on a real server over real sockets, lets them end (answered by a change, by
the poll timeout, or by the client leaving) and then checks, through weak
references to the handlers, that every handler is gone without a
collection.  talkserver/operation/collector.py relies on this: it runs full
collections rarely, which is only safe when the hot path leaves no cycles.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import weakref

import pytest

from talkserver.operation import collector
from talkserver.web.app import make_app
from talkserver.follow.fastpolls import PollDelegate
from talkserver.web.handlers import TalksHandler
from talkserver.operation.metrics import Metrics
from talkserver.stores import MemoryStore
from talkserver.follow.waiters import Waiters

from .harness import read_answer, reset_connection as reset, serve_app, until

POLLS = 20


class Recorder:
    """Weak references to every parked poll (a TalksHandler, or on the fast
    path a fastpolls.PollDelegate) and every TalksHandler made while it is
    installed, and to the IOStream of each one's connection."""

    def __init__(self, monkeypatch) -> None:
        self.handlers: list[weakref.ref] = []
        self.parked: list[weakref.ref] = []
        self.streams: list[weakref.ref] = []
        initialize, park = TalksHandler.initialize, Waiters.park

        def recorded_initialize(handler, **kwargs):
            self.handlers.append(weakref.ref(handler))
            self.streams.append(weakref.ref(handler.request.connection.stream))
            initialize(handler, **kwargs)

        def recorded_park(waiters, waiter):
            self.parked.append(weakref.ref(waiter))
            if isinstance(waiter, PollDelegate):
                self.streams.append(weakref.ref(waiter.conn.stream))
            park(waiters, waiter)

        monkeypatch.setattr(TalksHandler, "initialize", recorded_initialize)
        monkeypatch.setattr(Waiters, "park", recorded_park)

    def alive(self) -> int:
        return sum(1 for ref in self.handlers + self.parked if ref() is not None)

    def streams_alive(self) -> int:
        return sum(1 for ref in self.streams if ref() is not None)

    def alive_between_requests(self, app) -> int:
        """How many may be alive while their connections wait for a next
        request: on the fast path, each connection's PollDelegate reads its
        next request itself (fastpolls._read_next), so it lives as long as
        the connection; a handler is done with its answer."""
        return len(self.parked) if app.fast_path else 0


@pytest.fixture(params=["fast path", "handlers"])
def server(request, io_loop, no_collector):
    app = make_app(MemoryStore(), poll_timeout=1.0, fast_polls=request.param == "fast path")
    http, port = serve_app(app)
    yield app, port
    http.stop()


async def open_polls(port: int, cursor: int, count: int = POLLS):
    """``count`` keep-alive connections, each with a long poll sent."""
    connections = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /talks?changesSince={cursor} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        connections.append((reader, writer))
    return connections


@pytest.mark.gen_test(timeout=120)
async def test_answered_polls_are_freed_without_the_collector(server, monkeypatch):
    app, port = server
    handlers = Recorder(monkeypatch)
    connections = await open_polls(port, app.board.store.head)
    await until(lambda: len(app.board.waiters) == POLLS)

    await app.board.put("Unicycling", "Ann", "Riding on one wheel")
    answers = [(await read_answer(reader)).body for reader, _ in connections]
    await until(lambda: handlers.alive() == handlers.alive_between_requests(app))
    for _, writer in connections:
        writer.close()
    await until(lambda: handlers.alive() == 0 and handlers.streams_alive() == 0)

    assert all(b"Unicycling" in answer for answer in answers)
    assert len(handlers.parked) == POLLS
    assert not gc.isenabled()


@pytest.mark.gen_test(timeout=120)
async def test_polls_whose_clients_leave_are_freed_without_the_collector(server, monkeypatch):
    app, port = server
    handlers = Recorder(monkeypatch)
    connections = await open_polls(port, app.board.store.head)
    await until(lambda: len(app.board.waiters) == POLLS)

    for _, writer in connections:
        writer.close()
    await until(lambda: len(app.board.waiters) == 0)
    await until(lambda: handlers.alive() == 0)

    assert len(handlers.parked) == POLLS
    assert not gc.isenabled()


@pytest.mark.gen_test(timeout=120)
async def test_timed_out_polls_are_freed_without_the_collector(server, monkeypatch):
    app, port = server
    handlers = Recorder(monkeypatch)
    connections = await open_polls(port, app.board.store.head)
    await until(lambda: len(app.board.waiters) == POLLS)

    answers = [(await read_answer(reader)).body for reader, _ in connections]  # the 1 s poll timeout
    await until(lambda: handlers.alive() == handlers.alive_between_requests(app))
    for _, writer in connections:
        writer.close()
    await until(lambda: handlers.alive() == 0 and handlers.streams_alive() == 0)

    assert all(b'"talks":[]' in answer.replace(b" ", b"") for answer in answers)
    assert not gc.isenabled()


@pytest.mark.gen_test(timeout=120)
async def test_refused_polls_are_freed_without_the_collector(server, monkeypatch):
    """An error answer raises an HTTPError; its traceback must not keep the handler."""
    app, port = server
    handlers = Recorder(monkeypatch)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    writer.write(b"GET /talks?changesSince=soon HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = (await read_answer(reader)).body
    await until(lambda: handlers.alive() == 0)

    assert b'"error"' in answer
    writer.close()


@pytest.mark.gen_test(timeout=120)
async def test_connections_reset_while_their_polls_wait_are_freed_without_the_collector(server, monkeypatch):
    app, port = server
    handlers = Recorder(monkeypatch)
    connections = await open_polls(port, app.board.store.head)
    await until(lambda: len(app.board.waiters) == POLLS)

    for _, writer in connections:
        reset(writer)
    await until(lambda: len(app.board.waiters) == 0)
    await until(lambda: handlers.alive() == 0 and handlers.streams_alive() == 0)

    assert len(handlers.streams) == POLLS
    assert not gc.isenabled()


@pytest.mark.gen_test(timeout=120)
async def test_connections_reset_between_requests_are_freed_without_the_collector(server, monkeypatch):
    """After an answer the connection waits for its next request; a reset then ends it in IOStream."""
    app, port = server
    handlers = Recorder(monkeypatch)
    connections = await open_polls(port, app.board.store.head)
    await until(lambda: len(app.board.waiters) == POLLS)
    await app.board.put("Unicycling", "Ann", "Riding on one wheel")
    for reader, _ in connections:
        await read_answer(reader)
    await until(lambda: handlers.alive() == handlers.alive_between_requests(app))

    for _, writer in connections:
        reset(writer)
    await until(lambda: handlers.alive() == 0 and handlers.streams_alive() == 0)

    assert len(handlers.streams) == POLLS
    assert not gc.isenabled()


def test_tuning_freezes_start_up_objects_and_raises_the_thresholds(io_loop):
    before = gc.get_threshold()
    try:
        timer = collector.tune("tuned")

        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, collector.MIDDLE_THRESHOLD, collector.OLD_THRESHOLD)
        assert timer.is_running()
        assert timer.callback_time == collector.FULL_EVERY * 1000
    finally:
        timer.stop()
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_python_policy_leaves_the_collector_as_it_is(io_loop):
    before = gc.get_threshold()

    assert collector.tune("python") is None

    assert gc.get_threshold() == before


def test_collections_are_counted_and_timed_per_generation_in_the_metrics():
    metrics = Metrics()
    collector.instrument(metrics)
    try:
        gc.collect(1)
        text = metrics.render()
    finally:
        gc.callbacks.pop()

    assert 'talkserver_gc_collections_total{generation="1"} 1' in text
    assert 'talkserver_gc_seconds_total{generation="1"}' in text
    assert 'talkserver_gc_collected_total{generation="1"}' in text


# Under --processes, prometheus_client keeps every value behind one lock
# that cannot be re-entered.  A collection may start on any allocation,
# also one the library makes while it holds that lock (a new labelled
# child, say); the callback then must not need the lock.
HOLDING_THE_LOCK = """
import gc, sys
from prometheus_client import values
from talkserver.operation import collector
from talkserver.operation.metrics import Metrics, share_between_workers

share_between_workers(sys.argv[1], 0)
metrics = Metrics()
collector.instrument(metrics)
inc = values.ValueClass.inc  # the lock is a variable of the function that makes the class
lock = dict(zip(inc.__code__.co_freevars, (cell.cell_contents for cell in inc.__closure__)))["lock"]
with lock:
    gc.collect(1)
    gc.collect(1)
print(metrics.render())
"""


def test_a_collection_while_the_metrics_lock_is_held_completes_and_is_counted(tmp_path):
    done = subprocess.run([sys.executable, "-c", HOLDING_THE_LOCK, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert 'talkserver_gc_collections_total{generation="1"} 2.0' in done.stdout
    assert 'talkserver_gc_collected_total{generation="1"}' in done.stdout
