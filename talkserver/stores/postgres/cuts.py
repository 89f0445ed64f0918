"""History cuts on PostgreSQL: telling that the database lost changes this process applied, and settling it.

stores.history says what a cut is and how cursors in one are answered.
Here: ``lost_history`` decides from a catch-up's answer whether the
database no longer holds what this process applied (by the history id of
its head, which no later write can hide); ``mark_cut`` records
the cut once for every server of the board, under the head lock; and a
catch-up round settles what an answer showed (``CutSettling._settle_cut``):
marks or learns the cut and reloads the whole board from the database.
"""

from __future__ import annotations

import logging

from talkserver.stores.history import Cut, Cuts
from talkserver.stores.postgres.schema import CATCH_UP, DB_CLOCK_MS

log = logging.getLogger("talkserver")


def newest_change(log: dict[str, int]) -> tuple[str | None, int | None]:
    """The title and stamp of the newest change in a store's log (``_log``), or (None, None)."""
    for title, stamp in reversed(log.items()):
        return title, stamp
    return None, None


def lost_history(*, asked, db_head: int | None, db_pruned_through: int | None, db_epoch: int,
                 since_id: int | None, history_from: int | None, witness: int | None) -> bool:
    """Whether the database no longer holds everything this process had applied when it asked (``asked``).

    The witness no later write can hide is the history id of this
    process's head (``asked.head_id``, from the answer that brought it
    there) against the id the database holds for that stamp now
    (``since_id``).  History is one line (the head lock orders every write;
    a restore or a failover keeps a prefix of it), so the same id says the
    database's history runs through this head and holds everything before
    it.  A missing id, or another (the stamp handed out again after the
    database went back), says it lost that change, whatever was written
    since: later writes of the same titles, or a head moved past ours,
    cannot hide it.  The ids of stamps older than the retention window are
    pruned (``history_from``: the oldest kept); for a head that old, the
    head going back still tells.  So do cuts we know going missing (epochs
    only go up).

    And, for rows removed by hand under a head left in place (a wiped
    table): the newest change this process applied (``asked.title`` at
    ``asked.stamp``) must still be in the log, at that stamp or a later
    one, unless pruned (``witness``: its stamp in the database now).
    """
    if db_head is None or db_pruned_through is None:
        return True  # the head row is gone: a wiped table
    if db_epoch < asked.epoch:
        return True  # cuts we know are gone: a restore older than them (epochs only go up)
    if asked.head_id is not None and history_from is not None and asked.head >= history_from:
        if since_id != asked.head_id:
            return True
    elif db_head < asked.head:
        return True
    return (asked.stamp is not None and (witness is None or witness < asked.stamp)
            and db_pruned_through < asked.stamp)


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


def describe(cut: Cut | None) -> str:
    """A cut for the log."""
    return "none" if cut is None else f"cut {cut.epoch}: cursors after {cut.survived} up to {cut.cut_through}"


class CutSettling:
    """Settling a cut in a catch-up round: a part of PostgresStore (stores.postgres.store)."""

    async def _settle_cut(self) -> bool:
        """Settle what an answer showed (see _apply), in a catch-up round; returns whether memory changed.

        On one connection, the catch-up is asked again from where this
        process is now.  A database that no longer holds what it applied is
        a cut: marked once for every server (mark_cut) unless another
        server's mark covers it already, and the board is reloaded whole.  A
        cut elsewhere in history (a server that lost what this one never
        applied) only needs knowing.  Other answers wait meanwhile
        (``_settling``): a write's change is applied by the next round.
        """
        self._settling = True
        seen, self._loss_seen = self._loss_seen, False
        try:
            asked = self._asking()

            async def settle(conn):
                row = await conn.fetchrow(CATCH_UP, asked.head, asked.title)
                lost = seen or row is None or (self._loaded and lost_history(
                    asked=asked, db_head=row["db_head"], db_pruned_through=row["db_pruned_through"],
                    db_epoch=row["epoch"], since_id=row["since_id"], history_from=row["history_from"],
                    witness=row["witness"],
                ))
                if not lost and row["epoch"] == asked.epoch:
                    return row, lost, None, None  # settled meanwhile, or old news
                cuts = await pg_cuts(conn)
                covering = next((c for c in cuts if c.holds(asked.head)), None) if self._loaded else None
                if lost and covering is None:
                    covering = await mark_cut(
                        conn, applied_head=asked.head, log=self._log, known=self.cuts, clock_sql=DB_CLOCK_MS
                    )
                    cuts = await pg_cuts(conn)
                if lost or covering is not None:
                    row = await conn.fetchrow(CATCH_UP, -1, None)
                return row, lost, covering, cuts

            try:
                row, lost, covering, cuts = await self._on_connection(settle)
            except BaseException:
                self._loss_seen = self._loss_seen or seen  # the next round tries again
                raise
        finally:
            self._settling = False
        if cuts is not None:
            self.cuts.replace(cuts)
            self.cuts.noticed = max(cuts, key=lambda c: c.epoch, default=None)
            if covering is not None:
                log.warning(
                    "history cut %d: the database lost the changes after %d that this process had applied up to %d"
                    " (restored from an older dump? failed over to a standby that lost commits?); reloading the"
                    " board from the database; cursors in that stretch get the whole board with reset",
                    covering.epoch, covering.survived, asked.head,
                )
            elif lost:
                log.warning("the database's head went back, but it holds everything this process applied; reloading")
            elif self._loaded:
                log.info("the board's history was cut elsewhere (%s); nothing this process applied was lost",
                         describe(self.cuts.noticed))
        head, pruned_through, reload, changes = tuple(row)[:4]
        return self._merge(head, pruned_through, reload, changes, row["head_id"], stale=False)
