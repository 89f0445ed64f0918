"""The store contract: talks, comments, the change log and their rules.

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

This module knows nothing of HTTP, Tornado or SQL: it names what every store
(memory, SQLite, ...) promises, so the rules can be tested once against each
store and the storage behind them swapped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Protocol

from talkserver.stores.history import Cuts


def wall_clock_ms() -> int:
    """The current wall-clock time in whole milliseconds."""
    return time.time_ns() // 1_000_000


def next_stamp(now: int, head: int) -> int:
    """The stamp of the next change: the wall clock, or one past ``head`` when
    the clock has not moved past it (same millisecond, or gone back)."""
    return max(now, head + 1)


class StoreOpenError(Exception):
    """The store cannot be opened; the message is one line for the operator."""


class StoreWriteFailed(Exception):
    """A change could not be committed; nothing was changed (answered 503)."""


class WriteOutcomeUnknown(Exception):
    """A change was sent to the database but no answer came in time: it may
    or may not have been committed (answered 504; the client should re-read)."""


class NotTheOwner(Exception):
    """--protect-talks: the talk belongs to another browser (answered 403)."""


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
    """What the server needs from a store; stores.memory.MemoryStore shows the rules.

    One contract for every store, local or shared: the writes (``put``,
    ``delete``, ``add_comment``), ``prune`` and ``close`` are coroutines.  A
    local store (memory, SQLite) finishes them without suspending; a shared
    one (PostgreSQL) commits to the database and reads the change back
    first.  Nobody who holds a Store asks which kind it is.

    After every change it has applied (made here, or by another process on
    a shared store), a store calls ``on_change``; talkserver.follow.board
    wakes the clients then.  A shared store's writes may also raise
    WriteOutcomeUnknown (sent, but no answer in time), besides
    StoreWriteFailed (not saved).

    The hooks after the rules have defaults here, which a store gets by
    naming Store as its base (MemoryStore does, so every store here has
    them): a store of one process has no other writer to catch up with,
    nothing to ping, no connection to describe, and no metrics of its own.

    A new kind of store is one module (a class with ``open``) plus one line
    in the table of talkserver.stores.registry.
    """

    head: int
    pruned_through: int  # cursors below it get a reset (pruned history)
    cuts: Cuts  # stretches of history the database lost (stores.history)
    # Set by the Board: what to call once changes have been applied, this
    # process's own writes and (on a shared store) other processes' alike.
    on_change: Callable[[], None] | None = None
    # Whether several processes (and hosts) can serve one board from it
    # (--processes above 1 needs that).
    shared: ClassVar[bool] = False

    @classmethod
    async def open(cls, db: str, settings: "Settings") -> "Store":
        """Open the store ``--db`` names; raises StoreOpenError with one line for the operator."""
        ...

    def all_talks(self) -> list[dict]: ...
    def get(self, title: str) -> dict | None: ...
    def owner(self, title: str) -> str | None: ...
    def entries(self) -> Iterator[tuple[str, int, dict | None]]: ...
    async def put(self, title: str, presenter: str, summary: str, owner: str | None = None) -> int: ...
    async def delete(self, title: str, owner: str | None = None) -> int | None: ...
    async def add_comment(self, title: str, author: str, message: str) -> int: ...
    def changes_since(self, cursor: int) -> Changes: ...
    async def prune(self, older_than: int) -> int: ...
    async def close(self) -> None: ...

    # -- hooks, with their defaults for a store of one process ---------------

    @staticmethod
    def check_db(db: str) -> str | None:
        """What is wrong with ``db`` as this store's --db value, checked before anything opens (None: nothing)."""
        return None

    @staticmethod
    def display(db: str) -> str:
        """``db`` as logs may show it (a URL without its password)."""
        return db

    async def catch_up(self) -> None:
        """Apply every change other writers have committed by now (then call
        ``on_change``); raises StoreWriteFailed when that cannot be known."""

    async def ping(self) -> bool:
        """Whether the store can take writes now (for /healthz)."""
        return True

    def health(self) -> dict | None:
        """What /healthz says of the store's connection (None: nothing to say)."""
        return None

    def register_metrics(self, metrics) -> None:
        """Add the store's own gauges and counters to ``metrics`` (a talkserver.operation.metrics.Metrics)."""


@dataclass(frozen=True)
class Settings:
    """How to open a store, from the options; each kind reads what concerns it."""

    sync: str = "normal"  # SQLite: normal or full (--sync)
    timeout: float = 5.0  # PostgreSQL: seconds a database call may take (--db-timeout)
    # PostgreSQL: follow other processes' changes (LISTEN); off for a
    # one-off check or copy.
    follow: bool = True
