"""The clients one process holds: connecting them, tallying what they see.

A ``Crowd`` is the followers' side of a run in one process: its clients
(pollers, event streams or WebSockets, all alike to it), the ``Hub`` they
share, and the ``Tally`` that parses their answers in batches while they
are quiet.  The run (run.py) drives a crowd through its phases and asks it
for counts; with ``--workers`` each worker process holds one crowd and the
run talks to them through workers.py, which offers the same methods.
"""

from __future__ import annotations

import asyncio

from talkserver.loadtest.churn import hang_ups
from talkserver.loadtest.clients import RETRY_BACKOFF, Hub, Poller, Target, clock
from talkserver.loadtest.streams import Streamer
from talkserver.loadtest.tally import ChangeLog, Tally
from talkserver.loadtest.websocket import Socket

# How a client follows the board, by --transport: a new transport is one
# module of clients and one line here.
CLIENTS = {"poll": Poller, "sse": Streamer, "websocket": Socket}

# Connections opened at once while connecting: enough to connect 10,000
# clients in a few seconds, few enough not to overflow the server's backlog.
CONNECTS_AT_ONCE = 200
# The tally parses answers while the clients are quiet, so that its work
# does not delay the receive times of a burst; a busy run is tallied at
# least this often (seconds).
TALLY_AT_LEAST_EVERY = 1.0
QUIET = 0.05


class Crowd:
    """Clients number ``indices`` of a run (their source addresses follow
    from the number), and the tally of what they received."""

    def __init__(self, transport: str, target: Target, log: ChangeLog, indices: range) -> None:
        self.hub = Hub(target)
        self.tally = Tally(log)
        client = CLIENTS[transport]
        self.clients = [client(target, self.hub, target.poller_source(i)) for i in indices]
        self.size = len(self.clients)
        self._tasks: list[asyncio.Task] = []
        self._churn: asyncio.Task | None = None
        # While draining: how many copies equal the server's board.
        self.matching = 0

    # -- counts the run reads ----------------------------------------------

    @property
    def waiting(self) -> int:
        """Clients the server is holding for the next change."""
        return self.hub.waiting

    @property
    def connected(self) -> int:
        """Clients with an open connection."""
        return self.hub.connected

    @property
    def errors(self) -> int:
        """Errors so far, of every kind."""
        return sum(self.hub.errors.values())

    @property
    def deliveries(self) -> int:
        """Deliveries tallied so far."""
        return self.tally.deliveries

    def take_window(self) -> list[float]:
        """Latencies tallied since the last call."""
        return self.tally.take_window()

    # -- the phases ----------------------------------------------------------

    async def connect(self) -> None:
        """Open every client's connection (each then follows on its own)."""
        self._tasks.append(asyncio.ensure_future(self._tally_loop()))
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
        hub = self.hub

        async def connect(client) -> None:
            async with gate:
                try:
                    await hub.target.connect(client)
                except OSError as e:
                    hub.error(f"connect: {e.strerror or e}")
                    asyncio.get_running_loop().call_later(RETRY_BACKOFF, hub.reconnect, client)

        await asyncio.gather(*(connect(c) for c in self.clients))

    def churn(self, every: float | None) -> None:
        """Start (``every`` seconds) or stop (None) random hang-ups."""
        if self._churn is not None:
            self._churn.cancel()
            self._churn = None
        if every:
            self._churn = asyncio.ensure_future(hang_ups(self.clients, every))

    async def drain(self, final: dict, timeout: float) -> int:
        """Wait (at most ``timeout`` s) until every copy equals ``final``
        (the board by title); returns how many do."""
        deadline = clock() + timeout
        while True:
            matching = self.copies_matching(final)
            if matching == self.size or clock() > deadline:
                return matching
            await asyncio.sleep(0.1)

    def copies_matching(self, final: dict) -> int:
        """Clients whose copy of the board equals ``final`` now."""
        self.tally_now()
        self.matching = sum(1 for c in self.clients if c.copy == final)
        return self.matching

    def error(self, kind: str) -> None:
        """Count an error (the writers' too) with the clients' errors."""
        self.hub.error(kind)

    async def finish(self, final: dict | None) -> dict:
        """Hang up every client and return what they saw (see ``outcome``)."""
        self.churn(None)
        for task in self._tasks:
            task.cancel()
        for client in self.clients:
            client.close()
        self.tally_now()
        return self.outcome(final)

    def outcome(self, final: dict | None) -> dict:
        """What these clients saw (see Tally.outcome), with the connection
        counts and errors; copies are compared with ``final`` if given."""
        hub = self.hub
        outcome = self.tally.outcome(self.clients)
        outcome.update(
            error_kinds=dict(hub.errors), reconnects=hub.reconnects, hang_ups=hub.hang_ups,
            copies_checked=self.size,
            copies_matching=0 if final is None else sum(1 for c in self.clients if c.copy == final),
        )
        return outcome

    # -- tallying ------------------------------------------------------------

    def tally_now(self) -> None:
        """Tally every answer received (that the change log can account for)."""
        inbox, self.hub.inbox = self.hub.inbox, []
        held = self.tally.absorb(inbox)
        if held:
            self.hub.inbox[:0] = held

    async def _tally_loop(self) -> None:
        while True:
            await asyncio.sleep(QUIET)
            inbox = self.hub.inbox
            if inbox and (clock() - inbox[-1][1] > QUIET or clock() - inbox[0][1] > TALLY_AT_LEAST_EVERY):
                self.tally_now()
