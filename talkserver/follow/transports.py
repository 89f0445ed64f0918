"""The ways to follow the board, and the one table that registers them.

A transport is a ``Transport`` (transport.py): which ``GET /talks`` requests it takes,
how it follows one (admit, park, deliver and release through
lifecycle.py), what it does when a client leaves, and how it ends what it
holds on drain.  ``Following`` builds every registered transport for one
Application; the handler, the Application, the drain and the access log go
over it and name none of them.

Adding a transport is one module in follow/ with a ``Transport`` subclass
and one line in ``REGISTERED`` below (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Mapping

from talkserver.follow.conditional import ConditionalPolls
from talkserver.follow.lifecycle import end_lanes
from talkserver.follow.longpolls import LongPolls
from talkserver.follow.streams import Streams
from talkserver.follow.transport import Transport
from talkserver.follow.websockets import WebSockets

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest

    from talkserver.follow.board import Board

# The order is the order of asking: the first that takes a request serves it.
REGISTERED: tuple[type[Transport], ...] = (WebSockets, Streams, LongPolls, ConditionalPolls)


class Following:
    """The transports of one Application, built from its settings."""

    def __init__(self, board: "Board", settings: Mapping) -> None:
        self.board = board
        self._all = [cls(board, settings) for cls in REGISTERED]
        self._by_name = {transport.name: transport for transport in self._all}

    def __iter__(self) -> Iterator[Transport]:
        return iter(self._all)

    def __getitem__(self, name: str) -> Transport:
        return self._by_name[name]

    def pick(self, request: "HTTPServerRequest") -> Transport:
        """The transport that serves this ``GET /talks``."""
        return self.pick_for(request.headers, "changesSince" in request.query_arguments)

    def pick_for(self, headers: Mapping, has_cursor: bool) -> Transport:
        """``pick`` before there is a request object (the fast path)."""
        for transport in self._all:
            if transport.takes(headers, has_cursor):
                return transport
        raise LookupError("no transport takes this request")  # the last one takes every request

    def front_door(self, app, server_conn, request_conn):
        """The first transport's delegate that sees requests before routing, or None."""
        for transport in self._all:
            delegate = transport.front_door(app, server_conn, request_conn)
            if delegate is not None:
                return delegate
        return None

    def end_all(self) -> dict[str, int]:
        """The drain: every parked poll answered, every transport's clients
        ended; how many, by transport (``lanes`` for the parked polls)."""
        ended = {"lanes": end_lanes(self.board)}
        for transport in self._all:
            ended[transport.name] = transport.end_all()
        return ended
