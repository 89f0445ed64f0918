"""Conditional polls of ``GET /talks``: ETag, If-None-Match and ``Prefer: wait``.

The book's current client (3rd and 4th editions, chapter 21) keeps its
list of talks fresh with ordinary HTTP conditional requests: a plain
``GET /talks`` first, then the same request with ``If-None-Match: <the
ETag it got>`` and ``Prefer: wait=90``.  The server holds such a request
until the list no longer matches the tag and then answers 200 with the
whole list and its new tag, or answers 304 once the wait is over.

Here that is one more transport over the pieces the ``changesSince`` long
poll uses; it only knows how to frame an answer and when a client is done:

- The tag is the store's ``head``, ``"<serverTime>"``: every change moves
  it, and nothing else does.  If-None-Match uses the weak comparison of RFC
  9110 (``W/"5"`` matches ``"5"``), takes lists, and ``*`` always matches.
- Bodies come from Feed: one encoding per state, shared by every client.
  ``--api=changes`` (the default) answers ``{"serverTime", "talks"}``,
  ``--api=etag`` the bare array the book's current client expects.
- A waiting request is parked in the board's Waiters like any long poll,
  so it is woken by the same change, counted in the same gauge, capped by
  the same per-address limit and answered by the same drain.  Its cursor
  is the head its tag names.  When woken it sends the whole list instead
  of the diff, on the same bytes-first path (wakeup.py); the header block
  with the new tag is built once per state and shared.
- A wait shorter than the poll timeout (``Prefer: wait=5``) gets its own
  deadline: such waits are grouped by length, and one timer per group
  serves them all, as in Waiters.  Longer waits are cut to the poll timeout.
"""

from __future__ import annotations

import re
from asyncio import Future
from typing import Callable, Mapping

from tornado.ioloop import IOLoop
from tornado.web import RequestHandler

from talkserver.follow import lifecycle, wakeup
from talkserver.follow.board import Board
from talkserver.follow.transport import Transport
from talkserver.wire.headers import JSON_TYPE

API_MODES = ("changes", "etag")

# RFC 9110 entity-tag: an optional W/ and a quoted opaque tag.  ("*" is
# not a tag: it is only ever the whole field value.)
_ENTITY_TAG = re.compile(r'(?:W/)?("[^"]*")')
# RFC 7240 preference: the name, then an optional (possibly quoted) value.
_PREFERENCE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*"?([^";,]*)"?)?')


class _AnyTag:
    """``If-None-Match: *``: matches whatever the current state is."""

    def __contains__(self, tag: object) -> bool:
        return True


ANY = _AnyTag()
# What a parked poll's future resolves to when its wait ends unchanged.
NOT_MODIFIED = object()


def etag(head: int, epoch: int = 0) -> str:
    """The entity tag of the talk list at ``head``; after a cut in the
    board's history (stores.history) it names the epoch too, so no tag from
    before the cut can match a state after it."""
    return f'"{head}"' if not epoch else f'"{head}.{epoch}"'


def if_none_match(values: list[str]) -> frozenset[str] | _AnyTag | None:
    """The opaque tags an If-None-Match names (weak ones as strong), ANY for
    ``*``; None when there is none, or none that can be read (then the
    request is answered as if it were not conditional).

    RFC 9110 allows ``*`` only as the whole field value: a ``*`` anywhere
    else (``x*y``, ``"1", *``) is not a tag and matches nothing.
    """
    field = ",".join(value.strip() for value in values).strip()
    if field == "*":
        return ANY
    tags = set()
    for match in _ENTITY_TAG.finditer(field):
        tags.add(match.group(1))
    return frozenset(tags) or None


