"""The PostgreSQL store's writes, and what their client is told when they fail.

A write is one call of a server-side function (sql/v4_history_ids.sql):
stamp, change, change log, NOTIFY, then the catch-up from this process's
head through its own stamp, and COMMIT; one round trip.  It is answered
once its change is in memory.  Its outcomes:

* done: the stamp (the change applied here, ``on_change`` called);
* refused by the function, nothing changed: TalkNotFound (404),
  NotTheOwner (403);
* certainly not committed (no connection could be had, or the database
  reported the failure): StoreWriteFailed (503);
* sent and not answered in time, or its connection lost on the way: it
  may have committed, WriteOutcomeUnknown (504).
"""

from __future__ import annotations

import logging

from talkserver.stores.contract import NotTheOwner, StoreWriteFailed, TalkNotFound, WriteOutcomeUnknown
from talkserver.stores.postgres.connection import (
    RETRY_EVERY, NotSent, asyncpg, failure, one_line, rolled_back, unreachable,
)
from talkserver.stores.postgres.schema import DB_CLOCK_MS

log = logging.getLogger("talkserver")

CHANNEL = "talkserver_changes"

# The DETAIL of the owner check's error (sql/v4_history_ids.sql), which
# tells it from a privilege the database user lacks: same SQLSTATE, 42501.
OWNER_DETAIL = "talkserver: another owner"

# What the database user needs on talkserver's tables once they exist
# (creating them the first time needs CREATE on the schema too).
TABLES = ("talks", "comments", "change_log", "head", "talkserver_cuts", "talkserver_history", "talkserver_schema")
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
_MISSING_PRIVILEGES = (
    "SELECT t.name, p.privilege FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n),"
    " unnest($2::text[]) WITH ORDINALITY AS p(privilege, m)"
    " WHERE to_regclass(t.name) IS NOT NULL AND NOT has_table_privilege(to_regclass(t.name), p.privilege)"
    " UNION ALL SELECT 'comments_id_seq', 'USAGE' WHERE to_regclass('comments_id_seq') IS NOT NULL"
    " AND NOT has_sequence_privilege('comments_id_seq', 'USAGE')"
)


