"""Talks, comments and the change log: the server's state and its rules.

Every change (a talk proposed or replaced, commented on, deleted) is stamped
with a *server time*: wall-clock milliseconds, bumped past the newest stamp
when the clock stands still or goes back.  Stamps are therefore strictly
increasing, and the newest one, ``head``, is the cursor every answer carries
as ``serverTime``.  Because ``head`` is always the stamp of a change already
in the log, an answer covers exactly the changes up to it, and a client that
sends it back as ``changesSince`` sees each later change exactly once.

The change log keeps only the newest change per title (a deleted talk leaves
a tombstone), so it never grows beyond the number of titles ever used.
Tombstones older than the retention window may be pruned; cursors older than
what has been pruned can no longer be answered with a diff, and get the full
list flagged as a reset instead.

This module knows nothing of HTTP or Tornado, so the rules can be tested on
their own and the storage behind them swapped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


def wall_clock_ms() -> int:
    """The current wall-clock time in whole milliseconds."""
    return time.time_ns() // 1_000_000


def next_stamp(now: int, head: int) -> int:
    """The stamp of the next change: the wall clock, or one past ``head`` when
    the clock has not moved past it (same millisecond, or gone back)."""
    return max(now, head + 1)


class TalkNotFound(KeyError):
    """Raised when a comment is added to a talk that does not exist."""


@dataclass(frozen=True)
class Changes:
    """What changed after a cursor.

    ``talks`` holds a full talk dict per changed title and
    ``{"title": t, "deleted": True}`` per deleted one.  ``reset`` means the
    cursor could not be answered with a diff, and ``talks`` is the complete
    list that replaces the client's copy.
    """

    server_time: int
    talks: list[dict]
    reset: bool = False


class Store(Protocol):
    """What the server needs from a store; see MemoryStore for the rules."""

    head: int

    def all_talks(self) -> list[dict]: ...
    def get(self, title: str) -> dict | None: ...
    def put(self, title: str, presenter: str, summary: str) -> int: ...
    def delete(self, title: str) -> int | None: ...
    def add_comment(self, title: str, author: str, message: str) -> int: ...
    def changes_since(self, cursor: int) -> Changes: ...
    def prune(self, older_than: int) -> int: ...
    def close(self) -> None: ...


class MemoryStore:
    """The whole state in memory; lost when the process ends.

    ``_log`` maps each title to the stamp of its newest change and is kept in
    stamp order (a title changed again is moved to the end), so the changes
    after a cursor are a walk back from the end that stops at the cursor.
    """

    def __init__(self, clock=wall_clock_ms) -> None:
        self._clock = clock
        self._talks: dict[str, dict] = {}
        self._log: dict[str, int] = {}
        self.head = clock()
        # Cursors below this may have missed a change this store cannot
        # name: a pruned tombstone, or anything from before the store
        # existed (a client that polled a previous, wiped store).
        self.pruned_through = self.head

    # -- reading ---------------------------------------------------------

    def all_talks(self) -> list[dict]:
        """Every talk, in the order of their latest change."""
        return [self._talks[t] for t in self._log if t in self._talks]

    def get(self, title: str) -> dict | None:
        """The talk with this title, or None."""
        return self._talks.get(title)

    def changes_since(self, cursor: int) -> Changes:
        """The changes stamped after ``cursor``, newest first.

        A cursor from the future (the data was wiped, or the client talked
        to another server), or from before the store's history (pruned, or
        from before the store was created), gets a reset.
        """
        if cursor > self.head or cursor < self.pruned_through:
            return Changes(self.head, self.all_talks(), reset=True)
        changed = []
        for title, stamp in reversed(self._log.items()):
            if stamp <= cursor:
                break
            changed.append(self._talks.get(title) or {"title": title, "deleted": True})
        return Changes(self.head, changed)

    # -- writing ---------------------------------------------------------

    def _stamp(self, title: str) -> int:
        stamp = next_stamp(self._clock(), self.head)
        self._log.pop(title, None)
        self._log[title] = stamp
        self.head = stamp
        return stamp

    def put(self, title: str, presenter: str, summary: str) -> int:
        """Create or replace a talk (a replaced talk loses its comments)."""
        self._talks[title] = {
            "title": title,
            "presenter": presenter,
            "summary": summary,
            "comments": [],
        }
        return self._stamp(title)

    def delete(self, title: str) -> int | None:
        """Delete a talk; returns its stamp, or None if there was no talk."""
        if self._talks.pop(title, None) is None:
            return None
        return self._stamp(title)

    def add_comment(self, title: str, author: str, message: str) -> int:
        """Append a comment; raises TalkNotFound if there is no such talk."""
        talk = self._talks.get(title)
        if talk is None:
            raise TalkNotFound(title)
        # A new dict, not an append: answers already handed out (and cached)
        # keep the talk as it was.
        self._talks[title] = dict(
            talk, comments=talk["comments"] + [{"author": author, "message": message}]
        )
        return self._stamp(title)

    def prune(self, older_than: int) -> int:
        """Forget tombstones stamped before ``older_than``; returns how many."""
        doomed = [
            t for t, stamp in self._log.items() if stamp < older_than and t not in self._talks
        ]
        for title in doomed:
            self.pruned_through = max(self.pruned_through, self._log.pop(title))
        return len(doomed)

    def close(self) -> None:
        """Nothing to release for the memory store."""