def requested_wait(values: list[str], cap: float) -> float:
    """Seconds from ``Prefer: wait=N``, at most ``cap``; 0 for none.

    Only the first ``wait`` counts, and one whose value is not a whole
    number of seconds is ignored, as RFC 7240 asks of preferences a server
    does not understand.
    """
    for value in values:
        for preference in value.split(","):
            match = _PREFERENCE.match(preference.split(";", 1)[0])
            if match is None or match.group(1).lower() != "wait":
                continue
            seconds = (match.group(2) or "").strip()
            if not seconds.isascii() or not seconds.isdigit():
                return 0
            # A number, leading zeros and all (0001 is 1); one of any
            # length is a wait the cap cuts anyway, so only the first few
            # significant digits are ever converted.
            significant = seconds.lstrip("0")
            return cap if len(significant) > 9 else min(int(significant or "0"), cap)
    return 0


class ConditionalPolls(Transport):
    """Conditional ``GET /talks`` for one board: answers, waits and their deadlines.

    Setting: ``api``, what a plain ``GET /talks`` answers (``API_MODES``).
    """

    name = "conditional"

    def __init__(self, board: Board, settings: Mapping) -> None:
        super().__init__(board, settings)
        api = settings.get("api", "changes")
        if api not in API_MODES:
            raise ValueError(f"api must be one of {', '.join(API_MODES)}, not {api!r}")
        self.board = board
        self.api = api
        self.body: Callable[[], bytes] = board.feed.everything if api == "changes" else board.feed.talk_array
        # Waits shorter than the poll timeout, by length; within a group,
        # insertion order is deadline order, so one timer each is enough.
        self._short: dict[float, dict[ConditionalPoll, float]] = {}
        # Header blocks with the tag of the current state, by their block
        # without it: woken polls share them, and so share framed answers.
        self._tagged: dict[bytes, bytes] = {}
        self._tagged_head: int | None = None
        self._tag_head: tuple[int, int] | None = None
        self._tag = ""

    def takes(self, headers: Mapping, has_cursor: bool) -> bool:
        return True  # every GET /talks the others leave

    async def follow(self, handler: RequestHandler) -> None:
        # A HEAD, or a GET /talks without a tag to match, follows nothing.
        if handler.request.method != "HEAD" and "If-None-Match" in handler.request.headers:
            handler.following = self.name
        await self.answer(handler)

    def client_gone(self, follower: "ConditionalPoll") -> None:
        follower.cancel()

    async def answer(self, handler: RequestHandler) -> None:
        """Answer ``GET /talks`` (no changesSince) at once, with 304, or after a wait."""
        head = self.board.store.head
        tag = self.tag(head)
        headers = handler.request.headers
        tags = if_none_match(headers.get_list("If-None-Match"))
        if tags is None or tag not in tags:
            # Setting the Etag also keeps Tornado's own ETag check out of it.
            handler.set_header("Etag", tag)
            handler.send_json(wakeup.encode_for(handler, self.board.feed, self.body()))
            return
        # "*" matches every state, so waiting could only end in a 304 too;
        # and a HEAD is answered at once.
        if tags is ANY or handler.request.method == "HEAD":
            wait = 0
        else:
            wait = requested_wait(headers.get_list("Prefer"), self.board.waiters.timeout)
        if not wait:
            _not_modified(handler, tag)
            return
        lane = lifecycle.admit(handler)
        handler.set_header("Preference-Applied", f"wait={wait:g}")
        handler.set_header("Content-Type", JSON_TYPE)
        # Past the per-address cap a wait goes to the slow lane, as a
        # changesSince poll does: answered every few seconds (304 or the
        # new list), so a crowd behind one address costs one request per
        # client per round, and nobody starves.
        poll = ConditionalPoll(self, handler, head, tags, wait, lane)
        if not lifecycle.park(lane, poll, handler.request.connection.stream):
            return  # the client left while its password was checked
        handler.follower = poll  # for on_connection_close
        if wait < self.board.waiters.timeout:
            self._park_short(poll)
        result = await poll.future
        # The handler and its poll refer to each other: every end (an
        # answer, a timeout, a client gone, the drain) passes here, and
        # breaking the pair lets reference counting free both at once.
        handler.follower = poll.handler = None
        if result is None:
            return  # the client went away
        if result is NOT_MODIFIED:
            _not_modified(handler, self.tag(poll.cursor))
        elif poll.head_block is None:
            tag, body = result
            handler.set_header("Etag", tag)
            handler.finish(wakeup.encode_for(handler, self.board.feed, body))
        else:
            wakeup.finish_written(handler)

    def tag(self, head: int) -> str:
        """``etag(head, epoch)``, formatted once per state rather than once per poll."""
        key = (head, self.board.store.cuts.epoch)
        if self._tag_head != key:
            self._tag_head, self._tag = key, etag(*key)
        return self._tag

    def tagged_block(self, block: bytes, head: int) -> bytes:
        """``block`` (a header block from wakeup.answer_head) with the tag of ``head``."""
        if self._tagged_head != head:
            self._tagged_head = head
            self._tagged = {}
        tagged = self._tagged.get(block)
        if tagged is None:
            if len(self._tagged) >= 256:
                self._tagged.clear()
            tagged = self._tagged[block] = block + b"Etag: %s\r\n" % self.tag(head).encode()
        return tagged

    # -- waits shorter than the poll timeout -------------------------------

    def _park_short(self, poll: "ConditionalPoll") -> None:
        loop = IOLoop.current()
        group = self._short.get(poll.wait)
        if group is None:
            group = self._short[poll.wait] = {}
            loop.call_later(poll.wait, self._expire, poll.wait)
        group[poll] = loop.time() + poll.wait

    def unpark_short(self, poll: "ConditionalPoll") -> None:
        """Drop ``poll``'s own deadline (it was answered, or its client left)."""
        group = self._short.get(poll.wait)
        if group is not None:
            group.pop(poll, None)

    def _expire(self, wait: float) -> None:
        loop = IOLoop.current()
        now = loop.time()
        group = self._short[wait]
        while group:
            poll, deadline = next(iter(group.items()))
            if deadline > now:
                loop.call_at(deadline, self._expire, wait)
                return
            del group[poll]
            poll.lane.forget(poll)
            poll.deliver(b"")
        del self._short[wait]


