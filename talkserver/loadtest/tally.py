"""The load test's bookkeeping: which change reached which client, and when.

Writers register every change in the ``ChangeLog`` before they send it, so
its send time is known before any client can see it.  Each change carries
its id in the talk's text (``load#17`` as a summary or comment message) and
a deleted talk is known by its title, which is never reused within a run.
Only one writer touches a title, so a talk's newest id tells which of its
changes a client has: an answer showing ``load#17`` delivers every change of
that talk up to 17 that the client had not yet seen, even when the server
folded several changes into one answer.

From this a ``Tally`` counts deliveries and their fan-out latency (receive
time minus send time), duplicates (an answer repeating a change the client
already had), and lost deliveries (a change sent after the client joined
that its copy never caught up with).  Its ``outcome`` is a plain dict, and
``merge`` adds the outcomes of several processes (``--workers``) into one
as if one process had held every client: counts are summed, latencies are
pooled (so percentiles are over all deliveries), and each change's last
receive time is the latest of any process.
"""

from __future__ import annotations

import json
import math
from array import array
from bisect import bisect_right

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


class ChangeLog:
    """The changes of one run: ids, titles, send times, refusals.

    The writers' process registers changes with ``change`` and ``refuse``;
    with ``journal`` set to a list it also records each event there, so a
    worker process's replica (``replay``) learns them in the same order.
    A replica knows every change registered up to ``known_until`` (clock
    time): an answer received after that may name a change it has not yet
    been told of, so the tally waits with it.
    """

    def __init__(self, journal: list | None = None) -> None:
        self.sent: dict[int, float] = {}
        self.by_title: dict[str, list[int]] = {}
        self.deleted_by: dict[str, int] = {}
        self.refused: set[int] = set()
        self._next_id = 1
        self.journal = journal
        self.known_until = math.inf

    def change(self, title: str, now: float, deletes: bool = False) -> int:
        """Register a change about to be sent; returns the id to put in it."""
        cid = self._next_id
        self._next_id += 1
        self._record(cid, title, now, deletes)
        if self.journal is not None:
            self.journal.append((cid, title, now, deletes))
        return cid

    def _record(self, cid: int, title: str, now: float, deletes: bool) -> None:
        self.sent[cid] = now
        self.by_title.setdefault(title, []).append(cid)
        if deletes:
            self.deleted_by[title] = cid

    def refuse(self, cid: int) -> None:
        """The server did not accept change ``cid``: nobody should see it."""
        self.refused.add(cid)
        if self.journal is not None:
            self.journal.append((cid,))

    def replay(self, events: list[tuple], known_until: float) -> None:
        """Apply events another process's log journaled (in order)."""
        for event in events:
            if len(event) == 1:
                self.refused.add(event[0])
            else:
                self._record(*event)
        self.known_until = known_until

    @property
    def changes(self) -> int:
        """Changes the server accepted."""
        return len(self.sent) - len(self.refused)


class Tally:
    """Deliveries seen by the clients of one process, against a ``ChangeLog``."""

    def __init__(self, log: ChangeLog) -> None:
        self.log = log
        # Per change: when the last client (of this process) got it.
        self.last_receive: dict[int, float] = {}
        self.latencies_ms = array("d")
        self.window_ms: list[float] = []
        self.deliveries = 0
        self.duplicates = 0
        self.bad_answers = 0

    def absorb(self, inbox: list[tuple[object, float, bytes]]) -> list:
        """Apply a batch of ``(client, receive time, body)`` answers to their
        clients' copies and count them; returns the answers received after
        the log's ``known_until``, left for a later batch."""
        known = self.log.known_until
        held = []
        if inbox and inbox[-1][1] > known:
            cut = next(i for i, (_, now, _) in enumerate(inbox) if now > known)
            inbox, held = inbox[:cut], inbox[cut:]
        for client, now, body in inbox:
            try:
                answer = json.loads(body)
                talks = answer["talks"]
                reset = bool(answer.get("reset"))
                if not isinstance(talks, list):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.bad_answers += 1
                continue
            first = client.copy is None
            if first:
                client.joined = now
            if first or reset:
                client.copy = {}
            for talk in talks:
                self._apply(client, talk, now, counted=not (first or reset))
        return held

    def _apply(self, client, talk: dict, now: float, counted: bool) -> None:
        title = talk.get("title")
        if talk.get("deleted"):
            client.copy.pop(title, None)
        else:
            client.copy[title] = talk
        log = self.log
        ids = log.by_title.get(title)
        if ids is None:
            return  # not a talk of this run
        if talk.get("deleted"):
            token = log.deleted_by.get(title, 0)
        else:
            token = max([_token(talk.get("summary"))] + [_token(c.get("message")) for c in talk.get("comments", ())])
        last = client.last.get(title, 0)
        if token <= last:
            if counted:
                self.duplicates += 1
            return
        client.last[title] = token
        if not counted:
            return
        for cid in ids[bisect_right(ids, last) : bisect_right(ids, token)]:
            if cid in log.refused:
                continue
            ms = (now - log.sent[cid]) * 1000.0
            self.deliveries += 1
            self.latencies_ms.append(ms)
            self.window_ms.append(ms)
            if now > self.last_receive.get(cid, 0.0):
                self.last_receive[cid] = now

    def lost(self, clients: list) -> int:
        """Deliveries that never happened: changes sent after a client joined
        that its copy does not include."""
        log = self.log
        missing = 0
        for client in clients:
            if client.joined is None:
                continue
            for title, ids in log.by_title.items():
                start = bisect_right(ids, client.last.get(title, 0))
                for cid in ids[start:]:
                    if log.sent[cid] > client.joined and cid not in log.refused:
                        missing += 1
        return missing

    def take_window(self) -> list[float]:
        """Latencies counted since the last call (for live progress)."""
        window, self.window_ms = self.window_ms, []
        return window

    def outcome(self, clients: list) -> dict:
        """What these clients saw, in a form ``merge`` can add to others'."""
        return {
            "deliveries": self.deliveries,
            "duplicates": self.duplicates,
            "bad_answers": self.bad_answers,
            "lost": self.lost(clients),
            "latencies_ms": self.latencies_ms,
            "last_receive": self.last_receive,
        }


def merge(outcomes: list[dict]) -> dict:
    """The outcomes of several processes' clients as one (see the module's doc).

    Numbers are summed, error kinds counted together, latencies pooled and
    each change's last receive time is the latest one.
    """
    merged: dict = {"latencies_ms": array("d"), "last_receive": {}, "error_kinds": {}}
    for outcome in outcomes:
        for key, value in outcome.items():
            if key == "latencies_ms":
                merged[key].extend(value)
            elif key == "last_receive":
                last = merged[key]
                for cid, at in value.items():
                    if at > last.get(cid, 0.0):
                        last[cid] = at
            elif key == "error_kinds":
                for kind, n in value.items():
                    merged[key][kind] = merged[key].get(kind, 0) + n
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def last_client_ms(log: ChangeLog, last_receive: dict[int, float]) -> list[float]:
    """Per accepted change, in order: ms until the last client had it."""
    return [(last_receive[cid] - log.sent[cid]) * 1000.0 for cid in sorted(last_receive)]
