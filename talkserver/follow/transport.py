"""Transport: what every way of following the board provides (transports.py registers them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from tornado.web import RequestHandler

    from talkserver.follow.board import Board


class Transport:
    """One way to follow the board; a subclass overrides what applies to it."""

    name: str = ""  # in /metrics (talkserver_polls_answered_total) and the drain's log line

    def __init__(self, board: "Board", settings: Mapping) -> None:
        self.board = board

    def takes(self, headers: Mapping, has_cursor: bool) -> bool:
        """Whether this transport serves a ``GET /talks`` with these headers
        (``has_cursor``: the query names ``changesSince``)."""
        raise NotImplementedError

    async def follow(self, handler: "RequestHandler") -> None:
        """Serve ``handler``'s request until its answer is complete; sets
        ``handler.follower`` to what ``client_gone`` must end, and
        ``handler.following`` to ``name`` when the request follows (not for
        a HEAD or a plain read)."""
        raise NotImplementedError

    def client_gone(self, follower: object) -> None:
        """The client of ``follower`` left: forget it at once."""

    def end_all(self) -> int:
        """The drain: end every client this transport holds (polls parked in
        the board's lanes are answered by lifecycle.end_lanes); how many."""
        return 0

    def __len__(self) -> int:
        """How many clients it holds now, outside the board's lanes."""
        return 0

    def front_door(self, app, server_conn, request_conn):
        """An ``HTTPMessageDelegate`` that sees every request before routing
        (the fast path of long polls), or None."""
        return None
