"""The long poll: ``GET /talks?changesSince=T``, answered at once or after a wait.

Most long polls never reach a handler: the fast path (fastpolls.py) sees
every request before routing and serves the plain ones itself.  What it
passes on (a password not yet seen, a cursor ahead of this process, an
address past its cap, HTTP/1.0, ``Connection: close``...) comes here
through ``TalksHandler``, and is answered with the same bytes.
"""

from __future__ import annotations

from asyncio import Future
from typing import Mapping

from tornado.web import HTTPError, RequestHandler

from talkserver.follow import fastpolls, lifecycle, wakeup
from talkserver.follow.transport import Transport
from talkserver.stores import StoreWriteFailed
from talkserver.wire.headers import JSON_TYPE
from talkserver.wire.validation import BadInput, parse_cursor


class HandlerPoll:
    """A long poll parked through a handler: a waiter (``cursor``, ``deliver``).

    The answer's bytes go out in ``deliver``, inside the wake loop; the
    handler's coroutine finishes the request after it (wakeup.py).
    """

    __slots__ = ("handler", "cursor", "head", "future", "lane", "__weakref__")

    def __init__(self, handler: RequestHandler, cursor: int, lane: lifecycle.Lane) -> None:
        self.handler = handler
        self.cursor = cursor
        self.head = wakeup.answer_head(handler)
        self.future: Future = Future()
        self.lane = lane

    def deliver(self, body: bytes) -> None:
        """Answer this parked poll (called by Waiters, for thousands at once)."""
        if self.head is not None:
            handler = self.handler
            feed = handler.application.board.feed
            wakeup.write_answer(handler, *wakeup.encoded(feed, self.head, body, wakeup.accepts(handler)))
        wakeup.later(self.future, body)


class LongPolls(Transport):
    """``changesSince`` polls: through the fast path's front door, or a handler."""

    name = fastpolls.LONG_POLL

    def __init__(self, board, settings: Mapping) -> None:
        super().__init__(board, settings)
        self.plain_heads: dict[bytes, tuple[str, int, bool]] = {}  # the front door's (fastpolls.PollDelegate.heads)

    def takes(self, headers: Mapping, has_cursor: bool) -> bool:
        return has_cursor

    def front_door(self, app, server_conn, request_conn):
        return fastpolls.PollDelegate(app, server_conn, request_conn, self.plain_heads)

    async def follow(self, handler: RequestHandler) -> None:
        head_only = handler.request.method == "HEAD"
        if not head_only:
            handler.following = self.name
        # strip=False: the grammar is digits only, padding included.
        try:
            cursor = parse_cursor(handler.get_query_argument("changesSince", strip=False))
        except BadInput as e:
            raise HTTPError(400, "%s", e) from None
        # HEAD never waits, so it holds no poll slot.
        lane = None if head_only else lifecycle.admit(handler)
        board = self.board
        if cursor > board.store.head:
            # A cursor ahead of this process may come from another that applied more.
            try:
                await board.caught_up()
            except StoreWriteFailed as e:
                raise HTTPError(503, "cannot check this cursor against the database now (%s); try again", e) from None
        body = board.feed.since(cursor)
        if body is None and head_only:
            body = board.feed.timeout_answer()
        if body is not None:
            handler.send_json(wakeup.encode_for(handler, board.feed, body))
            return
        handler.set_header("Content-Type", JSON_TYPE)
        poll = HandlerPoll(handler, cursor, lane)
        if not lifecycle.park(lane, poll, handler.request.connection.stream):
            return  # the client left while its password or cursor was checked
        handler.follower = poll
        body = await poll.future
        handler.follower = poll.handler = None  # nothing refers to the handler after this
        if body is None:
            return  # the client went away
        if poll.head is None:
            handler.finish_with(wakeup.encode_for(handler, board.feed, body))
        else:
            wakeup.finish_written(handler)

    def client_gone(self, follower: HandlerPoll) -> None:
        if not follower.future.done():
            follower.lane.forget(follower)
            follower.future.set_result(None)
