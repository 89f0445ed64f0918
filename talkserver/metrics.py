"""Counters and gauges, exposed in the Prometheus text format at /metrics."""

from __future__ import annotations

from typing import Callable


class Counter:
    """A number that only goes up, optionally split by one label."""

    def __init__(self, name: str, help: str, label: str | None = None) -> None:
        self.name, self.help, self.label = name, help, label
        self.values: dict[str, int] = {}

    def inc(self, label_value: str = "", amount: int = 1) -> None:
        self.values[label_value] = self.values.get(label_value, 0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if self.label is None:
            lines.append(f"{self.name} {self.values.get('', 0)}")
        else:
            for value, count in sorted(self.values.items()):
                lines.append(f'{self.name}{{{self.label}="{value}"}} {count}')
        return lines


class Gauge:
    """A number read at scrape time from a function."""

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.read()}"]


class Metrics:
    """A registry of metrics, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: list[Counter | Gauge] = []

    def counter(self, name: str, help: str, label: str | None = None) -> Counter:
        counter = Counter(name, help, label)
        self._metrics.append(counter)
        return counter

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> Gauge:
        gauge = Gauge(name, help, read)
        self._metrics.append(gauge)
        return gauge

    def render(self) -> str:
        """The whole registry in the Prometheus text exposition format."""
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
