"""Counters and gauges, exposed in the Prometheus text format at /metrics.

With ``--processes`` a scrape reaches one worker, but must describe the
whole server.  Each worker then writes its values to a file of its own in a
directory the workers share (``share_with``), every second and at every
scrape, and a scrape adds up the files: counters and most gauges are
summed (``talkserver_waiting_clients`` is every worker's waiting polls);
a gauge that every worker sees alike, such as the number of talks, takes
the largest (``merge="max"``) or smallest (``merge="min"``) value instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

_MERGE = {"sum": sum, "max": max, "min": min}


class Counter:
    """A number that only goes up, optionally split by one label."""

    merge = "sum"

    def __init__(self, name: str, help: str, label: str | None = None) -> None:
        self.name, self.help, self.label = name, help, label
        self.values: dict[str, int] = {}

    def inc(self, label_value: str = "", amount: int = 1) -> None:
        self.values[label_value] = self.values.get(label_value, 0) + amount

    def snapshot(self) -> dict[str, float]:
        return dict(self.values)

    def render(self, values: dict[str, float] | None = None) -> list[str]:
        values = self.values if values is None else values
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if self.label is None:
            lines.append(f"{self.name} {values.get('', 0)}")
        else:
            for value, count in sorted(values.items()):
                lines.append(f'{self.name}{{{self.label}="{value}"}} {count}')
        return lines


class Gauge:
    """A number read at scrape time from a function."""

    def __init__(self, name: str, help: str, read: Callable[[], float], merge: str = "sum") -> None:
        self.name, self.help, self.read, self.merge = name, help, read, merge

    def snapshot(self) -> dict[str, float]:
        return {"": self.read()}

    def render(self, values: dict[str, float] | None = None) -> list[str]:
        value = self.read() if values is None else values.get("", 0)
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {value}"]


class Metrics:
    """A registry of metrics, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: list[Counter | Gauge] = []
        self._shared: Path | None = None
        self._mine: Path | None = None

    def counter(self, name: str, help: str, label: str | None = None) -> Counter:
        counter = Counter(name, help, label)
        self._metrics.append(counter)
        return counter

    def gauge(self, name: str, help: str, read: Callable[[], float], merge: str = "sum") -> Gauge:
        """A gauge; ``merge`` says how workers' values combine: sum, max or min."""
        if merge not in _MERGE:
            raise ValueError(f"merge must be one of {sorted(_MERGE)}")
        gauge = Gauge(name, help, read, merge)
        self._metrics.append(gauge)
        return gauge

    def share_with(self, directory: str, worker: int) -> None:
        """Describe every worker writing to ``directory``, this one as number ``worker``."""
        self._shared = Path(directory)
        self._mine = self._shared / f"worker-{worker}.json"

    def publish(self) -> None:
        """Write this worker's values for the others' scrapes (atomically: write, then rename)."""
        if self._mine is None:
            return
        data = {m.name: m.snapshot() for m in self._metrics}
        temporary = self._mine.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, self._mine)

    def render(self) -> str:
        """The whole registry in the Prometheus text exposition format (all workers when shared)."""
        merged = self._merged() if self._shared is not None else None
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render(None if merged is None else merged.get(metric.name, {})))
        return "\n".join(lines) + "\n"

    def _merged(self) -> dict[str, dict[str, float]]:
        self.publish()
        workers = []
        for path in sorted(self._shared.glob("worker-*.json")):
            try:
                workers.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # a worker that died while writing; its next file replaces it
        merged: dict[str, dict[str, float]] = {}
        for metric in self._metrics:
            combine = _MERGE[metric.merge]
            by_label: dict[str, list[float]] = {}
            for worker in workers:
                for label, value in worker.get(metric.name, {}).items():
                    by_label.setdefault(label, []).append(value)
            merged[metric.name] = {label: combine(values) for label, values in by_label.items()}
        return merged
