"""``talkserver-load``: many long-polling clients and a few writers against one server.

    talkserver-load --url http://127.0.0.1:8000 --clients 1000 --writers 2 \\
        --duration 10 [--rate R] [--transport sse] [--json out.json] [--plot out.png]

A run has four phases.  *Connect*: every client opens a keep-alive
connection, fetches ``GET /talks`` and starts polling, as a browser does
(with ``--transport sse``: opens an event stream, see streams.py).
*Write*: each writer proposes a talk, comments on it twice and deletes it,
over and over, for ``--duration`` seconds.  *Drain*: the writers stop, the
tool fetches ``GET /talks`` and waits (at most ``--drain`` seconds) until
every client's copy equals it.  *Verdict*: deliveries, fan-out latency,
lost and duplicated deliveries and errors (see tally.py for how they
are counted), printed as a table and optionally written as JSON.

``--spaced SECONDS`` is the fan-out benchmark: one writer, one change at a
time, each sent SECONDS after every client is waiting again, so that each
figure is the time one change takes to reach all clients.  ``--interval
SECONDS`` is the same with changes at fixed times by the clock, as real
changes come, whether or not the server has taken the clients' new polls
back.  ``--pid`` reads the server's memory before the clients connect, once
they all wait, and every second of the run.  ``--churn SECONDS`` makes each
client hang up and reconnect about that often, as browsers come and go.
``--host-header`` sends another ``Host`` than the URL's, for a server behind
a proxy; a refusal is reported with the server's own reason.

The exit status is 0 for a clean run, 1 when anything was lost, duplicated
or failed, and 2 for bad arguments or a server that cannot be reached.
See docs/loadtest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from talkserver.loadtest.churn import hang_ups
from talkserver.loadtest.clients import RETRY_BACKOFF, Hub, Poller, ProtocolError, Refused, Target, Writer, clock, fetch_talks, refusal, talk_path
from talkserver.operation.openfiles import raise_open_files_limit
from talkserver.loadtest.streams import Streamer
from talkserver.loadtest.tally import TOKEN, Tally, percentile

# Connections opened at once while connecting: enough to connect 10,000
# clients in a few seconds, few enough not to overflow the server's backlog.
CONNECTS_AT_ONCE = 200
# The longest a writer waits when a 429 asks it to slow down.
MAX_RETRY_AFTER = 5.0
# File descriptors the tool needs beside one per connection.
SPARE_FILES = 64
# How long to wait for all clients to be polling before giving up on the rest.
CONNECT_TIMEOUT = 120.0
# Seconds without one more client waiting, while errors come in, after which
# the run stops waiting for the rest.
CONNECT_STALL = 5.0
# The tally parses answers while the clients are quiet, so that its work
# does not delay the receive times of a burst; a busy run is tallied at
# least this often (seconds).
TALLY_AT_LEAST_EVERY = 1.0
QUIET = 0.05
# --spaced sends a change once a GET /talks is answered within IDLE_ANSWER
# seconds (the server has read every poll), or after IDLE_TIMEOUT anyway.
IDLE_ANSWER = 0.02
IDLE_TIMEOUT = 30.0
# A writer's request unanswered this long counts as an error.
REQUEST_TIMEOUT = 30.0


class Unreachable(Exception):
    """The server could not be reached or does not speak the talks protocol."""


@dataclass
class Plan:
    """What to run, from the command line."""

    host: str
    port: int
    url: str
    clients: int
    writers: int
    duration: float
    rate: float | None
    spaced: float | None
    interval: float | None
    churn: float | None
    drain: float
    pid: int | None
    json_path: str | None
    plot_path: str | None
    loop: str = "auto"
    transport: str = "poll"
    host_header: str | None = None
    clients_per_address: int = 100
    progress: bool = field(default_factory=lambda: sys.stdout.isatty())


# -- the command line ------------------------------------------------------


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def parse_plan(argv: list[str] | None = None) -> Plan:
    """The run described by ``argv``; exits with status 2 and a message if it is wrong."""
    parser = argparse.ArgumentParser(
        prog="talkserver-load",
        description="Drive a talk server with long-polling clients and writers; "
        "report fan-out latency and lost, duplicated or failed deliveries.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument("--host-header", metavar="HOST",
                        help="the Host header to send, for a proxy that routes or checks by name (default: the URL's host:port)")
    parser.add_argument("--clients", type=_positive(int), default=100, help="long-polling clients (default %(default)s)")
    parser.add_argument("--transport", choices=("poll", "sse"), default="poll",
                        help="how clients follow the board: long polls, or server-sent event streams (default %(default)s)")
    parser.add_argument("--writers", type=_count, default=1, help="writers making changes (default %(default)s)")
    parser.add_argument("--duration", type=_positive(float), default=10.0, help="seconds of writing (default %(default)s)")
    parser.add_argument("--rate", type=_positive(float), help="changes per second, all writers together (default: as fast as answered)")
    parser.add_argument("--spaced", type=_positive(float), metavar="SECONDS",
                        help="fan-out benchmark: one change at a time, sent SECONDS after every client waits again")
    parser.add_argument("--interval", type=_positive(float), metavar="SECONDS",
                        help="fan-out at a steady rate: one writer, one change every SECONDS by the clock")
    parser.add_argument("--churn", type=_positive(float), metavar="SECONDS",
                        help="each client hangs up and reconnects (same cursor) about every SECONDS, at random")
    parser.add_argument("--drain", type=_positive(float), default=10.0,
                        help="seconds to wait after writing for clients to catch up (default %(default)s)")
    parser.add_argument("--pid", type=_positive(int), help="the server's process id: report its memory per waiting client, its CPU while writing, and its RSS once a second")
    parser.add_argument("--clients-per-address", type=_count, default=100, metavar="N",
                        help="on a loopback URL, spread clients over 127.0.0.0/8 source addresses, N each, "
                        "and give each writer its own (0: all from one address; default %(default)s)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="the client's event loop; auto takes uvloop when installed (extra 'fast')")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument("--plot", dest="plot_path", metavar="FILE", help="draw the fan-out latency distribution as PNG (extra 'plot')")
    args = parser.parse_args(argv)

    url = urlsplit(args.url)
    try:
        port = url.port or 80
    except ValueError:
        parser.error(f"--url {args.url}: the port is not a number")
    if url.scheme != "http" or not url.hostname:
        parser.error(f"--url {args.url}: give an http:// URL such as http://127.0.0.1:8000")
    if url.path not in ("", "/") or url.query:
        parser.error(f"--url {args.url}: give the server's root, without a path")
    if args.host_header is not None and not re.fullmatch(r"[!-~]+", args.host_header):
        parser.error(f"--host-header {args.host_header!r}: give a host name such as talks.example.org (ASCII, no spaces)")
    if args.spaced and args.writers != 1:
        parser.error("--spaced measures one change at a time: use it with --writers 1")
    if args.spaced and args.rate:
        parser.error("--spaced and --rate do not go together: --spaced sets the pace")
    if args.interval and args.writers != 1:
        parser.error("--interval makes one change at a time: use it with --writers 1")
    if args.interval and (args.rate or args.spaced):
        parser.error("--interval sets the pace: do not combine it with --rate or --spaced")
    needed = args.clients + args.writers + SPARE_FILES
    limit = raise_open_files_limit()
    if needed > limit:
        parser.error(f"--clients {args.clients} needs {needed} open files, more than the limit {limit} (ulimit -Hn)")
    if args.pid and not os.path.exists(f"/proc/{args.pid}/status"):
        parser.error(f"--pid {args.pid}: no such process")
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("--loop uvloop needs uvloop: pip install 'talkserver[fast]'")
    for option, path in (("--json", args.json_path), ("--plot", args.plot_path)):
        # Found out now, not after a run of many minutes.
        if path and not os.path.isdir(os.path.dirname(path) or "."):
            parser.error(f"{option} {path}: the directory {os.path.dirname(path)} does not exist")
    if args.plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'talkserver[plot]'")
    return Plan(
        host=url.hostname, port=port, url=f"http://{url.netloc}", clients=args.clients,
        writers=args.writers, duration=args.duration, rate=args.rate, spaced=args.spaced,
        interval=args.interval, churn=args.churn,
        drain=args.drain, pid=args.pid, json_path=args.json_path, plot_path=args.plot_path,
        loop=args.loop, clients_per_address=args.clients_per_address, transport=args.transport,
        host_header=args.host_header,
    )


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


# -- the run ---------------------------------------------------------------


class Run:
    """One load run: the pollers, the writers and the tally between them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.target = Target(plan.host, plan.port, plan.clients_per_address, plan.host_header)
        self.hub = Hub(self.target)
        self.tally = Tally()
        client = Streamer if plan.transport == "sse" else Poller
        self.pollers = [client(self.target, self.hub, self.target.poller_source(i)) for i in range(plan.clients)]
        self.throttled = 0
        self.tag = secrets.token_hex(3)
        self.phase = "connect"
        self.started = clock()
        # When the run began, for the plot's title and the JSON.
        self.started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.write_seconds = 0.0
        self.memory: dict | None = None
        self.server_cpu: float | None = None
        self.copies_matching = 0
        self.event_loop = "asyncio"
        # --interval: how far behind its schedule the writer fell at worst
        # (a write answered later than the next change was due).
        self.slip = 0.0
        # --pid: (seconds since start, server RSS KiB), once a second.
        self.rss: list[tuple[float, int]] = []

    async def go(self) -> None:
        try:
            await fetch_talks(self.target, timeout=5.0)
        except (OSError, asyncio.TimeoutError) as e:
            raise Unreachable(f"cannot reach {self.plan.url}: {getattr(e, 'strerror', None) or e or 'timed out'}") from None
        except Refused as e:
            raise Unreachable(f"{self.plan.url} refused: {e}") from None
        except ProtocolError as e:
            raise Unreachable(f"{self.plan.url} does not answer like a talk server: {e}") from None
        idle = rss_kb(self.plan.pid) if self.plan.pid else None

        tasks = [asyncio.ensure_future(self._tally_loop())]
        if self.plan.progress:
            tasks.append(asyncio.ensure_future(self._progress_loop()))
        if self.plan.pid:
            tasks.append(asyncio.ensure_future(self._rss_loop()))
        try:
            await self._connect()
            if self.plan.pid:
                await asyncio.sleep(1.0)  # let the server park the last polls
                waiting = rss_kb(self.plan.pid)
                self.memory = {
                    "pid": self.plan.pid, "idle_rss_kb": idle, "waiting_rss_kb": waiting,
                    "per_client_kb": round((waiting - idle) / self.plan.clients, 2),
                }
            self.phase = "write"
            begun = clock()
            cpu = cpu_seconds(self.plan.pid) if self.plan.pid else None
            churn = asyncio.ensure_future(hang_ups(self.pollers, self.plan.churn)) if self.plan.churn else None
            try:
                await self._write()
            finally:
                if churn is not None:
                    churn.cancel()
            self.write_seconds = clock() - begun
            if cpu is not None:
                # The server's share of one core while the writers wrote.
                self.server_cpu = (cpu_seconds(self.plan.pid) - cpu) / self.write_seconds * 100
            self.phase = "drain"
            await self._drain()
        finally:
            for task in tasks:
                task.cancel()
            for poller in self.pollers:
                poller.close()
            self._tally_now()
            if self.plan.progress:
                print("\r" + " " * 100 + "\r", end="", flush=True)

    async def _connect(self) -> None:
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)

        async def connect(poller: Poller) -> None:
            async with gate:
                try:
                    await self.target.connect(poller)
                except OSError as e:
                    self.hub.error(f"connect: {e.strerror or e}")
                    asyncio.get_running_loop().call_later(0.5, self.hub.reconnect, poller)

        await asyncio.gather(*(connect(p) for p in self.pollers))
        # Every client waiting, or give up: at the time limit, or sooner when
        # the count has stopped growing while the server refuses some
        # (a per-address limit, say); those errors are in the results.
        # (Refused clients retrying make the count bob up and down, so
        # progress means a new highest count.)
        deadline = clock() + CONNECT_TIMEOUT
        best, best_at = -1, clock()
        while self.hub.waiting < len(self.pollers) and clock() < deadline:
            if self.hub.waiting > best:
                best, best_at = self.hub.waiting, clock()
            elif self.hub.errors and clock() - best_at > CONNECT_STALL:
                break
            await asyncio.sleep(0.02)

    async def _until(self, condition, timeout: float, step: float = 0.02) -> bool:
        deadline = clock() + timeout
        while not condition():
            if clock() > deadline:
                return False
            await asyncio.sleep(step)
        return True

    async def _write(self) -> None:
        deadline = clock() + self.plan.duration
        period = None
        if self.plan.rate:
            period = self.plan.writers / self.plan.rate
        elif self.plan.interval:
            period = self.plan.interval
        writers = [Writer(self.target, self.target.writer_source(n)) for n in range(self.plan.writers)]
        if not writers:
            await asyncio.sleep(self.plan.duration)  # only watch
        try:
            await asyncio.gather(*(self._write_loop(n, w, deadline, period) for n, w in enumerate(writers)))
        finally:
            for writer in writers:
                writer.close()

    async def _write_loop(self, n: int, writer: Writer, deadline: float, period: float | None) -> None:
        """Propose a talk, comment on it twice, delete it; again until the deadline."""
        round_ = 0
        next_at = clock()
        while clock() < deadline:
            title = f"load {self.tag} w{n} #{round_}"
            round_ += 1
            for step in ("put", "comment", "comment", "delete"):
                if self.plan.spaced:
                    await self._until(lambda: self.hub.waiting >= len(self.pollers), 30.0)
                    await asyncio.sleep(self.plan.spaced)
                    await self._until_idle()
                elif period:
                    # By the clock: a change that is due goes out at once,
                    # however long the previous one took to be answered.
                    next_at += period
                    await asyncio.sleep(max(0.0, next_at - clock()))
                    self.slip = max(self.slip, clock() - next_at)
                if clock() >= deadline and step == "put":
                    return
                if not await self._change(writer, title, step):
                    # The rest of this talk's steps would fail too; pause so
                    # a refusing server is not hammered.
                    await asyncio.sleep(RETRY_BACKOFF)
                    break

    async def _until_idle(self) -> None:
        """Wait until the server answers a ``GET /talks`` promptly again.

        The clients' polls may be sent but not yet read: a server that is
        still working through them would add that backlog to the next
        change's fan-out time.
        """
        probe = Writer(self.target)
        try:
            deadline = clock() + IDLE_TIMEOUT
            while clock() < deadline:
                begun = clock()
                await asyncio.wait_for(probe.request("GET", "/talks"), REQUEST_TIMEOUT)
                if clock() - begun < IDLE_ANSWER:
                    return
                await asyncio.sleep(0.1)
        except (OSError, ConnectionError, asyncio.TimeoutError) as e:
            self.hub.error(f"idle probe: {e or 'no answer in time'}")
        finally:
            probe.close()

    async def _change(self, writer: Writer, title: str, step: str) -> bool:
        """Make one change; a 429 is waited out as its Retry-After says, then sent again."""
        while True:
            cid = self.tally.change(title, clock(), deletes=step == "delete")
            text = f"{TOKEN}{cid}"
            if step == "put":
                request = ("PUT", talk_path(title), {"presenter": "talkserver-load", "summary": text})
            elif step == "comment":
                request = ("POST", talk_path(title, comments=True), {"author": "talkserver-load", "message": text})
            else:
                request = ("DELETE", talk_path(title), None)
            try:
                status, body, retry_after = await asyncio.wait_for(writer.request(*request), REQUEST_TIMEOUT)
            except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                writer.close()  # a late answer must not be taken for the next request's
                self.tally.refuse(cid)
                self.hub.error(f"writer: {e or 'no answer in time'}")
                return False
            if status == 429:
                # The server's write limit: a polite client waits, as told.
                self.tally.refuse(cid)
                self.throttled += 1
                await asyncio.sleep(min(retry_after or 1.0, MAX_RETRY_AFTER))
                continue
            if not 200 <= status < 300:
                self.tally.refuse(cid)
                # One error kind per refusal, not per talk: the title is taken out.
                self.hub.error(f"{request[0]} {refusal(status, body).replace(title, '…')}")
                return False
            return True

    async def _drain(self) -> None:
        try:
            final = {talk["title"]: talk for talk in await fetch_talks(self.target)}
        except (OSError, asyncio.TimeoutError, ProtocolError) as e:
            self.hub.error(f"final GET /talks: {e}")
            return

        def caught_up() -> bool:
            self._tally_now()
            self.copies_matching = sum(1 for p in self.pollers if p.copy == final)
            return self.copies_matching == len(self.pollers)

        await self._until(caught_up, self.plan.drain, step=0.1)

    def _tally_now(self) -> None:
        inbox, self.hub.inbox = self.hub.inbox, []
        self.tally.absorb(inbox)

    async def _tally_loop(self) -> None:
        while True:
            await asyncio.sleep(QUIET)
            inbox = self.hub.inbox
            if inbox and (clock() - inbox[-1][1] > QUIET or clock() - inbox[0][1] > TALLY_AT_LEAST_EVERY):
                self._tally_now()

    async def _rss_loop(self) -> None:
        while True:
            try:
                self.rss.append((round(clock() - self.started, 1), rss_kb(self.plan.pid)))
            except (OSError, ProcessLookupError):
                return  # the server has gone; the verdict shows the errors
            await asyncio.sleep(1.0)

    async def _progress_loop(self) -> None:
        before, then = 0, clock()
        while True:
            await asyncio.sleep(1.0)
            now = clock()
            window = sorted(self.tally.take_window())
            rate = (self.tally.deliveries - before) / (now - then)
            before, then = self.tally.deliveries, now
            print(
                f"\r{self.phase:8} {now - self.started:6.1f} s  connected {self.hub.connected}/{len(self.pollers)}"
                f"  changes {self.tally.changes}  deliveries/s {rate:9.0f}  p99 {percentile(window, 0.99):7.1f} ms ",
                end="", flush=True,
            )

    # -- the verdict -------------------------------------------------------

    def report(self) -> dict:
        """The results, in the shape ``--json`` writes."""
        latencies = sorted(self.tally.latencies_ms)
        last = self.tally.last_client_ms()
        errors = sum(self.hub.errors.values()) + self.tally.bad_answers
        result = {
            "url": self.plan.url,
            "host_header": self.plan.host_header,
            "started": self.started_at,
            "mode": "spaced" if self.plan.spaced else "interval" if self.plan.interval else "load",
            "transport": self.plan.transport,
            "clients": self.plan.clients,
            "writers": self.plan.writers,
            "duration_s": round(self.write_seconds, 3),
            "rate": self.plan.rate,
            "interval_s": self.plan.interval,
            "churn_s": self.plan.churn,
            "changes": self.tally.changes,
            "deliveries": self.tally.deliveries,
            "deliveries_per_s": round(self.tally.deliveries / self.write_seconds, 1) if self.write_seconds else 0.0,
            "lost": self.tally.lost(self.pollers),
            "duplicates": self.tally.duplicates,
            "errors": errors,
            "throttled": self.throttled,
            "error_kinds": dict(self.hub.errors, **({"unreadable answers": self.tally.bad_answers} if self.tally.bad_answers else {})),
            "reconnects": self.hub.reconnects,
            "hang_ups": self.hub.hang_ups,
            "copies_checked": len(self.pollers),
            "copies_matching": self.copies_matching,
            "fanout_ms": {
                "p50": round(percentile(latencies, 0.5), 3),
                "p90": round(percentile(latencies, 0.9), 3),
                "p99": round(percentile(latencies, 0.99), 3),
                "max": round(latencies[-1], 3) if latencies else 0.0,
            },
            "last_client_ms": {
                "median": round(statistics.median(last), 3) if last else 0.0,
                "min": round(min(last), 3) if last else 0.0,
                "max": round(max(last), 3) if last else 0.0,
                "per_change": [round(ms, 3) for ms in last] if self.plan.spaced or self.plan.interval else None,
            },
            "schedule_slip_ms": round(self.slip * 1000.0, 1) if self.plan.interval else None,
            "server_memory": self.memory,
            "server_cpu_percent": None if self.server_cpu is None else round(self.server_cpu, 1),
            "server_rss_kb": [[t, kb] for t, kb in self.rss] if self.plan.pid else None,
            "event_loop": self.event_loop,
        }
        return result


