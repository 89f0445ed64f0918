"""``--plot``: the run's latencies drawn as a PNG (needs matplotlib, extra 'plot').

Two panels: the fan-out latency per delivery at each percentile, and each
change's time until its last client had it.  The first keeps the existing
histogram shape (deliveries against milliseconds), with the p50 and p99
marked.
"""

from __future__ import annotations

from talkserver.loadtest.tally import percentile


def plot(latencies_ms, last_client_ms: list[float], path: str, title: str = "") -> None:
    """Draw the fan-out latency distribution (and per-change last-client times)
    to a PNG, under ``title`` (see report.plot_title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (spread, per_change) = plt.subplots(1, 2, figsize=(11, 4))
    values = sorted(latencies_ms)
    spread.hist(values, bins=100, color="#4472c4")
    for q, style in ((0.5, "-"), (0.99, "--")):
        spread.axvline(percentile(values, q), color="black", linestyle=style, label=f"p{round(q * 100)}")
    spread.set(title="Fan-out latency per delivery", xlabel="ms from write to client", ylabel="deliveries")
    spread.legend()
    per_change.plot(range(1, len(last_client_ms) + 1), last_client_ms, marker=".", linestyle="none", color="#c44e52")
    per_change.set(title="Time until the last client has it", xlabel="change", ylabel="ms")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
