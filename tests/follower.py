"""The one follower model: a client that keeps a copy of the board as the page does, and checks it.

It applies each ``/talks`` answer as www/follow.js and www/talks.js do: the
first answer (and any ``"reset": true`` one) replaces the copy; after that
a talk replaces the copy's talk of that title and a tombstone
(``{"title", "deleted": true}``) removes it; the answer's ``serverTime`` is
the next cursor.

While it applies answers it checks the protocol's promise, that a client
sending each ``serverTime`` back sees every change exactly once, and
records each broken promise in ``problems`` in words:

- a poll answered with anything but 200 (a 5xx included), or not at all;
- ``serverTime`` going back, an answer with talks that does not move the
  cursor, a reset nobody asked for;
- a change received twice, or an older state after a newer one.

With a ``Ledger`` (the record of every write a storm sent, see
tests/consistency.py) it also knows which write made each state it gets,
so it can tell a gap: a follower that has seen a writer's write #k must
already have every write that writer had acknowledged before sending #k.
Without one, the test must give every change a state of its own (a new
summary or comment each time), so that a state arriving twice is a change
arriving twice (tombstones are not checked then: a title may be deleted
again after a put that coalesced away).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field

from tornado.httpclient import AsyncHTTPClient

from .harness import WAIT


class Servers:
    """The servers' base URLs, handed out in turn (a round-robin balancer)."""

    def __init__(self, bases: list[str] | str) -> None:
        self.bases = [bases] if isinstance(bases, str) else list(bases)
        self._turn = itertools.cycle(self.bases)

    def next(self) -> str:
        return next(self._turn)


@dataclass
class Write:
    """One write a storm sent: by whom, the title it changed, and the talk it left (None: deleted)."""

    writer: int
    seq: int
    title: str
    state: dict | None
    acknowledged: bool = False
    position: int = -1  # in its title's history

    def __str__(self) -> str:
        return f"w{self.writer} #{self.seq}"


class Ledger:
    """Every write sent, per title in the order sent (each recorded before it is sent).

    Each writer owns its titles and sends one write at a time, and every
    write leaves a state no other write leaves, so a talk's state names the
    write that made it.  A title is deleted at most once, so a tombstone
    names its write too.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[Write]] = {}
        self.by_writer: dict[int, list[Write]] = {}

    def record(self, write: Write) -> Write:
        history = self.history.setdefault(write.title, [])
        write.position = len(history)
        history.append(write)
        self.by_writer.setdefault(write.writer, []).append(write)
        return write

    def position(self, talk: dict) -> int | None:
        """Where in its title's history the state ``talk`` was made (None: no write made it)."""
        history = self.history.get(talk["title"], [])
        if talk.get("deleted"):
            found = [i for i, w in enumerate(history) if w.state is None]
        else:
            found = [i for i, w in enumerate(history) if w.state == talk]
        return found[0] if found else None

    def acknowledged(self) -> int:
        return sum(w.acknowledged for writes in self.by_writer.values() for w in writes)


