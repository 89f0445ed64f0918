"""``--workers N``: the clients of one run held by N processes, one verdict.

One process can hold only as many connections as its open-files limit (and
one core's worth of answers); with ``--workers N`` the run's clients are
split into N contiguous shares, each held by a ``Crowd`` in a process of
its own, with the same source addresses it would have in one process.  The
writers, the progress line and the verdict stay in the parent, which talks
to its workers over one socket pair each (length-prefixed pickles read and
written by the event loop, so a large message never blocks it):

- parent to worker: ``connect``; the change log's new events with the
  clock time up to which the log is complete (``log``, every
  ``LOG_EVERY`` s: a worker tallies an answer only once it knows every
  change that answer could hold, see tally.ChangeLog); ``churn``;
  ``drain`` with the server's final board; ``finish``;
- worker to parent: ``ready``; ``status`` every ``STATUS_EVERY`` s
  (connected, waiting, errors, deliveries, copies matching, and the
  latencies tallied since the last one, for the progress line); ``drained``;
  at the end its ``outcome``, which tally.merge adds to the others', so the
  percentiles are over all deliveries of all workers.

``time.perf_counter`` is the system's monotonic clock on Linux, the same in
every process, so a worker's receive times and the parent's send times
measure one latency.  Workers are started with multiprocessing's *spawn*,
so none inherits the parent's running event loop.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import signal
import socket

from talkserver.loadtest.clients import clock
from talkserver.loadtest.crowd import Crowd
from talkserver.loadtest.run import Plan, run_on_loop
from talkserver.loadtest.tally import ChangeLog, merge

# How often the parent sends the change log's new events (and how stale
# the log a worker tallies against may be).
LOG_EVERY = 0.02
# How often a worker reports its counts.
STATUS_EVERY = 0.05
# How long the parent waits for a worker to start, or to send its outcome.
START_TIMEOUT = 60.0
FINISH_TIMEOUT = 120.0


class Channel:
    """Messages (pickled tuples) over a socket between the parent and a worker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, sock: socket.socket) -> "Channel":
        """A channel over ``sock``, read and written by the running loop."""
        return cls(*await asyncio.open_connection(sock=sock))

    def send(self, message: tuple) -> None:
        """Queue ``message``; the event loop writes it."""
        if self._writer.is_closing():
            return  # the other side has gone; its reader has noticed
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self._writer.write(len(data).to_bytes(8, "big") + data)

    async def receive(self) -> tuple | None:
        """The next message; None when the other side has gone."""
        try:
            size = int.from_bytes(await self._reader.readexactly(8), "big")
            return pickle.loads(await self._reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def close(self) -> None:
        """Write what is queued, then hang up, and return once the socket is
        closed: ``drain`` returns with up to the buffer's low-water mark still
        queued, and a worker whose loop ended before that went out would lose
        the end of its last message."""
        try:
            await self._writer.drain()
        except ConnectionError:
            pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass


def shares(clients: int, workers: int) -> list[range]:
    """Client numbers for each worker: contiguous, sizes differing by at most one."""
    size, extra = divmod(clients, workers)
    ranges, first = [], 0
    for n in range(workers):
        count = size + (n < extra)
        ranges.append(range(first, first + count))
        first += count
    return ranges


class Workers:
    """A run's followers in worker processes; offers what a Crowd offers."""

    def __init__(self, plan: Plan, log: ChangeLog) -> None:
        self.plan = plan
        self.log = log
        log.journal = []
        self.size = plan.clients
        self._context = multiprocessing.get_context("spawn")
        self._channels: list[Channel] = []
        self._readers: list[asyncio.Task] = []
        self._processes = []
        self._status: list[tuple] = []
        self._window: list[float] = []
        self._replies: list[asyncio.Queue] = []
        self._errors: dict[str, int] = {}
        self._flusher: asyncio.Task | None = None

    @classmethod
    async def start(cls, plan: Plan, log: ChangeLog) -> "Workers":
        """Start a worker per share of the clients; returns once all are ready."""
        workers = cls(plan, log)
        for n, indices in enumerate(shares(plan.clients, plan.workers)):
            ours, theirs = socket.socketpair()
            process = workers._context.Process(
                target=_worker, args=(theirs, plan, indices), name=f"talkserver-load worker {n}", daemon=True,
            )
            process.start()
            theirs.close()
            workers._channels.append(await Channel.open(ours))
            workers._processes.append(process)
            workers._status.append((0, 0, 0, 0, 0))
            workers._replies.append(asyncio.Queue())
            workers._readers.append(asyncio.ensure_future(workers._receive(n)))
        await workers._all("ready", START_TIMEOUT)
        workers._flusher = asyncio.ensure_future(workers._flush_loop())
        return workers

    # -- counts, summed over the workers -------------------------------------

    @property
    def connected(self) -> int:
        """Clients with an open connection, in every worker (as last reported)."""
        return sum(s[0] for s in self._status)

    @property
    def waiting(self) -> int:
        """Clients the server holds for the next change, in every worker."""
        return sum(s[1] for s in self._status)

    @property
    def errors(self) -> int:
        """Errors so far: the workers' and the parent's own."""
        return sum(s[2] for s in self._status) + sum(self._errors.values())

    @property
    def deliveries(self) -> int:
        """Deliveries the workers have tallied so far."""
        return sum(s[3] for s in self._status)

    @property
    def matching(self) -> int:
        """While draining: copies equal to the server's board, in every worker."""
        return sum(s[4] for s in self._status)

    def take_window(self) -> list[float]:
        """Latencies the workers reported since the last call."""
        window, self._window = self._window, []
        return window

    def error(self, kind: str) -> None:
        """Count an error of the parent's (the writers')."""
        self._errors[kind] = self._errors.get(kind, 0) + 1

    # -- the phases ----------------------------------------------------------

    async def connect(self) -> None:
        """Tell every worker to open its clients' connections."""
        self._send_all(("connect",))

    def churn(self, every: float | None) -> None:
        """Start (``every`` seconds) or stop (None) hang-ups in every worker."""
        self._send_all(("churn", every))

    async def drain(self, final: dict, timeout: float) -> int:
        """Every worker waits for its copies to equal ``final``; returns how many do."""
        self._flush()
        self._send_all(("drain", final, timeout))
        return sum(await self._all("drained", timeout + FINISH_TIMEOUT))

    async def finish(self, final: dict | None) -> dict:
        """Collect every worker's outcome, merged, and stop the workers."""
        if self._flusher is not None:
            self._flusher.cancel()
        self._flush()
        self._send_all(("finish", final))
        try:
            outcomes = await self._all("outcome", FINISH_TIMEOUT)
        finally:
            await self._stop()
        merged = merge(outcomes + [{"error_kinds": self._errors}])
        for key in ("deliveries", "duplicates", "bad_answers", "lost", "reconnects", "hang_ups", "copies_matching"):
            merged.setdefault(key, 0)
        # Every client is checked: a worker that never reported counts as
        # its clients' copies not matching.
        merged["copies_checked"] = self.size
        return merged

    # -- the channels--------------------------------------------------------

    def _send_all(self, message: tuple) -> None:
        for channel in self._channels:
            channel.send(message)

    def _flush(self) -> None:
        """Send the change log's new events, complete up to now."""
        now = clock()
        events, self.log.journal = self.log.journal, []
        self._send_all(("log", events, now))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(LOG_EVERY)
            self._flush()

    async def _receive(self, n: int) -> None:
        """Read worker ``n``'s messages: counts kept, replies queued."""
        while True:
            message = await self._channels[n].receive()
            if message is None:
                self._replies[n].put_nowait(("gone", None))
                return
            if message[0] == "status":
                self._status[n] = message[1]
                self._window.extend(message[2])
            else:
                self._replies[n].put_nowait(message)

    async def _all(self, kind: str, timeout: float) -> list:
        """The ``kind`` reply of every worker (a worker gone or late adds nothing)."""
        answers = []
        for n, replies in enumerate(self._replies):
            try:
                while True:
                    message = await asyncio.wait_for(replies.get(), timeout)
                    if message[0] in (kind, "gone"):
                        break
            except asyncio.TimeoutError:
                self.error(f"worker {n} did not answer {kind} in time")
                continue
            if message[0] == kind:
                answers.append(message[1])
            else:
                self.error(f"worker {n} ended before its {kind}{self._exit_status(n)}")
                replies.put_nowait(message)  # gone stays gone
        return answers

    def _exit_status(self, n: int) -> str:
        """How worker ``n``'s process ended (or that it still runs), for an error line."""
        process = self._processes[n]
        process.join(1)
        code = process.exitcode
        if code is None:
            return " (its process still runs; its channel closed)"
        return f" (its process exited with {code})" if code >= 0 else f" (its process was killed by signal {-code})"

    async def _stop(self) -> None:
        for channel in self._channels:
            await channel.close()
        for reader in self._readers:
            reader.cancel()
        for process in self._processes:
            await asyncio.get_running_loop().run_in_executor(None, process.join, 5)
            if process.is_alive():
                process.terminate()


# -- in the worker process -----------------------------------------------------


def _worker(sock: socket.socket, plan: Plan, indices: range) -> None:
    """A worker process: follow with clients ``indices`` until told to finish."""
    # Ctrl-C reaches the whole process group; the parent ends the run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_on_loop(_follow(sock, plan, indices), plan.loop)


async def _follow(sock: socket.socket, plan: Plan, indices: range) -> None:
    channel = await Channel.open(sock)
    log = ChangeLog()
    log.known_until = float("-inf")  # nothing is known until the parent says
    crowd = Crowd(plan.transport, plan.target(), log, indices)
    status = asyncio.ensure_future(_report_status(channel, crowd))
    tasks = set()
    channel.send(("ready", None))
    while True:
        message = await channel.receive() or ("finish", None)  # None: the parent has gone
        kind = message[0]
        if kind == "log":
            log.replay(message[1], message[2])
        elif kind == "connect":
            tasks.add(asyncio.ensure_future(crowd.connect()))
        elif kind == "churn":
            crowd.churn(message[1])
        elif kind == "drain":
            tasks.add(asyncio.ensure_future(_drain(channel, crowd, message[1], message[2])))
        elif kind == "finish":
            status.cancel()
            for task in tasks:
                task.cancel()
            channel.send(("outcome", await crowd.finish(message[1])))
            await channel.close()
            return


async def _drain(channel: Channel, crowd: Crowd, final: dict, timeout: float) -> None:
    channel.send(("drained", await crowd.drain(final, timeout)))


async def _report_status(channel: Channel, crowd: Crowd) -> None:
    while True:
        await asyncio.sleep(STATUS_EVERY)
        counts = (crowd.connected, crowd.waiting, crowd.errors, crowd.deliveries, crowd.matching)
        channel.send(("status", counts, crowd.take_window()))
