"""Counters and gauges, served in the Prometheus text format at /metrics by prometheus_client.

prometheus_client is the Prometheus project's own library for Python: it
writes the exposition format, carries the process metrics every exporter
has (CPU seconds, resident memory, open files, start time) and adds up the
values of several processes (its multiprocess mode).  docs/metrics.md lists
every metric and says why the library.

The rest of talkserver never imports the library; it asks a ``Metrics``
for a ``counter()`` (``inc`` on hot paths: one dict look-up for the label's
child, then the library's own increment) or a ``gauge()`` read from a
function.  Each ``Metrics`` has a registry of its own, never the library's
global one, so every server in a process (the tests make many) counts alone.

With ``--processes`` a scrape reaches one worker but must describe the
whole server.  Each worker calls ``share_between_workers`` before it makes
any metric: the library then keeps every value in a memory-mapped file of
that worker's in a directory all of them share, and a scrape of any worker
adds up the files.  Counters are summed over every worker that ever ran, so
they never go down; gauges over the live workers only (``livesum``) or, for
a value every worker sees alike such as the number of talks, the largest
(``merge="max"``) or smallest (``merge="min"``) of them.  A file cannot
hold a function, so each worker writes its gauges' values every second and
at every scrape (``publish``), and its process metrics with them: CPU
seconds and memory are the workers' sums, open files the fullest worker's,
the start time and the open-files limit the smallest.  A worker that exits, or the one that
replaces a worker that died, drops the old worker's gauges
(``mark_process_dead``).
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Callable, Iterable

import prometheus_client
from prometheus_client import multiprocess, values
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

_LIVE_MODES = {"sum": "livesum", "max": "livemax", "min": "livemin"}
# How the workers' process metrics combine; memory is summed.  Open files
# are the fullest worker's and the limit the smallest, so the usual alert
# (open_fds / max_fds near 1) still warns before any worker runs out.
_PROCESS_LIVE_MODES = {
    "process_start_time_seconds": "livemin",
    "process_max_fds": "livemin",
    "process_open_fds": "livemax",
}

_shared_directory: str | None = None
# The variables that switch prometheus_client to its multiprocess mode (the
# lower-case one is its older spelling).
_DIRECTORY_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def ignore_inherited_directory() -> str | None:
    """Forget a multiprocess directory named in this process's environment; returns it, if any.

    talkserver picks that directory itself, a fresh one per start under
    ``--processes`` (talkserver.operation.workers), and none otherwise.  A
    variable inherited from a shell or a unit file would make the library
    write every value to files there: a crash at the first metric if the
    directory is missing, and files nobody removes (and a sum over old
    runs) if it is not.  Call it before anything makes a metric.
    """
    found = [os.environ.pop(variable) for variable in _DIRECTORY_VARIABLES if variable in os.environ]
    if not found:
        return None
    values.ValueClass = values.get_value_class()
    return found[0]


def share_between_workers(directory: str, worker: int) -> None:
    """Make every Metrics made from now on in this process part of the whole server's
    values, kept in ``directory`` with the other workers', as worker number ``worker``.

    Call it in the worker, before anything makes a metric; a fresh, empty
    ``directory`` per server start (talkserver.operation.workers makes one).
    """
    global _shared_directory
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    # The library picks how it stores values when first imported, from this
    # variable; it was not set then, so let it pick again now.
    values.ValueClass = values.get_value_class()
    _shared_directory = directory
    # The worker this one replaces (tornado.process restarts a worker that
    # died under the same number) left its live gauges behind.
    mine = Path(directory) / f"worker-{worker}.pid"
    try:
        multiprocess.mark_process_dead(int(mine.read_text()), directory)
    except (FileNotFoundError, ValueError):
        pass
    mine.write_text(str(os.getpid()))
    atexit.register(multiprocess.mark_process_dead, os.getpid(), directory)


class Counter:
    """A number that only goes up, optionally split by one label."""

    __slots__ = ("name", "label", "_metric", "_children")

    def __init__(self, metric: prometheus_client.Counter, name: str, label: str | None) -> None:
        self.name, self.label, self._metric = name, label, metric
        # Label value -> its child's inc: the library's labels() takes a lock
        # and builds a key, too much for every request; look it up once.
        self._children: dict[str, Callable[[float], None]] = {} if label else {"": metric.inc}

    def inc(self, label_value: str = "", amount: float = 1) -> None:
        """Add ``amount`` (for ``label_value``, when the counter has a label)."""
        inc = self._children.get(label_value)
        if inc is None:
            inc = self._children[label_value] = self._metric.labels(label_value).inc
        inc(amount)


class Gauge:
    """A number read from a function when it is scraped (or published, between workers)."""

    __slots__ = ("name", "read", "_metric")

    def __init__(self, metric: prometheus_client.Gauge, name: str, read: Callable[[], float]) -> None:
        self.name, self.read, self._metric = name, read, metric

    def publish(self) -> None:
        self._metric.set(self.read())


class Metrics:
    """One server's metrics, rendered with the process metrics by prometheus_client."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._shared = _shared_directory
        self._gauges: list[Gauge] = []
        # Counters read from functions, copied into the workers' files: (metric, read, totals copied).
        self._copied: list[tuple[prometheus_client.Counter, Callable[[], dict[str, float]], dict[str, float]]] = []
        self._declared: list[prometheus_client.Counter | prometheus_client.Gauge] = []
        if self._shared is None:
            # Metrics register here; the process's figures are read at each scrape.
            self._own: CollectorRegistry | None = self.registry
            prometheus_client.ProcessCollector(registry=self.registry)
            self._process: _SharedProcessMetrics | None = None
        else:
            # Metrics only write their files; a scrape reads every worker's.
            self._own = None
            self.registry.register(_EveryWorker(self._shared, self._declared))
            self._process = _SharedProcessMetrics()
        prometheus_client.PlatformCollector(registry=self.registry)

    def counter(self, name: str, help: str, label: str | None = None) -> Counter:
        """A counter named ``name`` (ending in ``_total``), split by ``label`` if given."""
        metric = prometheus_client.Counter(name, help, [label] if label else [], registry=self._own)
        self._declared.append(metric)
        return Counter(metric, name, label)

    def counted_elsewhere(self, name: str, help: str, label: str, read: Callable[[], dict[str, float]]) -> None:
        """A counter by ``label`` whose totals ``read`` gives, at each scrape (and publish).

        For numbers counted where the library must not be called: its
        values share one lock that cannot be re-entered, so a garbage
        collector's callback that took it could wait forever on the very
        thread that holds it (talkserver.operation.collector).  ``read``
        must return totals that only grow.
        """
        if self._shared is None:
            self.registry.register(_ReadCounter(name, help, label, read))
            return
        metric = prometheus_client.Counter(name, help, [label], registry=None)
        self._declared.append(metric)
        self._copied.append((metric, read, {}))

    def gauge(self, name: str, help: str, read: Callable[[], float], merge: str = "sum") -> Gauge:
        """A gauge read from ``read``; ``merge`` says how workers' values combine: sum, max or min."""
        if merge not in _LIVE_MODES:
            raise ValueError(f"merge must be one of {sorted(_LIVE_MODES)}")
        metric = prometheus_client.Gauge(name, help, registry=self._own, multiprocess_mode=_LIVE_MODES[merge])
        self._declared.append(metric)
        gauge = Gauge(metric, name, read)
        if self._shared is None:
            metric.set_function(read)
        else:
            self._gauges.append(gauge)
        return gauge

    def publish(self) -> None:
        """Write this worker's gauges and process metrics for every worker's scrapes (shared only)."""
        if self._process is None:
            return
        for gauge in self._gauges:
            gauge.publish()
        for metric, read, copied in self._copied:
            for value, total in read().items():
                before = copied.get(value)
                if before is None or total > before:  # (a first 0 too, so the sample is listed)
                    metric.labels(value).inc(total - (before or 0))
                    copied[value] = total
        self._process.publish()

    def render(self) -> str:
        """The whole server's metrics in the Prometheus text exposition format."""
        self.publish()
        return prometheus_client.generate_latest(self.registry).decode("utf-8")


