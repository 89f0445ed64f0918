"""The PostgreSQL store's catch-up and follower: memory changes only by applying the database's committed log.

A catch-up reads, in one repeatable-read snapshot (one statement), the head
and every change-log row stamped after this process's ``head``, and applies
them in stamp order.  What it applies is always a gap-free prefix of the
database's history, so a ``serverTime`` handed out here never runs past a
change not yet applied.  Catch-ups run in rounds, one at a time; a caller
waits for a round that started after it called.

NOTIFY only wakes: a dedicated connection LISTENs and starts a catch-up.
The same catch-up runs at start, after every reconnect, and on a timer
(``catch_up_every`` seconds), so a notification lost with a connection
delays a change and never loses it.  While the database is away the
follower tries again every second.

An answer that shows the database lost what this process applied is not
applied: a round settles it first (stores.postgres.cuts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import NamedTuple

from talkserver.stores.contract import StoreWriteFailed
from talkserver.stores.postgres.cuts import lost_history, newest_change
from talkserver.stores.postgres.connection import (
    RETRY_EVERY, SESSION_SETTINGS, NoAnswer, asyncpg, failure, host_of, unreachable, within,
)
from talkserver.stores.postgres.schema import CATCH_UP
from talkserver.stores.postgres.writes import CHANNEL

log = logging.getLogger("talkserver")

class Asked(NamedTuple):
    """What a process had applied when it asked the database; its answer is checked against it."""

    applied: int  # answers applied by then (Follower._applied)
    head: int
    epoch: int
    head_id: int | None  # the history id the database gave for ``head`` (None until loaded)
    title: str | None  # the title it changed last, whose stamp in the database is checked too
    stamp: int | None  # and that change's stamp


class Follower:
    """Catching up with the database, and following it: a part of PostgresStore (stores.postgres.store)."""

    async def catch_up(self) -> None:
        """Apply every change committed before this call (raises StoreWriteFailed if unreachable).

        Catch-ups run one at a time.  A call made while one runs waits for
        the next round, whose snapshot is taken after the call, so a caller
        always sees what was committed before it called.
        """
        if self._next_round is None:
            self._next_round = asyncio.get_running_loop().create_future()
            # Nobody may be waiting on a round started by a timer or a NOTIFY.
            self._next_round.add_done_callback(lambda f: f.cancelled() or f.exception())
            if not self._catching_up:
                self._rounds = asyncio.ensure_future(self._run_rounds())
        await asyncio.shield(self._next_round)

    async def _run_rounds(self) -> None:
        self._catching_up = True
        try:
            while self._next_round is not None:
                this_round, self._next_round = self._next_round, None
                asked = self._asking()
                try:
                    answer = await self._call(CATCH_UP, asked.head, asked.title)
                    # No row: the head row is gone (a wiped table), a cut too.
                    applied = None if answer is None else self._apply(*answer, asked=asked)
                    if applied is None:
                        applied = await self._settle_cut()
                except Exception as e:
                    if not unreachable(e):
                        log.exception("catch-up failed")
                    this_round.set_exception(StoreWriteFailed(failure(e)))
                    continue
                this_round.set_result(None)
                if applied and self.on_change is not None:
                    self.on_change()
        finally:
            self._catching_up = False

    def _asking(self) -> Asked:
        """What this process has applied now, against which an answer asked for now is checked."""
        return Asked(self._applied, self.head, self.cuts.epoch, self._head_id, *newest_change(self._log))

    def _apply(self, head: int, pruned_through: int, reload: bool, changes: str, epoch: int, head_id: int | None,
               since_id: int | None, history_from: int | None, witness: int | None, *, asked: Asked) -> bool | None:
        """Apply one answer of talkserver_catch_up (a catch-up's or a write's); returns whether memory changed.

        One statement is one snapshot: the head and the rows after the
        cursor come from the same moment, so they are a gap-free prefix.
        Writes and catch-ups run side by side, so an answer may come from a
        snapshot older than one already applied (``asked.applied`` is the
        count of applied answers when it was asked for): then it is old news.

        Returns None, applying nothing, when the answer shows a cut for a
        catch-up round to settle (``_settle_cut``): the database no longer
        holds what this process had applied when it asked (the history id
        of its head is gone or another, or its newest change is gone from
        the log; stores.postgres.cuts), or it has cuts this process does
        not know; or a round is settling one now.
        """
        if self._settling or self._loss_seen:
            return None
        if self._loaded and lost_history(
            asked=asked, db_head=head, db_pruned_through=pruned_through, db_epoch=epoch, since_id=since_id,
            history_from=history_from, witness=witness,
        ):
            # Kept for the settling round, which asks again.
            self._loss_seen = True
            return None
        if epoch != self.cuts.epoch:
            return None
        return self._merge(head, pruned_through, reload, changes, head_id, stale=asked.applied != self._applied)

    def _merge(self, head: int, pruned_through: int, reload: bool, changes: str, head_id: int | None, *,
               stale: bool) -> bool:
        """Put one checked answer into memory (see _apply); returns whether anything changed."""
        self._loaded = True
        if head < self.head and stale:
            return False
        if head == self.head and pruned_through <= self.pruned_through:
            return False
        self._applied += 1
        if reload:
            self._talks, self._log, self._owners = {}, {}, {}
        newer_than = -1 if reload else self.head
        for title, stamp, presenter, summary, owner, comments in json.loads(changes):
            if stamp <= newer_than:
                continue  # applied already, from a newer answer that came first
            if owner is None:
                self._owners.pop(title, None)
            else:
                self._owners[title] = owner
            if presenter is None:
                self._talks.pop(title, None)
            else:
                self._talks[title] = {
                    "title": title, "presenter": presenter, "summary": summary,
                    "comments": [{"author": author, "message": message} for author, message in comments],
                }
            self._log.pop(title, None)
            self._log[title] = stamp
        if reload:
            # A reload after a cut may find less pruned than we had.
            self.pruned_through = pruned_through
        elif pruned_through > self.pruned_through:
            self._forget_tombstones(pruned_through + 1)
            self.pruned_through = pruned_through
        self.head = head
        self._head_id = head_id
        return True

    async def _follow(self) -> None:
        """LISTEN for changes on a connection of its own; while the database is away, try again every second."""
        while not self._closed:
            started = time.monotonic()
            try:
                conn = await asyncio.wait_for(
                    asyncpg.connect(self.url, timeout=self.timeout,
                                    server_settings=dict(SESSION_SETTINGS, application_name="talkserver-listen")),
                    self.timeout,
                )
            except Exception as e:
                if not unreachable(e):
                    raise
                if isinstance(e, asyncio.TimeoutError):
                    e = NoAnswer(f"no answer within {self.timeout:g} s")
                self._set_reachable(False, e, started)
                await asyncio.sleep(RETRY_EVERY)
                continue
            try:
                self._reached(host_of(conn))
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn: lost.set())
                await within(conn, conn.add_listener(CHANNEL, self._notified), self.timeout, self.timeout)
                self._catch_up_soon()
                # _closed too: asyncio.wait_for may swallow the cancel of
                # close() when its timeout strikes at the same moment.
                while not lost.is_set() and not self._closed:
                    try:
                        await asyncio.wait_for(lost.wait(), self._catch_up_every)
                    except asyncio.TimeoutError:
                        # The timer: a lost NOTIFY only delays a change.  The
                        # query on the listening connection notices one that
                        # died silently, or a database that stopped answering.
                        self._catch_up_soon()
                        started = time.monotonic()
                        await within(conn, conn.execute("SELECT 1"), self.timeout, self.timeout)
            except Exception as e:
                if not unreachable(e):
                    raise
                if isinstance(e, NoAnswer):
                    self._set_reachable(False, e, started)
            finally:
                conn.terminate()
            if not self._closed:
                self.reconnects += 1
                log.info("lost the PostgreSQL connection that wakes this process; reconnecting")

    def _notified(self, _conn, _pid, _channel, payload: str) -> None:
        # A write made here has been applied before its NOTIFY arrives.
        if not payload.isdigit() or int(payload) > self.head:
            self._catch_up_soon()

    def _catch_up_soon(self) -> None:
        task = asyncio.ensure_future(self.catch_up())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

