"""A board filled as fast as one address can: where it stops, its memory, and its full answer with and without gzip.

Starts the talkserver command as shipped (``--port=0``, SQLite in a
temporary directory, every default bound), writes ``--talks`` talks with
4,000-character summaries of English-like text over ``--connections``
keep-alive connections from 127.0.0.1, and prints how many were stored
and refused (with the refusal's message), the time taken and the server's
resident memory.  Then it fetches the full ``GET /talks`` ``--gets``
times without gzip and with it, and prints the bytes sent and the
server's CPU time (from /proc) per answer: the first gzip answer is
compressed, the others are the Feed's cached bytes.  Before and after the
writes it wakes ``--followers`` waiting long polls with one change, to
compare fan-out on the empty and on the full board; at the end it
restarts the server on the full board's file.

    .venv/bin/python benchmarks/bounded_board.py --talks 20000

and, for comparison, without the bounds:

    .venv/bin/python benchmarks/bounded_board.py --talks 20000 --levels=1 \
        --server-option=--max-talks=0 --server-option=--max-board-bytes=0
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more out up into do any your what "
    "some can only other new time could these two may first then our my also about its over such after like how "
    "talk learn build share code data stream server client board change poll wait answer browser page library "
    "python history design small system network memory garden kitchen bread music guitar bicycle repair weaving "
    "pottery chess language game graph tree river mountain winter summer evening practice workshop question"
).split()


def text(rng: random.Random, length: int) -> str:
    """English-like text: common words, drawn with a skew towards the first ones, as in prose."""
    words, size = [], 0
    while size < length:
        word = WORDS[min(int(rng.paretovariate(1.2)) - 1, len(WORDS) - 1)] if rng.random() < 0.7 else rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS")


async def exchange(reader, writer, port: int, method: str, path: str, body: bytes = b"",
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin1")
    status_line, *header_lines = head.split("\r\n")
    answer_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        if name:
            answer_headers[name.strip().lower()] = value.strip()
    data = b"" if method == "HEAD" else await reader.readexactly(int(answer_headers.get("content-length", "0")))
    return int(status_line.split()[1]), answer_headers, data


async def write_talks(port: int, count: int, connections: int) -> tuple[Counter, str]:
    rng = random.Random(21)
    bodies = [json.dumps({"presenter": text(rng, 20), "summary": text(rng, 4000)}).encode() for _ in range(200)]
    statuses: Counter = Counter()
    refusal = ""
    started = time.monotonic()
    numbers = iter(range(count))

    async def writer_loop() -> None:
        nonlocal refusal
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in numbers:
            title = f"Talk%20{i}%3A%20" + "%20".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(5))
            status, _, data = await exchange(reader, writer, port, "PUT", f"/talks/{title}", bodies[i % len(bodies)],
                                             {"Content-Type": "application/json"})
            statuses[status] += 1
            if status != 204 and not refusal:
                refusal = f"{status} {data.decode()} (after {time.monotonic() - started:.1f} s)"
        writer.close()

    await asyncio.gather(*(writer_loop() for _ in range(connections)))
    return statuses, refusal


async def fetch_board(port: int, pid: int, gets: int, accept: str | None) -> tuple[int, list[float], bytes, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    costs, size, body, headers = [], 0, b"", {}
    for _ in range(gets):
        before = cpu_seconds(pid)
        status, headers, body = await exchange(reader, writer, port, "GET", "/talks",
                                               headers={"Accept-Encoding": accept} if accept else None)
        costs.append(cpu_seconds(pid) - before)
        assert status == 200, status
        size = len(body)
    writer.close()
    return size, costs, body, headers


async def fanout(port: int, clients: int) -> float:
    """Seconds from one change until the last of ``clients`` waiting long polls (100 per
    loopback address, accepting gzip) has its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _, headers, _ = await exchange(reader, writer, port, "HEAD", "/talks")
    head = headers["etag"].strip('"')
    polls = []
    for i in range(clients):
        # 100 per loopback address: under the default --max-polls-per-ip.
        source = (f"127.0.1.{1 + i // 100}", 0)
        poll_reader, poll_writer = await asyncio.open_connection("127.0.0.1", port, local_addr=source)
        poll_writer.write(f"GET /talks?changesSince={head} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          "Accept-Encoding: gzip, deflate, br\r\n\r\n".encode())
        polls.append((poll_reader, poll_writer))
    await asyncio.sleep(1.0)  # all parked

    async def answered(poll_reader) -> float:
        await poll_reader.readuntil(b"\r\n\r\n")
        return time.monotonic()

    waiting = [asyncio.ensure_future(answered(poll_reader)) for poll_reader, _ in polls]
    started = time.monotonic()
    # Replacing one talk: it fits on a full board too.
    status, _, data = await exchange(reader, writer, port, "PUT", "/talks/fan-out",
                                     json.dumps({"presenter": "A", "summary": f"B {started}"}).encode())
    assert status == 204, data
    last = max(await asyncio.gather(*waiting)) - started
    for _, poll_writer in polls:
        poll_writer.close()
    writer.close()
    return last


def start(directory: str, options: list[str]) -> tuple[subprocess.Popen, int, float]:
    """The server on ``directory``/talks.db: the process, its port, and the seconds until it listened."""
    began = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "talkserver", "--port=0", "--logging=error", f"--db={directory}/talks.db", *options],
        stderr=subprocess.PIPE, text=True,
    )
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", server.stderr.readline()).group(1))
    return server, port, time.monotonic() - began