class _ReadCounter:
    """A labelled counter whose totals a function gives at each scrape (one process)."""

    def __init__(self, name: str, help: str, label: str, read: Callable[[], dict[str, float]]) -> None:
        self._name, self._help, self._label, self._read = name, help, label, read

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._help, labels=[self._label])
        for value, total in self._read().items():
            family.add_metric([value], total)
        yield family

    def describe(self) -> Iterable[Metric]:
        yield CounterMetricFamily(self._name, self._help, labels=[self._label])


class _EveryWorker:
    """A collector of every worker's files, which also names the metrics none has a value for yet.

    The library's MultiProcessCollector only knows what is in the files, so
    a labelled counter that no worker has counted (accept errors, say)
    would be missing from the scrape rather than listed empty, as it is in
    one process.
    """

    def __init__(self, directory: str, declared: list) -> None:
        self._files = multiprocess.MultiProcessCollector(None, path=directory)
        self._declared = declared

    def collect(self) -> Iterable[Metric]:
        seen = set()
        for family in self._files.collect():
            seen.add(family.name)
            yield family
        for metric in self._declared:
            for family in metric.describe():
                if family.name not in seen:
                    yield family


class _SharedProcessMetrics:
    """This worker's process metrics, written where every worker's scrape adds them up.

    The library reads them from /proc at a scrape, for one process only;
    here each worker copies its own into the shared files instead.  CPU
    seconds are a counter, so a worker that dies keeps its share.
    """

    def __init__(self) -> None:
        self._reader = prometheus_client.ProcessCollector(registry=None)
        self._gauges: dict[str, prometheus_client.Gauge] = {}
        self._cpu: prometheus_client.Counter | None = None
        self._cpu_counted = 0.0
        for family in self._reader.collect():
            if family.type == "counter":
                self._cpu = prometheus_client.Counter(family.name, family.documentation, registry=None)
            else:
                mode = _PROCESS_LIVE_MODES.get(family.name, "livesum")
                self._gauges[family.name] = prometheus_client.Gauge(
                    family.name, family.documentation, registry=None, multiprocess_mode=mode
                )

    def publish(self) -> None:
        for family in self._reader.collect():
            value = family.samples[0].value
            if family.name in self._gauges:
                self._gauges[family.name].set(value)
            elif self._cpu is not None and family.type == "counter":
                self._cpu.inc(max(0.0, value - self._cpu_counted))
                self._cpu_counted = max(value, self._cpu_counted)
