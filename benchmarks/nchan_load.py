"""Long-poll fan-out through nchan, measured the way talkserver-load measures a talk server.

nchan (benchmarks/peers/nchan) speaks channels and messages, not talks, so
talkserver-load cannot drive it; this script is its counterpart for the one
thing the two can be compared on, following by long poll (the mapping is in
benchmarks/peers/nchan/README.md).  ``--clients`` followers each hold one
keep-alive connection from the same spread of loopback source addresses as
talkserver-load's (``--clients-per-address``, 100 by default), ask
``GET /talks`` and ask again at once after each answer with its
``Last-Modified`` and ``Etag``.  One writer publishes a change (``POST
/publish``, a body shaped like a talkserver answer, ``serverTime`` counting
the changes) every ``--interval`` seconds by the clock, or ``--spaced``
seconds after every follower waits again and nchan answers at once.

The JSON it writes (``--json``) has the keys of talkserver-load's that
benchmarks/fanout_ab.py reads: the changes, what was lost, doubled or failed
(per follower, each change must come once and in order), the time until the
last follower had each change, the server's memory per waiting follower and
its CPU while writing (``--pid``, repeatable: nchan's worker).

    .venv/bin/python benchmarks/nchan_load.py --url http://127.0.0.1:8400 --clients 500 \\
        --interval 0.5 --duration 4 --pid WORKER_PID --json bench/nchan.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import sys
import time
from urllib.parse import urlsplit

clock = time.perf_counter

CONNECTS_AT_ONCE = 200
CONNECT_TIMEOUT = 120.0
IDLE_ANSWER = 0.02  # --spaced: nchan answers its channel's state this fast when idle
_SERVER_TIME = re.compile(rb'"serverTime":\s*([0-9]+)')


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ProcessLookupError(pid)


def source(index: int, per_address: int) -> str:
    """Follower ``index``'s source address, as talkserver-load picks it (127.0.0.2 onwards)."""
    n = 2 + index // per_address
    return f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


class Answers(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection that splits answers framed by Content-Length.

    Subclasses implement ``answered(now, status, head, body)``; ``head`` is
    the header block as sent (``header`` finds a name in any case).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        now = clock()
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            length = header(head, b"content-length")
            stop = end + 4 + (int(length) if length else 0)
            if len(buffer) < stop:
                break
            body, buffer = buffer[end + 4 : stop], buffer[stop:]
            self.answered(now, int(head[9:12]), head, body)
        self.buffer = buffer

    def answered(self, now: float, status: int, head: bytes, body: bytes) -> None:
        raise NotImplementedError


def header(head: bytes, name: bytes) -> bytes | None:
    """A header's value (as sent: nchan's dates must go back unchanged), or None.

    ``name`` is lower-case; header names match in any case."""
    start = head.lower().find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start : end if end >= 0 else None].strip()


class Follower(Answers):
    """One long-polling follower: asks, takes the answer, asks again with its cursor."""

    def __init__(self, run: "Run", address: str) -> None:
        super().__init__()
        self.run, self.address = run, address
        # If-Modified-Since and If-None-Match: the message it has.  At first
        # none: nchan answers the oldest message it keeps, or waits for one.
        # (A cursor of "now" instead made nchan 1.3.6's worker abort, in
        # spool_fetch_msg, on an empty channel.)  The benchmarks start a fresh
        # nchan per run; messages of an earlier run are skipped (``mark``).
        self.cursor = b""
        self.last = 0  # the newest change it has
        self.waiting = False
        self.closing = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.ask()

    def ask(self) -> None:
        if self.closing or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(b"GET /talks HTTP/1.1\r\nHost: nchan\r\n" + self.cursor + b"\r\n")
        self.waiting = True
        self.run.waiting += 1

    def answered(self, now: float, status: int, head: bytes, body: bytes) -> None:
        run = self.run
        if self.waiting:
            self.waiting = False
            run.waiting -= 1
        if status != 200:
            # 304/408: nothing new before nchan's timeout; anything else is an error.
            if status not in (304, 408):
                run.error(f"HTTP {status}")
            asyncio.get_running_loop().call_later(0.5 if status not in (304, 408) else 0, self.ask)
            return
        found = _SERVER_TIME.search(body)
        modified, etag = header(head, b"last-modified"), header(head, b"etag")
        if found is None or modified is None or etag is None:
            run.error("an answer without serverTime, Last-Modified or Etag")
        else:
            self.cursor = b"If-Modified-Since: " + modified + b"\r\nIf-None-Match: " + etag + b"\r\n"
            if run.mark in body:  # (not another run's change)
                run.received(self, int(found.group(1)), now)
        run.ask_soon(self)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.waiting:
            self.waiting = False
            self.run.waiting -= 1
        if not self.closing:
            self.run.error("connection lost")
            asyncio.get_running_loop().call_later(0.5, self.run.connect, self)


