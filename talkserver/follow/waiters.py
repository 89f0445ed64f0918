"""Long polls parked until the next change, their deadline, or a disconnect.

A waiter is anything with a ``cursor`` and a ``deliver(body)`` method; the
HTTP handler is one.  Its life: ``park`` registers it, then exactly one of
``wake_all`` (a change), the deadline timer, or ``forget`` (the client went
away) removes it, and nothing here refers to it any more.

All waiters share one poll timeout, so registration order is deadline
order: one timer for the oldest waiter is enough, however many there are.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

from tornado.ioloop import IOLoop


class Waiter(Protocol):
    cursor: int

    def deliver(self, body: bytes) -> None: ...


@contextmanager
def no_collection() -> Iterator[None]:
    """Hold off the garbage collector while waiters are answered.

    Waking allocates a little per waiter, and with thousands of parked
    requests alive a full collection takes a good fraction of a second; run
    in the middle of a wake loop, it would hold back every client after it.
    Collections the loop would have triggered run right after it instead.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Waiters:
    """The parked long polls of one server."""

    def __init__(self, timeout: float, timeout_answer: Callable[[], bytes]) -> None:
        self.timeout = timeout
        self._timeout_answer = timeout_answer
        # waiter -> deadline (IOLoop time); insertion order is deadline order.
        self._parked: dict[Waiter, float] = {}
        self._timer = None
        self._loop: IOLoop | None = None

    def __len__(self) -> int:
        return len(self._parked)

    def park(self, waiter: Waiter) -> None:
        """Hold ``waiter`` until a change arrives or the poll timeout passes."""
        if self._timer is None:
            self._loop = IOLoop.current()
            self._timer = self._loop.call_later(self.timeout, self._expire)
        # The loop whose timer is set (IOLoop.current() costs a system call
        # on Python 3.11, 10,000 times per change).
        self._parked[waiter] = self._loop.time() + self.timeout

    def forget(self, waiter: Waiter) -> None:
        """Drop a waiter whose client has gone; nothing is sent to it."""
        self._parked.pop(waiter, None)

    def wake_all(self, answer_for: Callable[[int], bytes | None]) -> None:
        """Deliver to every waiter the answer for its cursor.

        Waiters almost always share one cursor, so answers are looked up
        once per distinct cursor.  A waiter whose cursor has nothing new
        (not possible with one store, but cheap to respect) stays parked.
        """
        parked, self._parked = self._parked, {}
        answers: dict[int, bytes | None] = {}
        with no_collection():
            for waiter, deadline in parked.items():
                cursor = waiter.cursor
                body = answers[cursor] if cursor in answers else answers.setdefault(cursor, answer_for(cursor))
                if body is None:
                    self._parked[waiter] = deadline
                else:
                    waiter.deliver(body)

    def deliver_to_all(self, body: bytes) -> None:
        """Answer every waiter with ``body`` now (used when shutting down)."""
        parked, self._parked = self._parked, {}
        with no_collection():
            for waiter in parked:
                waiter.deliver(body)

    def _expire(self) -> None:
        loop = IOLoop.current()
        now = loop.time()
        body = None
        while self._parked:
            waiter, deadline = next(iter(self._parked.items()))
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire)
                return
            del self._parked[waiter]
            if body is None:
                body = self._timeout_answer()
            waiter.deliver(body)
        self._timer = None
