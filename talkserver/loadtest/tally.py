"""The load test's bookkeeping: which change reached which client, and when.

Writers register every change before they send it (``change``), so its send
time is known before any client can see it.  Each change carries its id in
the talk's text (``load#17`` as a summary or comment message) and a deleted
talk is known by its title, which is never reused within a run.  Only one
writer touches a title, so a talk's newest id tells which of its changes a
client has: an answer showing ``load#17`` delivers every change of that talk
up to 17 that the client had not yet seen, even when the server folded
several changes into one answer.

From this the tally counts deliveries and their fan-out latency (receive
time minus send time), duplicates (an answer repeating a change the client
already had), and lost deliveries (a change sent after the client joined
that its copy never caught up with).
"""

from __future__ import annotations

import json
from array import array
from bisect import bisect_right

from talkserver.loadtest.clients import Poller

TOKEN = "load#"


def percentile(values, q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of sorted ``values``; 0 when empty."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def _token(text: object) -> int:
    if isinstance(text, str) and text.startswith(TOKEN):
        try:
            return int(text[len(TOKEN) :])
        except ValueError:
            return 0
    return 0


class Tally:
    """Changes sent and deliveries seen during one run."""

    def __init__(self) -> None:
        self.sent: dict[int, float] = {}
        self.by_title: dict[str, list[int]] = {}
        self.deleted_by: dict[str, int] = {}
        self.refused: set[int] = set()
        self._next_id = 1
        # Per change: how many clients got it, and when the last one did.
        self.reached: dict[int, int] = {}
        self.last_receive: dict[int, float] = {}
        self.latencies_ms = array("d")
        self.window_ms: list[float] = []
        self.deliveries = 0
        self.duplicates = 0
        self.bad_answers = 0

    # -- the writers' side -------------------------------------------------

    def change(self, title: str, now: float, deletes: bool = False) -> int:
        """Register a change about to be sent; returns the id to put in it."""
        cid = self._next_id
        self._next_id += 1
        self.sent[cid] = now
        self.by_title.setdefault(title, []).append(cid)
        if deletes:
            self.deleted_by[title] = cid
        return cid

    def refuse(self, cid: int) -> None:
        """The server did not accept change ``cid``: nobody should see it."""
        self.refused.add(cid)

    @property
    def changes(self) -> int:
        """Changes the server accepted."""
        return len(self.sent) - len(self.refused)

    # -- the clients' side -------------------------------------------------

    def absorb(self, inbox: list[tuple[Poller, float, bytes]]) -> None:
        """Apply a batch of answers to their clients' copies and count them."""
        for poller, now, body in inbox:
            try:
                answer = json.loads(body)
                talks = answer["talks"]
                reset = bool(answer.get("reset"))
                if not isinstance(talks, list):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.bad_answers += 1
                continue
            first = poller.copy is None
            if first:
                poller.joined = now
            if first or reset:
                poller.copy = {}
            for talk in talks:
                self._apply(poller, talk, now, counted=not (first or reset))

    def _apply(self, poller: Poller, talk: dict, now: float, counted: bool) -> None:
        title = talk.get("title")
        if talk.get("deleted"):
            poller.copy.pop(title, None)
        else:
            poller.copy[title] = talk
        ids = self.by_title.get(title)
        if ids is None:
            return  # not a talk of this run
        if talk.get("deleted"):
            token = self.deleted_by.get(title, 0)
        else:
            token = max([_token(talk.get("summary"))] + [_token(c.get("message")) for c in talk.get("comments", ())])
        last = poller.last.get(title, 0)
        if token <= last:
            if counted:
                self.duplicates += 1
            return
        poller.last[title] = token
        if not counted:
            return
        for cid in ids[bisect_right(ids, last) : bisect_right(ids, token)]:
            if cid in self.refused:
                continue
            ms = (now - self.sent[cid]) * 1000.0
            self.deliveries += 1
            self.latencies_ms.append(ms)
            self.window_ms.append(ms)
            self.reached[cid] = self.reached.get(cid, 0) + 1
            if now > self.last_receive.get(cid, 0.0):
                self.last_receive[cid] = now

    # -- the verdict -------------------------------------------------------

    def lost(self, pollers: list[Poller]) -> int:
        """Deliveries that never happened: changes sent after a client joined
        that its copy does not include."""
        missing = 0
        for poller in pollers:
            if poller.joined is None:
                continue
            for title, ids in self.by_title.items():
                start = bisect_right(ids, poller.last.get(title, 0))
                for cid in ids[start:]:
                    if self.sent[cid] > poller.joined and cid not in self.refused:
                        missing += 1
        return missing

    def last_client_ms(self) -> list[float]:
        """Per accepted change, in order: ms until the last client had it."""
        return [
            (self.last_receive[cid] - self.sent[cid]) * 1000.0
            for cid in sorted(self.last_receive)
        ]

    def take_window(self) -> list[float]:
        """Latencies counted since the last call (for live progress)."""
        window, self.window_ms = self.window_ms, []
        return window

