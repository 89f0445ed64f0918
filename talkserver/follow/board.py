"""The talk board: one store, its encoded answers and the clients following it.

Every write goes through here, so each change wakes the waiting polls and
reaches every transport that pushes (event streams, WebSockets) exactly once, after the store has accepted it.
The write methods are coroutines, as every store's are (stores.contract):
whichever store it is, it calls back (``on_change``) once a change is
applied, here or in another process, and the board wakes the clients then.
"""

from __future__ import annotations

from typing import Callable, Mapping

from talkserver.follow.bounds import Bounds, Tally, comment_bytes, entry_bytes, room
from talkserver.follow.feed import Feed
from talkserver.operation.metrics import Metrics
from talkserver.follow.slowlane import DEFAULT_INTERVAL, SlowLane
from talkserver.stores import Store
from talkserver.follow.waiters import Waiters


class Board:
    """The state a server shares between all of its requests."""

    def __init__(
        self,
        store: Store,
        poll_timeout: float,
        metrics: Metrics | None = None,
        slow_lane_interval: float = DEFAULT_INTERVAL,
        bounds: Bounds = Bounds(),
    ) -> None:
        self.store = store
        # How big the board may grow (talkserver.follow.bounds), and what it holds.
        self.bounds = bounds
        self._tally = Tally()
        self.feed = Feed(store)
        self.waiters = Waiters(poll_timeout, self.feed.timeout_answer)
        # Polls over their address's cap (talkserver.slowlane).
        self.slow_lane = SlowLane(slow_lane_interval, self.feed.since, self.feed.timeout_answer)
        self.metrics = metrics or Metrics()
        self.metrics.gauge("talkserver_waiting_clients", "Long polls waiting for a change.", lambda: len(self.waiters))
        self.metrics.gauge(
            "talkserver_slow_lane_clients", "Long polls over their address's cap, answered in rounds.",
            lambda: len(self.slow_lane),
        )
        self.metrics.gauge("talkserver_talks", "Talks on the board.", lambda: len(self.store.all_talks()), merge="max")
        self.metrics.gauge(
            "talkserver_board_bytes", "Stored bytes of the board's talks, comments and tombstones"
            " (as counted against --max-board-bytes).", self.stored_bytes, merge="max",
        )
        # Transports that push every change (streams, sockets) subscribe here.
        self._subscribers: list[Callable[[], None]] = []
        self._changes = self.metrics.counter("talkserver_changes_total", "Changes made to talks since start.")
        # Every store calls back whenever it has applied changes (its own
        # writes, and on a shared store other processes' too).
        store.on_change = self._wake
        store.register_metrics(self.metrics)

    @classmethod
    def from_settings(cls, store: Store, poll_timeout: float, settings: Mapping) -> "Board":
        """The board of an Application with these settings (``slow_lane_interval``,
        and the bounds ``max_talks`` and ``max_board_bytes``, off unless given)."""
        return cls(
            store, poll_timeout, slow_lane_interval=settings.get("slow_lane_interval", DEFAULT_INTERVAL),
            bounds=Bounds(settings.get("max_talks") or 0, settings.get("max_board_bytes") or 0),
        )

    async def put(self, title: str, presenter: str, summary: str, owner: str | None = None) -> None:
        """Create or replace a talk (``owner``: the browser that now owns it, with --protect-talks).

        Raises BoardFull, changing nothing, when the talk would take the
        board past its bounds.
        """
        await self._make_room(title, lambda old: entry_bytes(title, {
            "presenter": presenter, "summary": summary, "comments": [],
        }))
        self._count(await self.store.put(title, presenter, summary, owner))

    async def delete(self, title: str, owner: str | None = None) -> None:
        """Delete a talk if it exists (``owner``: the browser asking, with --protect-talks)."""
        self._count(await self.store.delete(title, owner))

    async def add_comment(self, title: str, author: str, message: str) -> None:
        """Comment on a talk; raises store.TalkNotFound if there is none, BoardFull
        (changing nothing) when the comment would take the board past its bounds."""
        if self.store.get(title) is not None:
            await self._make_room(title, lambda old: (old or 0) + comment_bytes(author, message))
        self._count(await self.store.add_comment(title, author, message))

    def stored_bytes(self) -> int:
        """The board's stored bytes now (talkserver.follow.bounds)."""
        self._tally.sync(self.store)
        return self._tally.used

    async def _make_room(self, title: str, new_size: Callable[[int | None], int]) -> None:
        """Check that writing ``title`` keeps the board within its bounds,
        forgetting the oldest tombstones first if that makes room; raises
        BoardFull otherwise.  ``new_size(old)``: the entry's bytes after
        the write, from its bytes now (None: a new title)."""
        if not self.bounds:
            return
        tally, store = self._tally, self.store
        tally.sync(store)
        old = tally.sizes.get(title)
        doomed = room(
            self.bounds, entries=tally.entries, used=tally.used, title=title, old=old, new=new_size(old),
            dead=tally.dead, tombstones=tally.tombstones(store),
        )
        if not doomed:
            return
        # The log is in stamp order: this forgets exactly the doomed ones.
        await store.prune(doomed[-1][1] + 1)
        tally.forget([name for name, _stamp in doomed], store)

    async def caught_up(self) -> None:
        """Apply what the database holds now (a shared store; nothing to do for the others).

        A cursor from another process may be ahead of what this one has
        applied: it waits for this, and is a reset only if still ahead.
        Raises StoreWriteFailed when the database cannot be reached.
        """
        await self.store.catch_up()

    async def reachable(self) -> bool:
        """Whether the store can take writes now (for /healthz)."""
        return await self.store.ping()

    def _count(self, stamp: int | None) -> None:
        """Count a change the store made (``stamp`` None: nothing changed); it has woken the polls already."""
        if stamp is not None:
            self._changes.inc()

    def subscribe(self, publish: Callable[[], None]) -> None:
        """Call ``publish`` after every change, once the parked polls are woken."""
        self._subscribers.append(publish)

    def _wake(self) -> None:
        self.waiters.wake_all(self.feed.since)
        for publish in self._subscribers:
            publish()
