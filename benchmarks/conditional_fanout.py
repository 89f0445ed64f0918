"""Fan-out of one change to many waiting clients: conditional polls vs changesSince.

Starts a real talkserver per run (``python -m talkserver``, in memory, on
127.0.0.1), parks ``--clients`` keep-alive polls on it and makes
``--changes`` changes one at a time.  Each change is timed from the write
being sent to the last client reading its answer.  Two kinds of client
take turns, round after round, each on a freshly started server:

- ``etag``: the book's current client on ``--api=etag``.  It sends
  ``If-None-Match`` with the tag it has and ``Prefer: wait=90``, and each
  change brings it the whole list and a new tag;
- ``changes``: the 2nd edition's ``changesSince`` poll on the default
  server, which gets the diff.

The board holds ``--talks`` talks, so the whole list is larger than a diff,
as it is in use.  The report gives the median per kind and the ratio
etag / changes.

    .venv/bin/python benchmarks/conditional_fanout.py --clients=5000 --rounds=3

Everything is bounded: the clients, the changes per run and the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import statistics
import time

from talkserver.testing.servers import ServerProcess

_SERVER_TIME = re.compile(rb'"serverTime":(-?[0-9]+)')
_ETAG = re.compile(rb"\r\netag: *([^\r]*)", re.I)
_LENGTH = re.compile(rb"\r\ncontent-length: *([0-9]+)", re.I)


class Poller(asyncio.Protocol):
    """One keep-alive client that polls again as soon as it is answered."""

    def __init__(self, kind: str, run: "Run") -> None:
        self.kind, self.run = kind, run
        self.transport = None
        self.buffer = b""
        self.version: bytes | None = None  # the tag (etag) or serverTime (changes)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.transport.write(b"GET /talks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    def poll(self) -> None:
        if self.kind == "etag":
            request = b"GET /talks HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: %s\r\nPrefer: wait=90\r\n\r\n" % self.version
        else:
            request = b"GET /talks?changesSince=%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % self.version
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            found = _LENGTH.search(head)
            length = int(found.group(1)) if found else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            status = int(head[9:12])
            if status == 200:
                first = self.version is None
                if self.kind == "etag":
                    self.version = _ETAG.search(head).group(1)
                else:
                    self.version = _SERVER_TIME.search(body).group(1)
                if not first:
                    self.run.answered(now)
            elif status != 304:
                raise SystemExit(f"unexpected answer {status}: {body[:200]!r}")
            self.poll()


class Run:
    """One server, its pollers, and the time each change took to reach them all."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.pending = 0
        self.last = 0.0
        self.done: asyncio.Event = asyncio.Event()

    def answered(self, now: float) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.last = now
            self.done.set()


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await reader.read()
    writer.close()
    return data


async def waiting(port: int) -> int:
    metrics = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    return int(float(re.search(rb"\ntalkserver_waiting_clients (\S+)", metrics).group(1)))


def put(title: str, summary: str) -> bytes:
    body = json.dumps({"presenter": "Bench", "summary": summary}).encode()
    return b"PUT /talks/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (
        title.encode(), len(body), body)


async def one_run(kind: str, args) -> list[float]:
    api = "etag" if kind == "etag" else "changes"
    options = (f"--api={api}", "--db=:memory:", "--max-polls-per-ip=0", "--write-rate=0", "--logging=warning")
    with ServerProcess(*options) as server:
        for n in range(args.talks):
            await exchange(server.port, put(f"talk{n}", "A summary of a talk, as people write them. " * 4))
        loop = asyncio.get_running_loop()
        run = Run(args.clients)
        transports = []
        for n in range(args.clients):
            transport, _ = await loop.create_connection(lambda: Poller(kind, run), "127.0.0.1", server.port)
            transports.append(transport)
        times = []
        for change in range(args.changes):
            while await waiting(server.port) < args.clients:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            run.pending, run.done = args.clients, asyncio.Event()
            started = time.perf_counter()
            await exchange(server.port, put(f"talk{change % args.talks}", f"changed {change}"))
            await asyncio.wait_for(run.done.wait(), 60)
            times.append((run.last - started) * 1000)
        for transport in transports:
            transport.close()
        server.stop()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--changes", type=int, default=5, help="changes per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--talks", type=int, default=20, help="talks on the board")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    medians: dict[str, list[float]] = {"etag": [], "changes": []}
    for round_ in range(1, args.rounds + 1):
        for kind in ("etag", "changes"):
            times = await one_run(kind, args)
            medians[kind].append(statistics.median(times))
            print(f"round {round_} {kind:7}: last client after {statistics.median(times):6.1f} ms "
                  f"(median of {len(times)} changes: {', '.join(f'{t:.0f}' for t in times)})", flush=True)
    etag, changes = statistics.median(medians["etag"]), statistics.median(medians["changes"])
    print(f"median: etag {etag:.1f} ms, changes {changes:.1f} ms, ratio etag/changes {etag / changes:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
