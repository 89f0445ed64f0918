"""MemoryStore: the whole board in memory, lost when the process ends.

It is the reference implementation of the contract in stores.contract, and
the in-memory half of every durable store (SQLiteStore keeps its state in a
MemoryStore and commits each change to disk first).  Its writes are
coroutines, as the contract says, that finish without suspending; the
durable stores reuse the synchronous halves (``_put``, ``_delete``,
``_add_comment``, ``_forget_tombstones``) once their change is committed.
"""

from __future__ import annotations

from typing import Iterator

from talkserver.stores.contract import Changes, Settings, Store, TalkNotFound, next_stamp, wall_clock_ms
from talkserver.stores.history import Cuts


class MemoryStore(Store):
    """The whole state in memory; lost when the process ends.

    ``_log`` maps each title to the stamp of its newest change and is kept in
    stamp order (a title changed again is moved to the end), so the changes
    after a cursor are a walk back from the end that stops at the cursor.
    """

    def __init__(self, clock=wall_clock_ms) -> None:
        self._clock = clock
        self._talks: dict[str, dict] = {}
        self._log: dict[str, int] = {}
        # title -> the browser that owns the talk (--protect-talks); kept
        # apart from the talk dicts, which are answers and must not show it.
        self._owners: dict[str, str] = {}
        self.head = clock()
        # Cursors below this may have missed a change this store cannot
        # name: a pruned tombstone, or anything from before the store
        # existed (a client that polled a previous, wiped store).
        self.pruned_through = self.head
        # Stretches of history the database lost (stores.history); a
        # memory store never loses any, the durable ones fill this in.
        self.cuts = Cuts()

    @classmethod
    async def open(cls, db: str = ":memory:", settings: Settings = Settings()) -> "MemoryStore":
        """A new, empty board (``--db=:memory:``)."""
        return cls()

    # -- reading ---------------------------------------------------------

    def all_talks(self) -> list[dict]:
        """Every talk, in the order of their latest change."""
        return [self._talks[t] for t in self._log if t in self._talks]

    def get(self, title: str) -> dict | None:
        """The talk with this title, or None."""
        return self._talks.get(title)

    def owner(self, title: str) -> str | None:
        """The owner recorded for this talk (with --protect-talks), or None."""
        return self._owners.get(title)

    def entries(self) -> Iterator[tuple[str, int, dict | None]]:
        """Every title in the change log, oldest change first: (title, stamp,
        its talk or None for a tombstone)."""
        for title, stamp in self._log.items():
            yield title, stamp, self._talks.get(title)

    def changes_since(self, cursor: int) -> Changes:
        """The changes stamped after ``cursor``, newest first.

        A cursor from the future (the data was wiped, or the client talked
        to another server), from before the store's history (pruned, or
        from before the store was created), or from a stretch of history
        the database lost (a cut, stores.history), gets a reset.
        """
        if cursor > self.head or cursor < self.pruned_through or (self.cuts and self.cuts.lost(cursor)):
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
        if self.on_change is not None:
            self.on_change()
        return stamp

    async def put(self, title: str, presenter: str, summary: str, owner: str | None = None) -> int:
        """Create or replace a talk (a replaced talk loses its comments).

        ``owner`` becomes the talk's owner; None keeps the one it has.
        """
        return self._put(title, presenter, summary, owner)

    async def delete(self, title: str, owner: str | None = None) -> int | None:
        """Delete a talk; returns its stamp, or None if there was no talk.

        ``owner`` is for stores shared between processes, which check it
        again themselves; in one process talkserver.access.auth has checked it.
        """
        return self._delete(title)

    async def add_comment(self, title: str, author: str, message: str) -> int:
        """Append a comment; raises TalkNotFound if there is no such talk."""
        return self._add_comment(title, author, message)

    async def prune(self, older_than: int) -> int:
        """Forget tombstones stamped before ``older_than``; returns how many."""
        return self._forget_tombstones(older_than)

    async def close(self) -> None:
        """Nothing to release for the memory store."""

    # -- the changes in memory, for this store and the durable ones ----------

    def _put(self, title: str, presenter: str, summary: str, owner: str | None) -> int:
        if owner is not None:
            self._owners[title] = owner
        self._talks[title] = {
            "title": title,
            "presenter": presenter,
            "summary": summary,
            "comments": [],
        }
        return self._stamp(title)

    def _delete(self, title: str) -> int | None:
        if self._talks.pop(title, None) is None:
            return None
        self._owners.pop(title, None)
        return self._stamp(title)

    def _add_comment(self, title: str, author: str, message: str) -> int:
        talk = self._talks.get(title)
        if talk is None:
            raise TalkNotFound(title)
        # A new dict, not an append: answers already handed out (and cached)
        # keep the talk as it was.
        self._talks[title] = dict(
            talk, comments=talk["comments"] + [{"author": author, "message": message}]
        )
        return self._stamp(title)

    def _forget_tombstones(self, older_than: int) -> int:
        doomed = [
            t for t, stamp in self._log.items() if stamp < older_than and t not in self._talks
        ]
        for title in doomed:
            self.pruned_through = max(self.pruned_through, self._log.pop(title))
        self.cuts.forget_through(self.pruned_through)
        return len(doomed)
