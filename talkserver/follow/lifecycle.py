"""The life of a follower, the same for every transport: admit, park,
deliver, release, log, end.

A follower is a request that follows the board: a long poll (served by
the fast path, fastpolls.py, or by ``TalksHandler``), a conditional poll
(conditional.py) or an event stream (streams.py).  A transport knows three
things only: how to read its cursor, how to frame its answer, and when its
client is gone.  Every other step is here, once, so a rule added to a step
reaches every transport:

1. **which** transport serves a request: ``transport()``; the fast path
   takes the plainest long polls before routing and leaves every other
   request to this same choice in ``TalksHandler.get``.
2. **admit** (credentials already checked): count the follower against
   its address; under the cap it waits in the board's Waiters, past it in
   the SlowLane, past the slow lane it is refused (429).
3. **park**: unless its client left while an earlier step waited (a
   password check, a catch-up), in which case nothing holds it.
4. **deliver** the shared, encoded bytes (wakeup.py: one framed answer per
   state, sent at once, bookkeeping after the wake loop).
5. **release** what it held, exactly once, and hand the connection to
   SlowReaders if its answer is still unsent.
6. **log**: counted in /metrics by transport; the access log has it only at
   debug level (app.TalkApplication.log_answer).
7. **end**: let Tornado read the connection's next request, only once the
   answer has left (back-pressure; fastpolls.py, and Tornado's own
   ``finish()`` for the handlers).

Adding a transport (say WebSocket) is one module that reads its cursor,
frames the Feed's bytes, and calls these steps (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable, Protocol

from tornado.iostream import IOStream

from talkserver.follow.waiters import Waiter

if TYPE_CHECKING:
    from tornado.httputil import HTTPHeaders, HTTPServerRequest
    from tornado.web import RequestHandler

LONG_POLL = "long_poll"
CONDITIONAL = "conditional"
STREAM = "stream"


class Lane(Protocol):
    """Where a waiter waits: the board's Waiters, or its SlowLane past the cap."""

    def park(self, waiter: Waiter) -> None: ...
    def forget(self, waiter: Waiter) -> None: ...


def transport(request: "HTTPServerRequest") -> str:
    """Which transport serves a ``GET /talks``: an event stream when asked
    for one, a long poll with ``changesSince``, else a conditional request
    (which answers at once unless it matches and asks to wait)."""
    return transport_for(request.headers, "changesSince" in request.query_arguments)


def transport_for(headers: "HTTPHeaders", has_cursor: bool) -> str:
    """``transport()`` from the headers and whether the query names a
    cursor, for the fast path, which decides before there is a request object."""
    # What EventSource sends (streams.EVENT_STREAM_TYPE).
    if "text/event-stream" in headers.get("Accept", ""):
        return STREAM
    return LONG_POLL if has_cursor else CONDITIONAL


def admit(handler: "RequestHandler") -> Lane:
    """Count ``handler``'s follower against its address; the lane it waits
    in (the SlowLane past the cap).  Past the slow lane too: 429, and the
    request ends here (limits.refuse)."""
    app = handler.application
    over_cap = app.limits.hold_poll(handler)
    return app.board.slow_lane if over_cap else app.board.waiters


def admit_under_cap(app, poll: Hashable, address: str) -> bool:
    """The fast path's admit: count ``poll`` if its address is under the
    cap; False, counting nothing, otherwise (then the request takes
    ``admit`` through the handlers, which has the slow lane and the 429)."""
    return app.limits.hold_poll_under_cap(poll, address)


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
    app.limits.release(follower)
    if stream is not None:
        app.slow_readers.watch(stream)
