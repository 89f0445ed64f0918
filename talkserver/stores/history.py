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

- **PostgreSQL** (stores.postgres): each catch-up, and each write's
  answer, also reads the epoch and the database's stamp of the newest
  title this server applied (the *witness*).  ``lost_history`` tells from those whether the database no
  longer holds what this server applied; ``mark_cut`` then records the cut
  under the head lock, once for all servers, and moves the head past it.
  Every server reloads the board when a cut covers what it applied.
- **SQLite** (stores.sqlite): one server owns a file and cannot see it
  being replaced, so on its first write after opening it records the
  stretch between the file's head and that write's stamp.  No client of
  this file was ever given a stamp in it, but a client of a newer copy
  (before a restore from backup) may hold one.  These do not count in the
  epoch: they are recorded at every restart, restored file or not.

Nothing here knows HTTP or Tornado; the PostgreSQL helpers take an asyncpg
connection.
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


def newest_change(log: dict[str, int]) -> tuple[str | None, int | None]:
    """The title and stamp of the newest change in a store's log (``_log``), or (None, None)."""
    for title, stamp in reversed(log.items()):
        return title, stamp
    return None, None


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


# -- PostgreSQL ----------------------------------------------------------------

# IF NOT EXISTS: stores.postgres runs it again in its version 3, for a
# database a pre-release took to "version 2" without it.
PG_MIGRATION = [
    "CREATE TABLE IF NOT EXISTS talkserver_cuts (epoch bigint PRIMARY KEY, survived bigint NOT NULL,"
    " cut_through bigint NOT NULL, noticed_at timestamptz NOT NULL DEFAULT now())",
]

# Added to the catch-up function: the board's epoch, and the database's
# stamp of the title ($2) this server changed last (NULL when it has none).
PG_CATCH_UP_COLUMNS = (
    "(SELECT coalesce(max(epoch), 0) FROM talkserver_cuts) AS epoch,"
    " (SELECT stamp FROM change_log WHERE title = $2) AS witness"
)


def lost_history(
    *, applied_head: int, known_epoch: int, newest_stamp: int | None,
    db_head: int | None, db_pruned_through: int | None, db_epoch: int, witness: int | None,
) -> bool:
    """Whether the database no longer holds everything this server applied.

    The database went back when its head is behind ours (a restore, a
    failover before new writes), when cuts we know of are gone from it (a
    restore of a dump older than a cut), or when the newest change we
    applied is not in its log although writes went on after it (a failover
    whose new primary has taken writes since): in a history that only goes
    forward, that title's stamp is ours or newer, unless pruned.
    """
    if db_head is None or db_pruned_through is None:
        return True  # the head row is gone: a wiped table
    if db_head < applied_head or db_epoch < known_epoch:
        return True
    return newest_stamp is not None and (witness is None or witness < newest_stamp) and db_pruned_through < newest_stamp


async def pg_cuts(conn) -> list[Cut]:
    """Every cut recorded in the database."""
    return [Cut(*row) for row in await conn.fetch("SELECT epoch, survived, cut_through FROM talkserver_cuts")]


async def mark_cut(conn, *, applied_head: int, log: dict[str, int], known: Cuts, clock_sql: str) -> Cut | None:
    """Record that the database lost changes this server applied up to ``applied_head``.

    One transaction, holding the head lock, so writers wait and two servers
    noticing the same cut take turns: the second finds the first's cut
    covering what it applied and records nothing.  ``survived`` is the
    newest stamp at which this server's log (``log``, title -> stamp) and
    the database's tell the same board (each title on which they differ
    was changed after it in one of them), and not past the database's
    head: a diff from the database's log still brings a client from there
    to the board.  Cuts this server knows and the database lost (a restore
    older than them) are written back.  The head moves past every cut, so
    the cut's last stamp is never handed out again.  ``clock_sql`` reads the
    database clock in ms, for a head row that was wiped.

    Returns the new cut, the one already covering ``applied_head``, or None
    when the database turns out to hold everything up to ``applied_head``.
    """
    async with conn.transaction():
        exists = await conn.fetchval("SELECT stamp FROM head FOR UPDATE")
        if exists is None:
            # Every old cursor gets a reset on a board whose head is gone.
            await conn.execute(
                f"INSERT INTO head (stamp, pruned_through) SELECT c, c FROM"
                f" (SELECT greatest({clock_sql}, $1::bigint + 1) AS c) AS n",
                applied_head,
            )
        recorded = await pg_cuts(conn)
        for cut in recorded:
            if cut.holds(applied_head):
                return cut
        on_record = {cut.epoch for cut in recorded}
        restore = [c for c in known if c.epoch not in on_record]
        # The newest stamp up to which both logs tell the same board: every
        # title on which they differ was changed after it in one of them.
        differs = await conn.fetchval(
            "SELECT min(greatest(o.stamp, c.stamp)) FROM change_log c"
            " FULL JOIN unnest($1::text[], $2::bigint[]) AS o(title, stamp) ON o.title = c.title"
            " WHERE o.stamp IS DISTINCT FROM c.stamp",
            list(log), list(log.values()),
        )
        db_head = await conn.fetchval("SELECT stamp FROM head")
        survived = min(applied_head, db_head, *(() if differs is None else (differs - 1,)))
        cut = None
        if survived < applied_head:
            epoch = max([known.epoch, *on_record]) + 1
            cut = Cut(epoch, survived, applied_head)
            restore.append(cut)
        await conn.executemany(
            "INSERT INTO talkserver_cuts (epoch, survived, cut_through) VALUES ($1, $2, $3)"
            " ON CONFLICT (epoch) DO NOTHING",
            [(c.epoch, c.survived, c.cut_through) for c in restore],
        )
        top = max([applied_head, *(c.cut_through for c in restore + recorded)])
        # Moved even when already past: every server's head then changes
        # when it catches up, which refreshes its cached answers and tags.
        await conn.execute("UPDATE head SET stamp = greatest(stamp + 1, $1::bigint + 1)", top)
        await conn.execute("SELECT pg_notify('talkserver_changes', '')")
    return cut
