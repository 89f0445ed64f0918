"""Plot a server's resident memory over a talkserver-load run (``--pid``), as PNG.

    .venv/bin/python benchmarks/rss_plot.py bench/soak.json docs/soak-rss.png [--title TEXT]

Reads ``server_rss_kb`` from one or more JSON results (one line each) and
prints the growth after the first minute, the figure the soak is judged by.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def growth_after(samples: list[list[float]], warm_up: float = 60.0) -> float:
    """Percent growth of RSS from the first sample after ``warm_up`` s to the last."""
    later = [kb for t, kb in samples if t >= samples[0][0] + warm_up]
    return 100.0 * (later[-1] - later[0]) / later[0] if len(later) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="talkserver-load --json files, then the PNG to write")
    parser.add_argument("--title", default="Server RSS during the soak")
    args = parser.parse_args()
    *inputs, png = args.results

    figure, axes = plt.subplots(figsize=(9, 4))
    for path in inputs:
        result = json.load(open(path))
        samples = result["server_rss_kb"]
        label = f"{path.rsplit('/', 1)[-1].removesuffix('.json')}: {result['clients']} clients, {result['changes']} changes"
        axes.plot([t / 60 for t, _ in samples], [kb / 1024 for _, kb in samples], label=label)
        print(f"{path}: {len(samples)} samples, first {samples[0][1] / 1024:.1f} MiB, "
              f"highest {max(kb for _, kb in samples) / 1024:.1f} MiB, last {samples[-1][1] / 1024:.1f} MiB, "
              f"growth after the first minute {growth_after(samples):+.1f} %, "
              f"errors {result['errors']}, lost {result['lost']}, duplicates {result['duplicates']}")
    axes.set(title=args.title, xlabel="minutes since the load tool started", ylabel="RSS, MiB")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(png, dpi=90)


if __name__ == "__main__":
    main()