class ConditionalPoll:
    """A conditional ``GET /talks`` waiting for the list to stop matching its tags.

    A waiter for Waiters: ``cursor`` is the head its tag names, and
    ``deliver`` answers from the current state, whatever body it is handed:
    the whole list with its new tag if the state moved, else 304.
    """

    __slots__ = ("polls", "handler", "cursor", "tags", "wait", "lane", "head_block", "future")

    def __init__(
        self, polls: ConditionalPolls, handler: RequestHandler, head: int, tags: frozenset[str], wait: float, lane
    ) -> None:
        self.polls = polls
        self.lane = lane  # the board's Waiters, or its SlowLane past the cap
        self.handler = handler
        self.cursor = head
        self.tags = tags
        self.wait = wait
        self.head_block = wakeup.answer_head(handler)
        self.future: Future = Future()

    def deliver(self, body: bytes) -> None:
        """Answer now (a change, a timeout or a drain); see the class docstring."""
        polls = self.polls
        head = polls.board.store.head
        if head == self.cursor:
            polls.unpark_short(self)
            wakeup.later(self.future, NOT_MODIFIED)
            return
        tag = polls.tag(head)
        if tag in self.tags:
            # The client listed this state too: it has it, so wait on.
            self.cursor = head
            self.lane.park(self)
            return
        polls.unpark_short(self)
        answer = polls.body()
        if self.head_block is not None:
            block, sent = wakeup.encoded(
                polls.board.feed, polls.tagged_block(self.head_block, head), answer,
                wakeup.accepts(self.handler),
            )
            wakeup.write_answer(self.handler, block, sent)
        wakeup.later(self.future, (tag, answer))

    def cancel(self) -> None:
        """The client went away: forget the poll at once."""
        if not self.future.done():
            self.lane.forget(self)
            self.polls.unpark_short(self)
            self.future.set_result(None)


def _not_modified(handler: RequestHandler, tag: str) -> None:
    """Finish with 304 and the current tag (Tornado drops the Content-Type)."""
    handler.set_status(304)
    handler.set_header("Etag", tag)
    handler.finish()