async def run(args) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server, port, first_start = start(directory, args.server_option)
        try:
            start_rss = resident_mib(server.pid)
            empty = [await fanout(port, args.followers) for _ in range(3)] if args.followers else []
            started, cpu = time.monotonic(), cpu_seconds(server.pid)
            statuses, refusal = await write_talks(port, args.talks, args.connections)
            took, cpu = time.monotonic() - started, cpu_seconds(server.pid) - cpu
            print(f"{args.talks} PUTs over {args.connections} connections in {took:.1f} s "
                  f"(server CPU {1000 * cpu / args.talks:.2f} ms per PUT): "
                  + ", ".join(f"{n} answered {s}" for s, n in sorted(statuses.items())))
            print(f"first refusal: {refusal}")
            print(f"server RSS: {start_rss:.0f} MiB at start, {resident_mib(server.pid):.0f} MiB after")
            if args.followers:
                full = [await fanout(port, args.followers) for _ in range(3)]
                print(f"one change to {args.followers} waiting long polls, until the last has it (median of 3): "
                      f"{1000 * sorted(empty)[1]:.0f} ms on the empty board, "
                      f"{1000 * sorted(full)[1]:.0f} ms on the full one")
            plain_size, plain_costs, plain, _ = await fetch_board(port, server.pid, args.gets, None)
            gz_size, gz_costs, packed, headers = await fetch_board(port, server.pid, args.gets, "gzip, deflate, br")
            assert headers.get("content-encoding") == "gzip" and gzip.decompress(packed) == plain
            print(f"GET /talks plain: {plain_size / 1e6:.1f} MB, server CPU per answer "
                  f"{1000 * sorted(plain_costs)[len(plain_costs) // 2]:.0f} ms (median of {args.gets})")
            print(f"GET /talks gzip:  {gz_size / 1e6:.1f} MB ({plain_size / gz_size:.1f}x smaller), server CPU "
                  f"{1000 * gz_costs[0]:.0f} ms for the first (compressed), "
                  f"{1000 * sorted(gz_costs[1:])[len(gz_costs[1:]) // 2]:.0f} ms for the others (cached)")
            # The level chosen (wire.compression.LEVEL) against zlib's default and its best.
            for level in args.levels:
                began = time.process_time()
                packer = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
                size = len(packer.compress(plain) + packer.flush())
                print(f"  gzip level {level}: {size / 1e6:.1f} MB, {1000 * (time.process_time() - began):.0f} ms CPU"
                      " (in this process)")
        finally:
            server.terminate()
            server.wait()
        # The same file again: the board is loaded whole at start.
        server, port, restart = start(directory, args.server_option)
        try:
            print(f"start: {first_start:.2f} s on a new file; restart on the full board: {restart:.2f} s, "
                  f"RSS {resident_mib(server.pid):.0f} MiB")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            status, _, _ = await exchange(reader, writer, port, "PUT", "/talks/after%20restart",
                                          json.dumps({"presenter": "A", "summary": "B"}).encode())
            print(f"a new talk after the restart: {status}")
            writer.close()
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--talks", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--gets", type=int, default=5)
    parser.add_argument("--followers", type=int, default=500,
                        help="long polls to wake with one change, on the empty and on the full board (0: none)")
    parser.add_argument("--levels", type=lambda text: [int(n) for n in text.split(",")], default=[1, 6, 9],
                        help="zlib levels to compare on the full answer, in this process (default: 1,6,9)")
    parser.add_argument("--server-option", action="append", default=[], metavar="OPTION",
                        help="one more option for the server (--server-option=--max-talks=1000); repeatable")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
