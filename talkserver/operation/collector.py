"""How the cyclic garbage collector runs in a server full of parked long polls.

A long poll's objects (its handler, request, connection state, futures and
coroutine) are freed by reference counting the moment it is answered, times
out or its client leaves: Tornado breaks the handler's own cycles in
``finish()``, and nothing in talkserver refers to a handler once
``Waiters`` lets go of it.  One cycle remains in Tornado: a connection
that ends with an error (a client resetting it) keeps the error on its
IOStream, and the error's traceback holds frames that refer to the stream.
``HTTPServer`` below drops that traceback when the connection is done.
tests/test_collector.py checks all of this with the collector switched
off.  So on the hot path the cyclic collector has nothing to find.

What it costs is scanning.  Each parked poll holds about 90 container
objects the collector tracks, 900,000 with 10,000 clients.  Python starts a
young collection after every 700 net new container objects, and a full one
once enough objects have survived into the old generation.  Every change
answers 10,000 polls and parks 10,000 new ones, all of which survive long
enough to be promoted, so with Python's settings the server ran about one
full collection per change (0.7 s each at 10,000 clients), just while the
clients' new polls came in, and fell further behind with every change
(docs/benchmarks.md, "Fan-out at a steady rate").  ``tune()`` therefore:

1. freezes everything alive after start-up (``gc.freeze()``): modules,
   classes, routes and the store's talks are never scanned again;
2. starts a collection by itself only once two million more container
   objects are alive than at the last one.  Answering polls frees as many
   as parking the next ones makes, so a steady stream of changes does not
   reach it (10,000 parked polls are under half of it); it is the valve
   for whatever else makes the count grow;
3. runs a full collection every ``FULL_EVERY`` seconds from the IOLoop, so
   reference cycles made anywhere (an error's traceback, a library's
   cache) are still reclaimed and memory stays bounded.  It runs between
   callbacks, never inside a wake loop (``Waiters`` also holds the
   collector off while it answers).  With 10,000 clients that is a pause
   of about 0.7 s once a minute, where Python's settings made one per
   change.

``--gc=python`` keeps Python's own settings, for comparison.  Collections
are counted and timed per generation in /metrics (``instrument``): the
collector's callback only adds to plain numbers, which a scrape reads.  It
may run on any allocation, including one made while prometheus_client
holds the lock its values share under ``--processes``; a callback that
took that lock would wait for itself forever.
"""

from __future__ import annotations

import gc
import time

import tornado.httpserver
from tornado.ioloop import PeriodicCallback

from talkserver.operation.metrics import Metrics

POLICIES = ("tuned", "python")
# A collection once this many more container objects are alive than at the
# last one (Python: 700).
YOUNG_THRESHOLD = 2_000_000
# Older generations only after this many young collections (Python: 10 and
# 10): the timer below runs the full collections.
MIDDLE_THRESHOLD = 1_000
OLD_THRESHOLD = 1_000
# Seconds between the full collections the server runs itself.
FULL_EVERY = 60.0


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTPServer, leaving no reference cycle behind a connection
    that ended with an error, so that it is freed by reference counting."""

    def on_close(self, server_conn) -> None:
        super().on_close(server_conn)
        error = getattr(getattr(server_conn, "stream", None), "error", None)
        if error is not None:
            # The client is gone; the traceback would only tie the stream
            # into a cycle with the frames that raised it.
            error.__traceback__ = None


class Collections:
    """Collections run, seconds spent and objects freed, per generation, as plain numbers.

    It is the collector's callback: no lock, no I/O, no call into a library,
    only arithmetic on lists made beforehand.  (One collection runs at a
    time, whatever thread triggers it, so the callback never races itself.)
    """

    GENERATIONS = 3

    def __init__(self) -> None:
        self.runs = [0] * self.GENERATIONS
        self.seconds = [0.0] * self.GENERATIONS
        self.collected = [0] * self.GENERATIONS
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.runs[generation] += 1
        self.seconds[generation] += time.perf_counter() - self._started
        self.collected[generation] += info["collected"]

    @staticmethod
    def by_generation(numbers: list) -> dict[str, float]:
        return {str(generation): number for generation, number in enumerate(numbers)}


def instrument(metrics: Metrics) -> Collections:
    """Count and time the collector's runs, per generation, in ``metrics`` (read at each scrape)."""
    counts = Collections()
    metrics.counted_elsewhere("talkserver_gc_collections_total", "Garbage collections run, by generation.",
                              "generation", lambda: counts.by_generation(counts.runs))
    metrics.counted_elsewhere("talkserver_gc_seconds_total", "Seconds spent in garbage collections, by generation.",
                              "generation", lambda: counts.by_generation([round(s, 6) for s in counts.seconds]))
    metrics.counted_elsewhere("talkserver_gc_collected_total", "Objects the garbage collector freed, by generation.",
                              "generation", lambda: counts.by_generation(counts.collected))
    gc.callbacks.append(counts)
    return counts


def tune(policy: str = "tuned") -> PeriodicCallback | None:
    """Set the collector up for serving, once start-up is done (see above).

    Returns the started timer of full collections (None with ``python``).
    """
    if policy not in POLICIES:
        raise ValueError(f"--gc={policy}: use one of {', '.join(POLICIES)}")
    if policy == "python":
        return None
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    timer = PeriodicCallback(gc.collect, FULL_EVERY * 1000, jitter=0.1)
    timer.start()
    return timer