@dataclass
class Follower:
    """Keeps a copy of the talks by long polling, each poll to the next of ``servers``."""

    servers: Servers
    client: AsyncHTTPClient
    number: int = 0
    ledger: Ledger | None = None
    # Without a ledger: whether every write in the test leaves a state of its own
    # (then a state arriving twice is a change arriving twice).
    unique_states: bool = True
    talks: dict[str, dict] = field(default_factory=dict)
    server_time: int | None = None
    problems: list[str] = field(default_factory=list)
    answers: int = 0
    # title -> position in the ledger's history of the state held (-1: none yet)
    _held: dict[str, int] = field(default_factory=dict)
    # (title, state) -> serverTime of the answer that brought it (without a ledger)
    _received: dict[tuple[str, str], int] = field(default_factory=dict)

    async def start(self) -> None:
        """Load the whole list, as a page does when it opens."""
        answer = await self._get("/talks")
        if answer is not None:
            self.apply(answer)

    async def poll_once(self) -> dict | None:
        """One long poll from the cursor; apply what it brings (None when it failed)."""
        answer = await self._get(f"/talks?changesSince={self.server_time}")
        if answer is not None:
            self.apply(answer)
        return answer

    async def run(self) -> None:
        """Poll until cancelled, backing off a little after a failed poll as the page does."""
        while True:
            if await self.poll_once() is None:
                await asyncio.sleep(0.1)

    def apply(self, answer: dict) -> None:
        """Bring the copy up to date with one ``/talks`` answer, checking the promise."""
        cursor, new_time = self.server_time, answer["serverTime"]
        self.answers += 1
        if cursor is None or answer.get("reset"):
            # The whole list: the page's first load, or a reset (never due in these tests).
            if cursor is not None:
                self._broken(f"told to reset at serverTime {new_time} (cursor {cursor})")
            self.talks = {t["title"]: t for t in answer["talks"]}
            self._held = {}
            for talk in answer["talks"]:
                position = self.ledger.position(talk) if self.ledger is not None else None
                if position is not None:
                    self._held[talk["title"]] = position
            self.server_time = new_time
            return
        if new_time < cursor:
            self._broken(f"serverTime went back from {cursor} to {new_time}")
        elif new_time == cursor and answer["talks"]:
            titles = [t["title"] for t in answer["talks"]]
            self._broken(f"changes to {titles} received twice: an answer at serverTime {new_time} did not move the cursor")
        for talk in answer["talks"]:
            self._check_new(talk, new_time)
            if talk.get("deleted"):
                self.talks.pop(talk["title"], None)
            else:
                self.talks[talk["title"]] = talk
        self.server_time = new_time
        if self.ledger is not None:
            self._check_no_gap(new_time)

    def _check_new(self, talk: dict, at: int) -> None:
        """The state ``talk`` must be newer than what the copy holds: never a repeat, never older."""
        title = talk["title"]
        if self.ledger is None:
            if talk.get("deleted") or not self.unique_states:
                return  # a title may be deleted again after a new put that coalesced away
            key = (title, json.dumps(talk, sort_keys=True))
            if key in self._received:
                self._broken(f"change to {title!r} received twice (at serverTime {self._received[key]} and {at})")
            self._received[key] = at
            return
        position = self.ledger.position(talk)
        held = self._held.get(title, -1)
        if position is None:
            self._broken(f"got a state of {title!r} that no write made: {talk}")
        elif position == held:
            write = self.ledger.history[title][position]
            self._broken(f"change {write} to {title!r} received twice (again at serverTime {at})")
        elif position < held:
            write, newer = self.ledger.history[title][position], self.ledger.history[title][held]
            self._broken(f"got change {write} to {title!r} at serverTime {at} after the newer {newer}")
        else:
            self._held[title] = position

    def _check_no_gap(self, at: int) -> None:
        """Having seen a writer's write #k, the copy must hold all it acknowledged before #k."""
        newest: dict[int, int] = {}
        for title, position in self._held.items():
            write = self.ledger.history[title][position]
            newest[write.writer] = max(newest.get(write.writer, -1), write.seq)
        for writer, seq in newest.items():
            due: dict[str, int] = {}
            for write in self.ledger.by_writer[writer][:seq]:
                due[write.title] = write.position
            for title, position in due.items():
                if self._held.get(title, -1) < position:
                    missed = self.ledger.history[title][position]
                    self._broken(f"gap: at serverTime {at} it has w{writer} #{seq} but not the earlier"
                                 f" {missed} to {title!r}")

    def _broken(self, promise: str) -> None:
        self.problems.append(f"follower {self.number}: {promise}")

    async def _get(self, path: str) -> dict | None:
        base = self.servers.next()
        try:
            response = await self.client.fetch(base + path, raise_error=False, request_timeout=WAIT)
        except Exception as error:  # noqa: BLE001 - any failure is a broken promise, named below
            self._broken(f"GET {path} on {base} failed: {error!r}")
            return None
        if response.code != 200:
            body = (response.body or b"")[:200].decode("utf-8", "replace")
            self._broken(f"GET {path} on {base} answered {response.code}: {body}")
            return None
        return json.loads(response.body)
