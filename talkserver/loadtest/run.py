"""The phases of one load run: connect, write, drain.

*Connect*: every client opens a keep-alive connection, fetches
``GET /talks`` and starts following (crowd.py), and the run waits until all
of them wait.  *Write*: each writer proposes a talk, comments on it twice
and deletes it, over and over, for ``--duration`` seconds (as fast as
answered, at ``--rate``, ``--spaced`` or by the clock with ``--interval``),
registering each change in the change log before sending it.  *Drain*: the
writers stop, the run fetches ``GET /talks`` and waits until every client's
copy equals it.  The verdict is then built by report.py from the change log
and the followers' outcome.

The followers are a ``Crowd`` in this process, or with ``--workers`` a
``Workers`` (workers.py) with the same methods over several processes; the
writers, the progress line and the server's figures (``--pid``) stay here.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from talkserver.loadtest.clients import RETRY_BACKOFF, ProtocolError, Refused, Target, Writer, clock, fetch_talks, refusal, talk_path
from talkserver.loadtest.tally import TOKEN, ChangeLog, percentile

# The longest a writer waits when a 429 asks it to slow down.
MAX_RETRY_AFTER = 5.0
# How long to wait for all clients to be polling before giving up on the rest.
CONNECT_TIMEOUT = 120.0
# Seconds without one more client waiting, while errors come in, after which
# the run stops waiting for the rest.
CONNECT_STALL = 5.0
# The final board is read until two reads this far apart agree (_drain).
SETTLE_SECONDS = 0.2
SETTLE_READS = 10
# --spaced sends a change once a GET /talks is answered within IDLE_ANSWER
# seconds (the server has read every poll), or after IDLE_TIMEOUT anyway.
IDLE_ANSWER = 0.02
IDLE_TIMEOUT = 30.0
# A writer's request unanswered this long counts as an error.
REQUEST_TIMEOUT = 30.0
# The progress line's deliveries per second are counted over this many
# seconds: the tally counts in batches, so a one-second count would show 0
# and then a burst.
RATE_WINDOW = 3.0


class Unreachable(Exception):
    """The server could not be reached or does not speak the talks protocol."""


@dataclass
class Plan:
    """What to run, from the command line (cli.py)."""

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
    workers: int = 1
    user: str | None = None
    # The Authorization header's value: kept out of repr, so no message shows it.
    authorization: str | None = field(default=None, repr=False)
    progress: bool = field(default_factory=lambda: sys.stdout.isatty())

    def target(self) -> Target:
        """Where the requests go, with their bytes built once."""
        return Target(self.host, self.port, self.clients_per_address, self.host_header, self.authorization)


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


class Run:
    """One load run: the followers, the writers and the change log between them.

    ``followers`` is made by ``followers(target, log)`` once the server has
    answered: a Crowd, or Workers.
    """

    def __init__(self, plan: Plan, followers) -> None:
        self.plan = plan
        self.target = plan.target()
        self.log = ChangeLog()
        self._make_followers = followers
        self.followers = None
        self.throttled = 0
        self.tag = secrets.token_hex(3)
        self.phase = "connect"
        self.started = clock()
        # When the run began, for the plot's title and the JSON.
        self.started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.write_seconds = 0.0
        self.memory: dict | None = None
        self.server_cpu: float | None = None
        self.event_loop = "asyncio"
        # --interval: how far behind its schedule the writer fell at worst
        # (a write answered later than the next change was due).
        self.slip = 0.0
        # --pid: (seconds since start, server RSS KiB), once a second.
        self.rss: list[tuple[float, int]] = []
        # The followers' outcome (see Crowd.outcome), once the run is over.
        self.outcome: dict | None = None

    async def go(self) -> None:
        """Run every phase; the outcome is in ``self.outcome`` afterwards."""
        try:
            await fetch_talks(self.target, timeout=5.0)
        except (OSError, asyncio.TimeoutError) as e:
            raise Unreachable(f"cannot reach {self.plan.url}: {getattr(e, 'strerror', None) or e or 'timed out'}") from None
        except Refused as e:
            hint = ""
            if " 401" in str(e):
                hint = " (check --user and its password)" if self.plan.user else " (give --user NAME)"
            raise Unreachable(f"{self.plan.url} refused: {e}{hint}") from None
        except ProtocolError as e:
            raise Unreachable(f"{self.plan.url} does not answer like a talk server: {e}") from None
        idle = rss_kb(self.plan.pid) if self.plan.pid else None
        self.followers = followers = await self._make_followers(self.target, self.log)

        tasks = []
        if self.plan.progress:
            tasks.append(asyncio.ensure_future(self._progress_loop()))
        if self.plan.pid:
            tasks.append(asyncio.ensure_future(self._rss_loop()))
        final = None
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
            followers.churn(self.plan.churn)
            try:
                await self._write()
            finally:
                followers.churn(None)
            self.write_seconds = clock() - begun
            if cpu is not None:
                # The server's share of one core while the writers wrote.
                self.server_cpu = (cpu_seconds(self.plan.pid) - cpu) / self.write_seconds * 100
            self.phase = "drain"
            final = await self._drain()
        finally:
            for task in tasks:
                task.cancel()
            self.outcome = await followers.finish(final)
            if self.plan.progress:
                print("\r" + " " * 120 + "\r", end="", flush=True)

    async def _connect(self) -> None:
        followers = self.followers
        await followers.connect()
        # Every client waiting, or give up: at the time limit, or sooner when
        # the count has stopped growing while the server refuses some
        # (a per-address limit, say); those errors are in the results.
        # (Refused clients retrying make the count bob up and down, so
        # progress means a new highest count.)
        deadline = clock() + CONNECT_TIMEOUT
        best, best_at = -1, clock()
        while followers.waiting < followers.size and clock() < deadline:
            if followers.waiting > best:
                best, best_at = followers.waiting, clock()
            elif followers.errors and clock() - best_at > CONNECT_STALL:
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
        followers = self.followers
        while clock() < deadline:
            title = f"load {self.tag} w{n} #{round_}"
            round_ += 1
            for step in ("put", "comment", "comment", "delete"):
                if self.plan.spaced:
                    await self._until(lambda: followers.waiting >= followers.size, 30.0)
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
            self.error(f"idle probe: {e or 'no answer in time'}")
        finally:
            probe.close()

    def error(self, kind: str) -> None:
        """Count an error of the writers' side with the followers' errors."""
        self.followers.error(kind)

    async def _change(self, writer: Writer, title: str, step: str) -> bool:
        """Make one change; a 429 is waited out as its Retry-After says, then sent again."""
        while True:
            cid = self.log.change(title, clock(), deletes=step == "delete")
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
                self.log.refuse(cid)
                self.error(f"writer: {e or 'no answer in time'}")
                return False
            if status == 429:
                # The server's write limit: a polite client waits, as told.
                self.log.refuse(cid)
                self.throttled += 1
                await asyncio.sleep(min(retry_after or 1.0, MAX_RETRY_AFTER))
                continue
            if not 200 <= status < 300:
                self.log.refuse(cid)
                # One error kind per refusal, not per talk: the title is taken out.
                self.error(f"{request[0]} {refusal(status, body).replace(title, '…')}")
                return False
            return True

    async def _drain(self) -> dict | None:
        """Wait for every copy to equal the server's board; returns the board by title.

        The board is read until two reads SETTLE_SECONDS apart agree: with
        ``--processes`` each read may reach another process, and one that
        has not yet applied the last change answers an older board than the
        clients hold (nothing was lost; the reference was early).
        """
        try:
            final = None
            for _ in range(SETTLE_READS):
                board = {talk["title"]: talk for talk in await fetch_talks(self.target)}
                if board == final:
                    break
                final = board
                await asyncio.sleep(SETTLE_SECONDS)
        except (OSError, asyncio.TimeoutError, ProtocolError) as e:
            self.error(f"final GET /talks: {e}")
            return None
        await self.followers.drain(final, self.plan.drain)
        return final

    async def _rss_loop(self) -> None:
        while True:
            try:
                self.rss.append((round(clock() - self.started, 1), rss_kb(self.plan.pid)))
            except (OSError, ProcessLookupError):
                return  # the server has gone; the verdict shows the errors
            await asyncio.sleep(1.0)

    async def _progress_loop(self) -> None:
        followers = self.followers
        counts: deque[tuple[float, int]] = deque([(clock(), 0)])
        while True:
            await asyncio.sleep(1.0)
            now = clock()
            counts.append((now, followers.deliveries))
            while now - counts[0][0] > RATE_WINDOW:
                counts.popleft()
            then, before = counts[0]
            rate = (counts[-1][1] - before) / (now - then) if now > then else 0.0
            window = sorted(followers.take_window())
            if self.phase == "drain":
                clients = f"copies = GET /talks {followers.matching}/{followers.size}"
            else:
                clients = f"connected {followers.connected}/{followers.size}"
            print(
                f"\r{self.phase:8} {now - self.started:6.1f} s  {clients}  changes {self.log.changes}"
                f"  deliveries/s {rate:9.0f}  p99 {percentile(window, 0.99):7.1f} ms ",
                end="", flush=True,
            )


def run_on_loop(coroutine, loop: str) -> str:
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

