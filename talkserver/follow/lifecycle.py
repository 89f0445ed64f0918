"""The life of a follower, the same for every transport: admit, park,
deliver, release, log, end.

A transport (fastpolls.py, the handlers' long poll, conditional.py,
streams.py) reads its cursor and frames its answer; the steps every one of
them takes live here, so a rule added to a step reaches all of them.
"""

from __future__ import annotations

from typing import Protocol

from tornado.iostream import IOStream

from .waiters import Waiter


class Lane(Protocol):
    """Where a waiter waits: the board's Waiters, or its SlowLane past the cap."""

    def park(self, waiter: Waiter) -> None: ...
    def forget(self, waiter: Waiter) -> None: ...


def client_gone(stream: IOStream | None) -> bool:
    """Whether the client of ``stream`` has left (or its connection was taken over)."""
    return stream is None or stream.closed()


def park(lane: Lane, waiter: Waiter, stream: IOStream | None) -> bool:
    """Park ``waiter`` in ``lane`` unless its client left while an earlier
    step waited (a password check, a catch-up); False then, and nothing
    holds the waiter.

    Tornado tells a handler of a client that left only once, by
    on_connection_close; when that came before there was anything parked
    to forget, this is where it is noticed, for every transport.
    """
    if client_gone(stream):
        return False
    lane.park(waiter)
    return True
