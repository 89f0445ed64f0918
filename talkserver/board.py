"""The talk board: one store, its encoded answers and the clients following it.

Every write goes through here, so each change wakes the waiting polls and
reaches the open event streams exactly once, after the store has accepted it.
"""

from __future__ import annotations

from .feed import Feed
from .metrics import Metrics
from .slowlane import DEFAULT_INTERVAL, SlowLane
from .stores import Store
from .streams import DEFAULT_BUFFER_LIMIT, DEFAULT_HEARTBEAT, Streams
from .waiters import Waiters


class Board:
    """The state a server shares between all of its requests."""

    def __init__(
        self,
        store: Store,
        poll_timeout: float,
        metrics: Metrics | None = None,
        slow_lane_interval: float = DEFAULT_INTERVAL,
        heartbeat: float = DEFAULT_HEARTBEAT,
        stream_buffer: int = DEFAULT_BUFFER_LIMIT,
    ) -> None:
        self.store = store
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
        self.metrics.gauge("talkserver_talks", "Talks on the board.", lambda: len(self.store.all_talks()))
        self.streams = Streams(self.feed, self.metrics, heartbeat, stream_buffer)
        self._changes = self.metrics.counter("talkserver_changes_total", "Changes made to talks since start.")

    def put(self, title: str, presenter: str, summary: str) -> None:
        """Create or replace a talk."""
        self.store.put(title, presenter, summary)
        self._changed()

    def delete(self, title: str) -> None:
        """Delete a talk if it exists."""
        if self.store.delete(title) is not None:
            self._changed()

    def add_comment(self, title: str, author: str, message: str) -> None:
        """Comment on a talk; raises store.TalkNotFound if there is none."""
        self.store.add_comment(title, author, message)
        self._changed()

    def _changed(self) -> None:
        self._changes.inc()
        self.waiters.wake_all(self.feed.since)
        self.streams.publish()
