"""``--plot``: the run's latencies drawn as a PNG (needs matplotlib, extra 'plot').

Two panels, both with milliseconds on a logarithmic axis, so that one
outlier of seconds does not squash everything else into one bar:

- the fan-out latency of every delivery by percentile, the percentile axis
  stretched toward the tail (50 %, 90 %, 99 %, 99.9 % ... equally spaced,
  as HdrHistogram draws it), with p50, p99 and the maximum marked;
- each change's time until its last client had it, in order.

A run of millions of deliveries is drawn from a few thousand quantiles,
taken evenly along the stretched axis, so drawing stays quick.
"""

from __future__ import annotations

import math

from talkserver.loadtest.tally import percentile

# Quantiles drawn along the percentile curve.
POINTS = 2000
# The smallest latency a log axis shows (a delivery measured at 0 ms would
# have no place on it).
FLOOR_MS = 0.01


def percentile_curve(sorted_ms, points: int = POINTS) -> tuple[list[float], list[float]]:
    """(x, ms) for the percentile panel: x is 1 / (1 - q) for quantile q,
    from q = 0 to the last delivery, at most ``points`` + 1 of them."""
    n = len(sorted_ms)
    if not n:
        return [], []
    # The axis spans 1 .. n: at x the deliveries below are a share
    # 1 - 1/x of all, so x = n is the last one, the maximum.
    top = math.log10(n)
    xs, ms = [], []
    for i in range(points + 1):
        x = 10 ** (top * i / points)
        xs.append(x)
        ms.append(max(FLOOR_MS, sorted_ms[min(n - 1, int(n - n / x))]))
    return xs, ms


def plot(latencies_ms, last_client_ms: list[float], path: str, title: str = "") -> None:
    """Draw the fan-out latency percentiles (and per-change last-client
    times) to a PNG, under ``title`` (see report.plot_title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

    figure, (spread, per_change) = plt.subplots(1, 2, figsize=(11, 4.2))
    values = sorted(latencies_ms)
    xs, ms = percentile_curve(values)
    spread.plot(xs, ms, color="#4472c4", drawstyle="steps-post")
    spread.set_xscale("log")
    spread.set_yscale("log")
    ticks = [(2, "50%"), (10, "90%"), (100, "99%"), (1000, "99.9%"), (10_000, "99.99%"), (100_000, "99.999%")]
    shown = [(x, label) for x, label in ticks if x <= max(xs or [1])] or ticks[:1]
    spread.xaxis.set_major_locator(FixedLocator([x for x, _ in shown]))
    spread.set_xticklabels([label for _, label in shown])
    spread.xaxis.set_minor_locator(NullLocator())
    for q, name, style in ((0.5, "p50", ":"), (0.99, "p99", "--")):
        value = percentile(values, q)
        if values:
            spread.axhline(max(FLOOR_MS, value), color="black", linestyle=style, linewidth=0.8, label=f"{name} {value:.1f} ms")
    if values:
        spread.axhline(max(FLOOR_MS, values[-1]), color="#c44e52", linewidth=0.8, label=f"max {values[-1]:.1f} ms")
    spread.set(title=f"Fan-out latency by percentile ({len(values):,} deliveries)",
               xlabel="percentile of deliveries", ylabel="ms from write to client (log)")
    spread.grid(True, which="major", alpha=0.3)
    spread.legend(loc="lower right", fontsize="small")
    changes = range(1, len(last_client_ms) + 1)
    per_change.plot(changes, [max(FLOOR_MS, v) for v in last_client_ms], marker=".", linestyle="none", color="#c44e52")
    per_change.set_yscale("log")
    per_change.xaxis.set_major_locator(MaxNLocator(integer=True))
    per_change.set(title="Time until the last client has it", xlabel="change", ylabel="ms (log)")
    per_change.grid(True, which="major", alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
