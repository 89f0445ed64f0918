"""Write throughput: PUTs and comments per second while clients long-poll.

Starts a real talkserver per run (``python -m talkserver`` in a subprocess,
on 127.0.0.1 only), parks ``--waiting`` long polls on it (each answered poll
is sent again with the new serverTime, as the browser does), and lets
``--writers`` keep-alive connections PUT talks and POST comments as fast as
the server answers.  Only 204 answers count.  The stores take turns, round
after round, so the machine's noise hits them alike; the report gives the
median per store, its ratio to :memory:, and the server's CPU time per
write (from /proc, so it shows the store's cost even when the client is the
bottleneck).  The PostgreSQL store runs against a throwaway local cluster
(talkserver.testing.cluster) with PostgreSQL's own durability defaults (fsync on,
synchronous_commit on), a new database per run.

    .venv/bin/python benchmarks/write_throughput.py --rounds=5 --seconds=5

Everything is bounded: the number of connections, the seconds per run and
the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from talkserver.testing.cluster import Cluster
from talkserver.testing.servers import ServerProcess

STORES = {
    ":memory:": ["--db=:memory:"],
    "SQLite (--sync=normal)": ["--db=talks.db", "--sync=normal"],
    "SQLite (--sync=full)": ["--db=talks.db", "--sync=full"],
    "PostgreSQL": ["--db={postgres}"],
}


async def exchange(reader, writer, request: bytes) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request on a kept-alive connection and read the answer."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, (await reader.readexactly(length) if length else b"")


def request(method: str, path: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def poll_forever(port: int, cursor: int, ready: asyncio.Event) -> None:
    """One waiting client: poll, and poll again with each answer's serverTime."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        first = True
        while True:
            status, body = await exchange(reader, writer, request("GET", f"/talks?changesSince={cursor}"))
            if first:
                first = False
                ready.set()
            cursor = json.loads(body)["serverTime"]
    finally:
        writer.close()


async def write_forever(port: int, number: int, counts: list[int]) -> None:
    """One writer: a PUT, then two comments on it, over and over, on ten titles."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        step = 0
        while True:
            title = f"/talks/bench-{number}-{step // 3 % 10}"
            if step % 3 == 0:
                req = request("PUT", title, {"presenter": f"writer {number}", "summary": "s" * 200})
            else:
                req = request("POST", title + "/comments", {"author": "bench", "message": f"m{step}"})
            status, _ = await exchange(reader, writer, req)
            if status == 204:
                counts[number] += 1
            step += 1
    finally:
        writer.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(port: int, pid: int, waiting: int, writers: int, warmup: float, seconds: float) -> tuple[float, float]:
    """(writes per second, server CPU ms per write) over ``seconds`` after a warm-up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, body = await exchange(reader, writer, request("GET", "/talks"))
    writer.close()
    cursor = json.loads(body)["serverTime"]
    # A cursor of now is answered only by a change: every poll waits.
    ready = [asyncio.Event() for _ in range(waiting)]
    counts = [0] * writers
    tasks = []
    for i in range(waiting):
        tasks.append(asyncio.create_task(poll_forever(port, cursor, ready[i])))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # do not overflow the listen backlog
    await asyncio.sleep(0.5)
    tasks += [asyncio.create_task(write_forever(port, n, counts)) for n in range(writers)]
    # Warm up until every poll has been answered once, so all of them are
    # in the measured steady state of being woken and sent again.
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), timeout=60)
    await asyncio.sleep(warmup)
    start_count, start_cpu, start = sum(counts), cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    writes, cpu, elapsed = sum(counts) - start_count, cpu_seconds(pid) - start_cpu, time.monotonic() - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return writes / elapsed, 1000 * cpu / max(writes, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--waiting", type=int, default=1000, help="long polls parked during the run")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writing connections")
    args = parser.parse_args()
    if not 0 <= args.waiting <= 5000 or not 1 <= args.writers <= 64 or args.seconds > 60:
        parser.error("keep the load bounded: waiting <= 5000, writers <= 64, seconds <= 60")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    results: dict[str, list[tuple[float, float]]] = {name: [] for name in STORES}
    cluster = Cluster(durable=True)
    try:
        run_rounds(args, results, cluster)
    finally:
        cluster.destroy()

    memory = statistics.median(r[0] for r in results[":memory:"])
    print(f"\n{args.waiting} waiting, {args.writers} writers, {args.rounds} rounds of {args.seconds:g} s; medians:")
    print("| store | writes/s | vs :memory: | server CPU ms/write |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        rate = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"| {name} | {rate:.0f} | {rate / memory:.2f} | {cpu:.3f} |")


def run_rounds(args, results, cluster) -> None:
    for round_number in range(args.rounds):
        # Alternate the order so no store always runs first (or last).
        names = list(STORES) if round_number % 2 == 0 else list(reversed(STORES))
        for name in names:
            with tempfile.TemporaryDirectory() as work:
                # The per-address limits would refuse one address's 1,000
                # polls and unthrottled writers: this measures the store.
                options = [o.format(postgres=cluster.new_database() if "{postgres}" in o else "") for o in STORES[name]]
                server = ServerProcess(
                    *options, "--poll_timeout=300", "--logging=warning",
                    "--max-polls-per-ip=0", "--write-rate=0", cwd=Path(work),
                )
                try:
                    result = asyncio.run(
                        measure(server.port, server.process.pid, args.waiting, args.writers, args.warmup, args.seconds)
                    )
                finally:
                    server.stop()
            results[name].append(result)
            print(f"round {round_number + 1} {name:24} {result[0]:8.0f} writes/s  {result[1]:.3f} CPU ms/write", flush=True)


if __name__ == "__main__":
    main()