def clean(result: dict) -> bool:
    """Whether a run lost, doubled and failed nothing and every copy matched."""
    return (
        result["lost"] == 0 and result["duplicates"] == 0 and result["errors"] == 0
        and result["copies_matching"] == result["copies_checked"]
    )


def summary(result: dict) -> str:
    """The results as a table for people."""
    f = result["fanout_ms"]
    last = result["last_client_ms"]
    pace = f"{result['rate']:g} changes/s" if result["rate"] else "as fast as answered"
    if result["mode"] == "spaced":
        pace = "one change at a time (--spaced)"
    elif result["mode"] == "interval":
        pace = f"a change every {result['interval_s']:g} s by the clock (--interval; at worst {result['schedule_slip_ms']:.0f} ms late)"
    host = f" as Host: {result['host_header']}" if result.get("host_header") else ""
    rows = [
        ("server", f"{result['url']}{host}  (client loop: {result['event_loop']})"),
        ("clients", f"{result['clients']} ({'event streams' if result['transport'] == 'sse' else 'long polls'})"),
        ("writers", f"{result['writers']} for {result['duration_s']:.1f} s, {pace}"),
        ("changes", f"{result['changes']}"),
        ("deliveries", f"{result['deliveries']}  ({result['deliveries_per_s']:.0f} per s)"),
        ("lost", f"{result['lost']}"),
        ("duplicates", f"{result['duplicates']}"),
        ("errors", f"{result['errors']}" + "".join(f"  [{k}: {v}]" for k, v in result["error_kinds"].items())),
        ("throttled (429, retried)", f"{result['throttled']}"),
        ("reconnects", f"{result['reconnects']}" + (f"  ({result['hang_ups']} hang-ups, --churn {result['churn_s']:g} s)" if result["churn_s"] else "")),
        ("copies = GET /talks", f"{result['copies_matching']} of {result['copies_checked']}"),
        ("fan-out ms", f"p50 {f['p50']:.1f}   p90 {f['p90']:.1f}   p99 {f['p99']:.1f}   max {f['max']:.1f}"),
        ("last client ms", f"median {last['median']:.1f}   min {last['min']:.1f}   max {last['max']:.1f}  (per change)"),
    ]
    memory = result["server_memory"]
    if memory:
        rows.append((
            "server memory",
            f"idle {memory['idle_rss_kb'] / 1024:.1f} MiB, {result['clients']} waiting "
            f"{memory['waiting_rss_kb'] / 1024:.1f} MiB: {memory['per_client_kb']:.2f} KiB per client",
        ))
    if result.get("server_cpu_percent") is not None:
        rows.append(("server CPU", f"{result['server_cpu_percent']:.0f} % of one core while writing"))
    rss = result["server_rss_kb"]
    if rss:
        rows.append((
            "server RSS over the run",
            f"first {rss[0][1] / 1024:.1f} MiB, highest {max(kb for _, kb in rss) / 1024:.1f} MiB, "
            f"last {rss[-1][1] / 1024:.1f} MiB ({len(rss)} samples, one a second)",
        ))
    width = max(len(name) for name, _ in rows)
    verdict = "clean: nothing lost, doubled or failed" if clean(result) else "NOT CLEAN: see lost / duplicates / errors / copies"
    return "\n".join([f"talkserver-load: {verdict}"] + [f"  {name:<{width}}  {value}" for name, value in rows])