class Writes:
    """Writing the board: a part of PostgresStore (stores.postgres.store)."""

    async def put(self, title: str, presenter: str, summary: str, owner: str | None = None) -> int:
        """Create or replace a talk (a replaced talk loses its comments); None keeps the owner.

        Raises NotTheOwner if ``owner`` is given and the talk has another.
        """
        return await self._write(
            "SELECT * FROM talkserver_write_put($1, $2, $3, $4, $5, $6, $7)", title, presenter, summary, owner
        )

    async def delete(self, title: str, owner: str | None = None) -> int | None:
        """Delete a talk; returns its stamp, or None if there was no talk.

        ``owner`` (with --protect-talks): refuse with NotTheOwner if the talk
        has another owner.
        """
        try:
            return await self._write("SELECT * FROM talkserver_write_delete($1, $2, $3, $4, $5)", title, owner)
        except TalkNotFound:
            return None

    async def add_comment(self, title: str, author: str, message: str) -> int:
        """Append a comment; raises TalkNotFound if there is no such talk."""
        return await self._write("SELECT * FROM talkserver_write_comment($1, $2, $3, $4, $5, $6)", title, author, message)

    async def prune(self, older_than: int) -> int:
        """Forget tombstones stamped before ``older_than``; returns how many.

        One server-side function, one statement: it takes the head lock like
        a write, so it runs between writes, and every process drops the same
        tombstones when it next catches up.
        """
        try:
            pruned = (await self._call("SELECT talkserver_prune($1)", older_than))[0]
        except Exception as e:
            self._raise_for_write(e)
        await self._apply_after_commit()
        return pruned

    async def _write(self, call: str, *args) -> int:
        """Run one write function (stamp, change, log, NOTIFY, catch-up, COMMIT) and apply what it returns.

        Raises TalkNotFound or NotTheOwner when the function refused (nothing
        changed), StoreWriteFailed when nothing was committed, and
        WriteOutcomeUnknown when the answer did not come back.
        """
        if self._closed:
            raise StoreWriteFailed("the store is closed")
        if not self.reachable and self._follower is not None:
            # Known to be away: refused at once, not after a timeout each.
            # The follower tries every second and says when it is back.
            raise StoreWriteFailed(
                f"the database is unreachable ({self._down_reason}); trying again every {RETRY_EVERY:g} s"
            )
        now = None if self._given_clock is None else self._given_clock()
        asked = self._asking()
        try:
            stamp, *answer = await self._call(call, *args, now, asked.head, asked.title)
        except asyncpg.NoDataFoundError:
            # Rolled back: the talk is not there, perhaps deleted by another
            # process; this one should show that too before it answers.
            await self._apply_after_commit()
            raise TalkNotFound(args[0]) from None
        except asyncpg.InsufficientPrivilegeError as e:
            if e.detail != OWNER_DETAIL:
                raise StoreWriteFailed(await self._missing_privileges(e)) from None
            await self._apply_after_commit()
            raise NotTheOwner(args[0]) from None
        except Exception as e:
            self._raise_for_write(e)
        if self._apply(*answer, asked=asked) and self.on_change is not None:
            self.on_change()
        if self.head < stamp:
            # Not applied: the answer showed a cut, which a catch-up round
            # settles (as it may be doing now); the write is answered once
            # its change is in memory, as always.
            await self._apply_after_commit()
        return stamp

    async def _missing_privileges(self, e: BaseException) -> str:
        """The 503 answer's reason for a permission error (SQLSTATE 42501); one log line naming what is missing.

        The database names the object; which privileges the database user
        lacks on talkserver's tables is asked for (within the timeout), and
        logged each time it changes, not at every refused write.
        """
        try:
            missing = [f"{privilege} on {table}" for table, privilege in await self._on_connection(
                lambda conn: conn.fetch(_MISSING_PRIVILEGES, list(TABLES), list(PRIVILEGES)))]
        except Exception as lookup:
            if not unreachable(lookup):
                raise
            missing = []
        what = ", ".join(missing) or "a privilege talkserver's tables and functions need"
        if what != self._privileges_missing:
            self._privileges_missing = what
            log.error("PostgreSQL refuses a change for want of a privilege: %s (%s); writes answer 503 until"
                      " the database user is granted it (GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES"
                      " IN SCHEMA ... TO ...; docs/storage.md)", what, one_line(e))
        return f"the database refuses this server's user: {what} is not granted"

    def _raise_for_write(self, e: BaseException) -> None:
        """Raise what the client of a failed write is told: not saved (503) only when that is certain."""
        if not unreachable(e):
            raise e
        if isinstance(e, NotSent) or rolled_back(e):
            raise StoreWriteFailed(failure(e)) from None
        raise WriteOutcomeUnknown(failure(e)) from None

    async def _apply_after_commit(self) -> None:
        try:
            await self.catch_up()
        except StoreWriteFailed as e:
            # Committed all the same: the follower applies it when it can.
            log.info("committed, but could not read the change back yet: %s", e)

    # -- talkserver-import ------------------------------------------------------

    async def talk_count(self) -> int:
        """Talks and tombstones in the database (for talkserver-import's check); StoreWriteFailed if unknown."""
        try:
            return (await self._call("SELECT count(*) FROM change_log"))[0]
        except Exception as e:
            if not unreachable(e):
                raise
            raise StoreWriteFailed(failure(e)) from None

    async def replace_board(self, talks: list[dict], newer_than: int, owners: dict[str, str] | None = None) -> int:
        """Replace the whole board with ``talks`` (from another store) in one transaction.

        The new head is past ``newer_than`` (the old store's head), the
        database clock and the current head, and history is marked pruned
        up to it: a cursor from either old board gets one clean reset.
        Returns the new head.  Processes following the database reload.
        Raises StoreWriteFailed (nothing replaced) or WriteOutcomeUnknown
        (no answer in time: replaced or not), as a write does.
        """
        async def replace(conn) -> int:
            async with conn.transaction():
                head = await conn.fetchval(
                    f"UPDATE head SET stamp = greatest({DB_CLOCK_MS}, stamp + 1, $1::bigint + 1) RETURNING stamp",
                    newer_than,
                )
                await conn.execute("UPDATE head SET pruned_through = $1", head)
                await conn.execute("DELETE FROM comments")
                await conn.execute("DELETE FROM talks")
                await conn.execute("DELETE FROM change_log")
                # Older than the head, in the old board's order.
                first = head - len(talks)
                await conn.executemany(
                    "INSERT INTO talks (title, presenter, summary, owner) VALUES ($1, $2, $3, $4)",
                    [(t["title"], t["presenter"], t["summary"], (owners or {}).get(t["title"])) for t in talks],
                )
                await conn.executemany(
                    "INSERT INTO change_log (title, stamp) VALUES ($1, $2)",
                    [(t["title"], first + i) for i, t in enumerate(talks)],
                )
                await conn.executemany(
                    "INSERT INTO comments (title, author, message) VALUES ($1, $2, $3)",
                    [(t["title"], c["author"], c["message"]) for t in talks for c in t["comments"]],
                )
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(head))
            return head

        try:
            head = await self._on_connection(replace)
        except Exception as e:
            self._raise_for_write(e)
        await self._apply_after_commit()
        return head
