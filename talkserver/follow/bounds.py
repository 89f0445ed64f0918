"""How big the board may grow: its talks and its stored bytes.

The board holds at most ``max_talks`` entries in its change log (talks
and the tombstones of deleted ones) and at most ``max_bytes`` stored
bytes.  An entry's bytes are about what it takes in the full ``GET
/talks`` answer: the UTF-8 bytes of its texts (title, presenter, summary,
each comment's author and message) plus a fixed allowance for the JSON
around them (``TALK_FRAMING`` per talk, ``COMMENT_FRAMING`` per comment,
``TOMBSTONE_FRAMING`` per tombstone).  So the memory a board takes, the
size of its full answer and the time to encode, compress, load or send it
all stay proportional to the bounds, however the board was filled.

Tombstones count, but never keep a talk out: a write that needs room
first forgets the oldest tombstones, as the retention pruning would later
(clients whose cursor is older than a forgotten tombstone get the whole
board with ``reset``, which is always a correct answer).  Only live talks
and their comments can fill the board; a write past the bounds then is
refused with BoardFull and changes nothing.

``room`` is the rule, a pure function; ``Tally`` keeps the counts it is
asked with in step with a store, cheaply: the changes since it last
looked, or a recount when the store's history moved under it (pruning, a
cut).  talkserver.follow.board asks both before every write that grows the
board.  Nothing here knows HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

DEFAULT_MAX_TALKS = 5000
# 5,000 talks with the longest summary allowed (wire.validation) take
# about 26 MB, so the default lets the talk bound be reached with full
# talks and leaves room for comments.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024

# The JSON around an entry's texts in an answer, rounded up:
# {"title":"","presenter":"","summary":"","comments":[]}, is 52 bytes.
TALK_FRAMING = 64
COMMENT_FRAMING = 32  # {"author":"","message":""}, is 27
TOMBSTONE_FRAMING = 32  # {"title":"","deleted":true}, is 28


class BoardFull(Exception):
    """A write would take the board past its bounds; nothing was changed (answered 409)."""


@dataclass(frozen=True)
class Bounds:
    """The most talks (change-log entries) and stored bytes a board may hold; 0 is no bound."""

    max_talks: int = 0
    max_bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.max_talks or self.max_bytes)

    def fits(self, entries: int, used: int) -> bool:
        """Whether a board of ``entries`` entries and ``used`` bytes is within the bounds."""
        return (not self.max_talks or entries <= self.max_talks) and (not self.max_bytes or used <= self.max_bytes)


def _utf8(text: str) -> int:
    # len() for ASCII (the common case) without copying it to bytes.
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def comment_bytes(author: str, message: str) -> int:
    """The stored bytes of one comment."""
    return _utf8(author) + _utf8(message) + COMMENT_FRAMING


def entry_bytes(title: str, talk: dict | None) -> int:
    """The stored bytes of a change-log entry: a talk with its comments, or a tombstone (None)."""
    if talk is None or talk.get("deleted"):
        return _utf8(title) + TOMBSTONE_FRAMING
    return (
        _utf8(title) + _utf8(talk["presenter"]) + _utf8(talk["summary"]) + TALK_FRAMING
        + sum(comment_bytes(c["author"], c["message"]) for c in talk["comments"])
    )


def room(
    bounds: Bounds, *, entries: int, used: int, title: str, old: int | None, new: int,
    dead: dict[str, int], tombstones: Iterable[tuple[str, int, int]],
) -> list[tuple[str, int]]:
    """Whether writing ``title`` fits: the tombstones (title, stamp) to
    forget first to make room, oldest first; none when it fits as things are.

    ``entries`` and ``used`` are the board's now; ``old`` is the bytes of
    the title's entry now (None: a new title), ``new`` its bytes after the
    write; ``dead`` maps each tombstone's title to its bytes; ``tombstones``
    yields (title, stamp, bytes), oldest first, and is read only when
    forgetting tombstones will make room, and only as far as needed.
    Raises BoardFull, with a message for the client, when even forgetting
    every tombstone would not make room (which costs nothing to tell).
    """
    if old is None:
        entries += 1
    else:
        used -= old  # the entry is replaced
    used += new
    if bounds.fits(entries, used):
        return []
    # (The written title's own tombstone is replaced anyway: forgetting it frees nothing more.)
    own = dead.get(title)
    freeable = len(dead) - (own is not None)
    if not bounds.fits(entries - freeable, used - (sum(dead.values()) - (own or 0))):
        raise _full(bounds, entries - freeable)
    doomed = []
    for tombstone, stamp, size in tombstones:
        doomed.append((tombstone, stamp))
        if tombstone != title:
            entries -= 1
            used -= size
        if bounds.fits(entries, used):
            return doomed
    # The tombstones counted were not all found (the Tally recounts next
    # time): refuse rather than store past the bound.
    raise _full(bounds, entries)


def _full(bounds: Bounds, entries: int) -> BoardFull:
    """The refusal, naming the bound the write would pass (``entries``: the board's after it)."""
    if bounds.max_talks and entries > bounds.max_talks:
        return BoardFull(f"the board is full: it holds {bounds.max_talks} talks, the most it may; delete one first")
    return BoardFull(
        f"the board is full: this change would take it past {bounds.max_bytes} stored bytes, the most it may"
        " hold; delete a talk first"
    )


class Tally:
    """A store's entries and stored bytes, kept in step with it.

    ``sizes`` holds each title's bytes (its talk or tombstone), so a
    change costs the size of what changed, not of the board.
    """

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.dead: dict[str, int] = {}  # the tombstones among them
        self.used = 0
        # (head, pruned_through, epoch) of the store when last counted.
        self._seen: tuple[int, int, int] | None = None

    @property
    def entries(self) -> int:
        """Talks and tombstones counted."""
        return len(self.sizes)

    def sync(self, store) -> None:
        """Count what the store (a stores.Store) holds now."""
        seen = (store.head, store.pruned_through, store.cuts.epoch)
        if seen == self._seen:
            return
        last = self._seen
        self._seen = seen
        if last is not None and last[1:] == seen[1:]:
            changes = store.changes_since(last[0])
            if not changes.reset:
                for talk in changes.talks:
                    self._set(talk["title"], entry_bytes(talk["title"], talk), bool(talk.get("deleted")))
                return
        # Pruned, cut or never counted: count everything again (rare).
        self.sizes, self.dead, self.used = {}, {}, 0
        for title, _stamp, talk in store.entries():
            self._set(title, entry_bytes(title, talk), talk is None)

    def _set(self, title: str, size: int, dead: bool) -> None:
        self.used += size - self.sizes.get(title, 0)
        self.sizes[title] = size
        if dead:
            self.dead[title] = size
        else:
            self.dead.pop(title, None)

    def forget(self, titles: list[str], store) -> None:
        """``titles``, tombstones the board has just pruned from ``store``,
        are gone: uncount them without a recount."""
        for title in titles:
            self.used -= self.sizes.pop(title, 0)
            self.dead.pop(title, None)
        if self._seen is not None:
            # Changes applied meanwhile (from other processes) are still
            # to be read: only the pruning is accounted for here.
            self._seen = (self._seen[0], store.pruned_through, self._seen[2])

    def tombstones(self, store) -> Iterator[tuple[str, int, int]]:
        """(title, stamp, bytes) of the store's tombstones, oldest first."""
        for title, stamp, talk in store.entries():
            if talk is None:
                yield title, stamp, self.sizes.get(title, 0)
        # Read to the end: room() found fewer than counted, so count again.
        self._seen = None
