"""The life of a follower, the same for every transport: admit, park,
deliver, release, log, end.

A follower is a request that follows the board: a long poll (served by
the fast path, fastpolls.py, or through ``TalksHandler``: longpolls.py), a
conditional poll (conditional.py), an event stream (streams.py) or a
WebSocket (websockets.py).  A transport knows three things only: how to
read its cursor, how to frame its answer, and when its client is gone.
Every other step is here, once, so a rule added to a step reaches every
transport:

1. **which** transport serves a request: the registry (transports.py)
   asks each registered transport in turn whether it ``takes`` it.
2. **admit** (credentials and origin already checked by the admission
   policy, access/admission.py): count the follower against its address;
   under the cap a poll waits in the board's Waiters, past it in the
   SlowLane, past the slow lane it is refused (429).
3. **park**: unless its client left while an earlier step waited (a
   password check, a catch-up), in which case nothing holds it.
4. **deliver** the shared, encoded bytes (wakeup.py: one framed answer per
   state, sent at once, bookkeeping after the wake loop).
5. **release** what it held, exactly once, and hand the connection to
   SlowReaders if its answer is still unsent.
6. **log**: counted in /metrics by transport; the access log has it only at
   debug level (web/app.TalkApplication.log_answer).
7. **end**: let Tornado read the connection's next request, only once the
   answer has left (back-pressure; fastpolls.py, and Tornado's own
   ``finish()`` for the handlers); on drain, ``end_lanes`` answers every
   parked poll and each transport ends what it holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Protocol

from tornado.iostream import IOStream

from talkserver.follow.waiters import Waiter

if TYPE_CHECKING:
    from tornado.web import RequestHandler

    from talkserver.follow.board import Board


class Lane(Protocol):
    """Where a waiter waits: the board's Waiters, or its SlowLane past the cap."""

    def park(self, waiter: Waiter) -> None: ...
    def forget(self, waiter: Waiter) -> None: ...
    def deliver_to_all(self, body: bytes) -> None: ...
    def __len__(self) -> int: ...


def admit(handler: "RequestHandler") -> Lane:
    """Count ``handler``'s follower against its address; the lane it waits
    in (the SlowLane past the cap).  Past the slow lane too: Refusal (429),
    which the handler answers."""
    app = handler.application
    over_cap = app.admission.hold_follower(handler, handler.request.remote_ip or "")
    return app.board.slow_lane if over_cap else app.board.waiters


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


def release(app, follower: Hashable, stream: IOStream | None = None) -> None:
    """Give back what ``follower`` held (calling it again changes nothing),
    and watch ``stream`` for a client that leaves its answer unread."""
    app.admission.release(follower)
    if stream is not None:
        app.slow_readers.watch(stream)


def end_lanes(board: "Board") -> int:
    """Answer every parked poll at once with the empty answer (the drain);
    returns how many."""
    waiting = len(board.waiters) + len(board.slow_lane)
    if waiting:
        body = board.feed.timeout_answer()
        board.waiters.deliver_to_all(body)
        board.slow_lane.deliver_to_all(body)
    return waiting