class Publisher(Answers):
    """The writer's keep-alive connection: one request at a time, awaited."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: asyncio.Future | None = None

    async def request(self, request: bytes) -> int:
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await asyncio.wait_for(self.answer, 30.0)

    def answered(self, now: float, status: int, head: bytes, body: bytes) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(status)


class Run:
    """One run: the followers, the writer, and per change when it was sent and last received."""

    def __init__(self, args) -> None:
        self.args = args
        url = urlsplit(args.url)
        self.host, self.port = url.hostname, url.port or 80
        self.followers = [Follower(self, source(i, args.clients_per_address)) for i in range(args.clients)]
        self.waiting = 0
        self.asking: list[Follower] = []
        self.errors: dict[str, int] = {}
        self.sent: list[float] = [0.0]  # sent[n]: when change n went out (1-based)
        self.last_at: list[float] = [0.0]  # when the last follower had it so far
        self.latencies: list[float] = []
        self.deliveries = self.duplicates = self.lost = 0
        self.tag = os.urandom(3).hex()
        self.mark = f'"load {self.tag} #'.encode()

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def ask_soon(self, follower: Follower) -> None:
        """Send ``follower``'s next poll once the answers already readable are read,
        as talkserver-load does, so a burst's receive times do not wait behind writes."""
        if not self.asking:
            asyncio.get_running_loop().call_soon(self.ask_all)
        self.asking.append(follower)

    def ask_all(self) -> None:
        asking, self.asking = self.asking, []
        for follower in asking:
            follower.ask()

    def received(self, follower: Follower, n: int, now: float) -> None:
        if n <= follower.last:
            self.duplicates += 1
            return
        self.lost += n - follower.last - 1
        follower.last = n
        self.deliveries += 1
        if n < len(self.sent):
            self.latencies.append((now - self.sent[n]) * 1000.0)
            self.last_at[n] = max(self.last_at[n], now)

    def connect(self, follower: Follower) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        return asyncio.ensure_future(
            loop.create_connection(lambda: follower, self.host, self.port, local_addr=(follower.address, 0))
        )

    async def go(self) -> dict:
        pids = self.args.pid or []
        idle = sum(rss_kb(p) for p in pids)
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)

        async def connect(follower: Follower) -> None:
            async with gate:
                try:
                    await self.connect(follower)
                except OSError as e:
                    self.error(f"connect: {e.strerror or e}")

        await asyncio.gather(*(connect(f) for f in self.followers))
        await self.until(lambda: self.waiting >= len(self.followers), CONNECT_TIMEOUT)
        memory = None
        if pids:
            await asyncio.sleep(1.0)  # let the server park the last polls, as talkserver-load does
            waiting = sum(rss_kb(p) for p in pids)
            memory = {"pid": pids, "idle_rss_kb": idle, "waiting_rss_kb": waiting,
                      "per_client_kb": round((waiting - idle) / len(self.followers), 2)}

        loop = asyncio.get_running_loop()
        publisher = Publisher()
        await loop.create_connection(lambda: publisher, self.host, self.port, local_addr=("127.255.0.1", 0))
        cpu = sum(cpu_seconds(p) for p in pids)
        begun = clock()
        deadline = begun + self.args.duration
        next_at = begun
        while clock() < deadline:
            # Changes come in fours, as talkserver-load's writer makes them (a
            # talk put, commented on twice, deleted), so both make as many.
            for _ in range(4):
                if self.args.spaced:
                    await self.until(lambda: self.waiting >= len(self.followers), 30.0)
                    await asyncio.sleep(self.args.spaced)
                    await self.until_idle(publisher)
                else:
                    next_at += self.args.interval
                    await asyncio.sleep(max(0.0, next_at - clock()))
                await self.publish(publisher)
        write_seconds = clock() - begun
        server_cpu = (sum(cpu_seconds(p) for p in pids) - cpu) / write_seconds * 100 if pids else None
        changes = len(self.sent) - 1
        await self.until(lambda: all(f.last >= changes for f in self.followers), self.args.drain)
        for follower in self.followers:
            follower.closing = True
            if follower.transport is not None:
                follower.transport.close()
            self.lost += changes - follower.last
        publisher.transport.close()
        return self.report(changes, write_seconds, memory, server_cpu)

    async def publish(self, publisher: Publisher) -> None:
        n = len(self.sent)
        body = json.dumps({"serverTime": n, "talks": [{
            "title": f"load {self.tag} #{n}", "presenter": "nchan_load", "summary": f"change {n}", "comments": [],
        }]}).encode()
        request = (b"POST /publish HTTP/1.1\r\nHost: nchan\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.sent.append(clock())
        self.last_at.append(0.0)
        try:
            status = await publisher.request(request)
        except (OSError, asyncio.TimeoutError) as e:
            self.error(f"publish: {e or 'no answer in time'}")
            return
        if status not in (201, 202):
            self.error(f"publish: HTTP {status}")

    async def until_idle(self, publisher: Publisher) -> None:
        """Wait until nchan answers its channel's state at once (the re-polls are read)."""
        deadline = clock() + 30.0
        while clock() < deadline:
            begun = clock()
            await publisher.request(b"GET /publish HTTP/1.1\r\nHost: nchan\r\n\r\n")
            if clock() - begun < IDLE_ANSWER:
                return
            await asyncio.sleep(0.1)

    async def until(self, condition, timeout: float) -> bool:
        deadline = clock() + timeout
        while not condition():
            if clock() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def report(self, changes: int, write_seconds: float, memory: dict | None, server_cpu: float | None) -> dict:
        last = [(self.last_at[n] - self.sent[n]) * 1000.0 for n in range(1, changes + 1) if self.last_at[n]]
        latencies = sorted(self.latencies)

        def percentile(q: float) -> float:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else 0.0

        return {
            "url": self.args.url,
            "server": "nchan",
            "mode": "spaced" if self.args.spaced else "interval",
            "transport": "poll",
            "clients": len(self.followers),
            "writers": 1,
            "duration_s": round(write_seconds, 3),
            "interval_s": self.args.interval,
            "changes": changes,
            "deliveries": self.deliveries,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            # nchan keeps no board: there is no copy to compare (README.md).
            "copies_checked": None,
            "copies_matching": None,
            "fanout_ms": {"p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99),
                          "max": round(latencies[-1], 3) if latencies else 0.0},
            "last_client_ms": {
                "median": round(statistics.median(last), 3) if last else 0.0,
                "min": round(min(last), 3) if last else 0.0,
                "max": round(max(last), 3) if last else 0.0,
                "per_change": [round(ms, 3) for ms in last],
            },
            "server_memory": memory,
            "server_cpu_percent": None if server_cpu is None else round(server_cpu, 1),
        }


def summary(result: dict) -> str:
    last = result["last_client_ms"]
    clean = result["lost"] == result["duplicates"] == result["errors"] == 0
    lines = [
        f"nchan_load: {'clean: nothing lost, doubled or failed' if clean else 'NOT CLEAN: see lost / duplicates / errors'}",
        f"  followers {result['clients']}, changes {result['changes']} in {result['duration_s']:.1f} s, deliveries {result['deliveries']}",
        f"  lost {result['lost']}  duplicates {result['duplicates']}  errors {result['errors']} {result['error_kinds'] or ''}",
        f"  last client ms  median {last['median']:.1f}  min {last['min']:.1f}  max {last['max']:.1f}",
    ]
    if result["server_memory"]:
        lines.append(f"  server memory  {result['server_memory']['per_client_kb']:.2f} KiB per waiting follower")
    if result["server_cpu_percent"] is not None:
        lines.append(f"  server CPU  {result['server_cpu_percent']:.0f} % of one core while writing")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8400", help="nchan (default %(default)s)")
    parser.add_argument("--clients", type=int, default=100, help="long-polling followers (default %(default)s)")
    pace = parser.add_mutually_exclusive_group(required=True)
    pace.add_argument("--interval", type=float, metavar="SECONDS", help="a change every SECONDS by the clock")
    pace.add_argument("--spaced", type=float, metavar="SECONDS", help="a change SECONDS after every follower waits again")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of writing (default %(default)s)")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for the last deliveries (default %(default)s)")
    parser.add_argument("--pid", type=int, action="append", help="a server process to read memory and CPU of (repeatable)")
    parser.add_argument("--clients-per-address", type=int, default=100, metavar="N", help="followers per loopback source address")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="write the results as JSON to FILE")
    args = parser.parse_args()
    for name in ("clients", "duration", "clients_per_address"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    # One descriptor per follower: take the hard limit, as talkserver-load does.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.clients + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # the 'fast' extra, as talkserver-load uses it
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    result = asyncio.run(Run(args).go())
    print(summary(result), flush=True)
    if args.json_path:
        with open(args.json_path, "w") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    sys.exit(0 if result["lost"] == result["duplicates"] == result["errors"] == 0 else 1)


if __name__ == "__main__":
    main()