def plot_title(result: dict) -> str:
    """What run a plot shows: clients, transport, pace, server and date."""
    follow = "event streams" if result["transport"] == "sse" else "long polls"
    if result["mode"] == "spaced":
        pace = "one change at a time"
    elif result["mode"] == "interval":
        pace = f"a change every {result['interval_s']:g} s"
    else:
        pace = f"{result['writers']} writers, {result['rate']:g} changes/s" if result["rate"] else f"{result['writers']} writers"
    host = f" (Host: {result['host_header']})" if result.get("host_header") else ""
    return (
        f"talkserver-load: {result['clients']:,} clients on {follow}, {pace}\n"
        f"{result['url']}{host}, {result['started']}"
    )


def plot(latencies_ms, last_client_ms: list[float], path: str, title: str = "") -> None:
    """Draw the fan-out latency distribution (and per-change last-client times)
    to a PNG, under ``title`` (see plot_title)."""
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver-load`` console script."""
    plan = parse_plan(argv)
    run = Run(plan)
    try:
        run.event_loop = _run_loop(run.go(), plan.loop)
    except Unreachable as e:
        print(f"talkserver-load: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ntalkserver-load: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    result = run.report()
    try:
        print(summary(result), flush=True)
    except BrokenPipeError:
        # Piped into head, say: the reader has what it wanted.  Python's
        # advice: point stdout at /dev/null so the exit's flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if plan.json_path:
        with open(plan.json_path, "w") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    if plan.plot_path:
        plot(run.tally.latencies_ms, run.tally.last_client_ms(), plan.plot_path, plot_title(result))
    raise SystemExit(0 if clean(result) else 1)


def _run_loop(coroutine, loop: str) -> str:
    """Run ``coroutine`` on the chosen event loop; returns the loop's name."""
    # uvloop (the 'fast' extra) costs the client less per answer, which
    # matters when one process must keep up with 10,000 clients.
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            try:
                asyncio.run(coroutine)
            finally:
                asyncio.set_event_loop_policy(None)
            return "uvloop"
    asyncio.run(coroutine)
    return "asyncio"

