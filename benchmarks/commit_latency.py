"""Commit latency: how long one write holds the event loop, per store.

The SQLite store commits on the event loop, so the time ``put`` or
``add_comment`` takes is time no other request is served.  This calls the
stores directly (no HTTP) in the same mix as benchmarks/write_throughput.py
(a PUT, then two comments, on 80 titles) and reports the median, the 99th
and 99.9th percentile and the worst single write.  WAL checkpoints (about
every 1,000 pages) are in the tail.

The PostgreSQL store does not hold the event loop while it commits: its
figure is the time from calling ``put`` to the change being committed
*and* read back into memory (the time before the 204), on a throwaway
local cluster with PostgreSQL's durability defaults (talkserver.testing.cluster).

    .venv/bin/python benchmarks/commit_latency.py --writes=6000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from talkserver.stores.sqlite import SQLiteStore
from talkserver.stores import MemoryStore
from talkserver.stores.postgres import PostgresStore
from talkserver.testing.cluster import Cluster


async def latencies(store, writes: int) -> list[float]:
    """Seconds each of ``writes`` changes took until applied, sorted; closes ``store``."""
    taken = []
    try:
        for i in range(writes):
            title = f"talk {i // 3 % 80}"
            start = time.perf_counter()
            if i % 3 == 0:
                await store.put(title, "presenter", "s" * 200)
            else:
                await store.add_comment(title, "author", f"message {i}")
            taken.append(time.perf_counter() - start)
    finally:
        await store.close()
    return sorted(taken)


async def postgres_latencies(url: str, writes: int) -> list[float]:
    """As latencies, for a PostgresStore on ``url``."""
    return await latencies(await PostgresStore.open(url), writes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=6000)
    args = parser.parse_args()
    n = min(max(args.writes, 1000), 100_000)
    print(f"{n} writes; milliseconds per write")
    print("| store | median | p99 | p99.9 | worst |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        stores = {
            ":memory:": MemoryStore(),
            "SQLite (--sync=normal)": SQLiteStore(str(Path(work) / "normal.db"), sync="normal"),
            "SQLite (--sync=full)": SQLiteStore(str(Path(work) / "full.db"), sync="full"),
        }
        for name, store in stores.items():
            taken = asyncio.run(latencies(store, n))
            cells = [taken[n // 2], taken[int(n * 0.99)], taken[int(n * 0.999)], taken[-1]]
            print(f"| {name} | " + " | ".join(f"{1000 * t:.3f}" for t in cells) + " |")
    cluster = Cluster(durable=True)
    try:
        taken = asyncio.run(postgres_latencies(cluster.new_database(), n))
    finally:
        cluster.destroy()
    cells = [taken[n // 2], taken[int(n * 0.99)], taken[int(n * 0.999)], taken[-1]]
    print("| PostgreSQL (until applied; the loop is free meanwhile) | " + " | ".join(f"{1000 * t:.3f}" for t in cells) + " |")


if __name__ == "__main__":
    main()
