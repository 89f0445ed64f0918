"""Cuts in a board's history: stretches of changes its database lost.

A database can go back in time under a running board: restored from an
older dump, failed over to an asynchronous standby that lost the last
commits, a table wiped by hand.  Clients then hold cursors from a history
that no longer exists, and talks that no longer exist.  Such a stretch is a
*cut*: ``survived`` is the newest stamp both histories share, ``cut_through``
the newest stamp handed out before the cut.  A cursor in
``(survived, cut_through]`` cannot be answered with a diff (its client has
seen changes that are gone), so it gets the whole board with ``reset``;
cursors at or before ``survived``, and after ``cut_through``, are answered
as usual.  New stamps are always above ``cut_through``, so a cursor from the
lost stretch never silently skips a change made after the cut.

Cuts are kept in the database next to the board and numbered; the number of
the newest is the board's *epoch* (ETags carry it), so every server of the
board, running now or started later, answers every cursor the same way.

- **PostgreSQL** (stores.postgres.cuts): each catch-up, and each write's
  answer, also reads the epoch and the database's history id of the
  server's head (the *witness*: every value the head takes gets a random
  id), which tell whether the database no longer holds what this server
  applied, whatever was written since; the cut is then
  recorded under the head lock, once for all servers, and the head moves
  past it.  Every server reloads the board when a cut covers what it applied.
- **SQLite** (stores.sqlite): one server owns a file and cannot see it
  being replaced, so on its first write after opening it records the
  stretch between the file's head and that write's stamp.  No client of
  this file was ever given a stamp in it, but a client of a newer copy
  (before a restore from backup) may hold one.  These do not count in the
  epoch: they are recorded at every restart, restored file or not.

Nothing here knows HTTP, Tornado or a database driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Cut:
    """One cut: cursors in ``(survived, cut_through]`` get a reset (``epoch``: its number; 0 for SQLite's)."""

    epoch: int
    survived: int
    cut_through: int

    def holds(self, cursor: int) -> bool:
        """Whether ``cursor`` falls in the lost stretch."""
        return self.survived < cursor <= self.cut_through

    def describe(self) -> dict:
        """The cut for /healthz."""
        return {"epoch": self.epoch, "survived": self.survived, "cutThrough": self.cut_through}


class Cuts:
    """The cuts a board has had, as a store holds them in memory.

    ``epoch`` is the newest cut's number (0: none), and only goes up, even
    when old cuts are forgotten.  ``noticed`` is the newest cut this
    process has seen evidence of (for /healthz and the log).
    """

    def __init__(self) -> None:
        self._cuts: tuple[Cut, ...] = ()
        self.epoch = 0
        self.noticed: Cut | None = None

    def __iter__(self):
        return iter(self._cuts)

    def __len__(self) -> int:
        return len(self._cuts)

    def lost(self, cursor: int) -> Cut | None:
        """The cut whose lost stretch holds ``cursor``, or None.

        There are few cuts (one per restore or failover within the
        retention window), and Feed asks once per cursor and state.
        """
        for cut in self._cuts:
            if cut.holds(cursor):
                return cut
        return None

    def replace(self, cuts: Iterable[Cut]) -> None:
        """Take the cuts as the database holds them now."""
        self._cuts = tuple(sorted(cuts, key=lambda c: c.epoch))
        self.epoch = max((c.epoch for c in self._cuts), default=0)

    def add(self, cut: Cut) -> None:
        """One more cut, just recorded."""
        self._cuts += (cut,)
        self.epoch = max(self.epoch, cut.epoch)

    def forget_through(self, pruned_through: int) -> None:
        """Drop cuts wholly older than pruned history: those cursors get a reset anyway."""
        self._cuts = tuple(c for c in self._cuts if c.cut_through >= pruned_through)


# -- SQLite --------------------------------------------------------------------

# SQLite's cuts are stretches no client of this file was given a stamp
# in, recorded whether or not the file was restored: they are not counted
# in the epoch (epoch 0), or every restart would change every ETag.
SQLITE_MIGRATION = [
    "CREATE TABLE cuts (survived INTEGER NOT NULL, cut_through INTEGER NOT NULL)",
]


def sqlite_cuts(rows: Iterable[tuple[int, int]]) -> list[Cut]:
    """Cuts from ``SELECT survived, cut_through FROM cuts``."""
    return [Cut(0, *row) for row in rows]
