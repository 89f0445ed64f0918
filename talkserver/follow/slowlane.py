"""The slow lane: long polls over their address's cap, answered in batches.

Many browsers can share one address (an office NAT, a conference Wi-Fi).
Past ``max_polls_per_ip`` polls from one address, a poll is not refused:
if something changed since its cursor it is answered at once, as usual;
otherwise it waits here instead of among the waiters, and every
``interval`` seconds all polls in the lane are answered together, with the
changes since their cursor or, when there are none, an empty answer.  Each
such browser thus sees every change within about ``interval`` seconds, and
costs the server at most one request per ``interval``, even the book's
client, which polls again at once.

A lane poll is a waiter like any other (a ``cursor`` and ``deliver``), and
answers are the feed's shared, encoded bytes.
"""

from __future__ import annotations

from typing import Callable

from tornado.ioloop import IOLoop

from talkserver.follow.waiters import Waiter

DEFAULT_INTERVAL = 5.0


class SlowLane:
    """Polls answered every ``interval`` seconds, whatever happened."""

    def __init__(
        self,
        interval: float,
        answer_for: Callable[[int], bytes | None],
        timeout_answer: Callable[[], bytes],
    ) -> None:
        self.interval = interval
        self._answer_for = answer_for
        self._timeout_answer = timeout_answer
        self._parked: dict[Waiter, None] = {}
        self._timer = None

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, waiter: Waiter) -> None:
        """Hold ``waiter`` until the next round."""
        self._parked[waiter] = None
        if self._timer is None:
            self._timer = IOLoop.current().call_later(self.interval, self._answer_round)

    def forget(self, waiter: Waiter) -> None:
        """Drop a waiter whose client has gone."""
        self._parked.pop(waiter, None)

    def deliver_to_all(self, body: bytes) -> None:
        """Answer every waiter with ``body`` now (used when shutting down)."""
        parked, self._parked = self._parked, {}
        for waiter in parked:
            waiter.deliver(body)

    def _answer_round(self) -> None:
        self._timer = None
        parked, self._parked = self._parked, {}
        answers: dict[int, bytes] = {}
        for waiter in parked:
            cursor = waiter.cursor
            body = answers.get(cursor)
            if body is None:
                body = answers[cursor] = self._answer_for(cursor) or self._timeout_answer()
            waiter.deliver(body)
