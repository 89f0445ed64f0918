"""The shared store: one board in PostgreSQL, served by many processes and hosts.

Every process keeps the whole board in memory, as MemoryStore does, and
serves reads and long polls from it.  The database is the one place where
changes are ordered:

* **Stamps come from the database.**  A write transaction first moves the
  one-row ``head`` table to ``max(database clock in ms, head + 1)``; that
  UPDATE locks the row until COMMIT, so two writers (in any process, on any
  host) take their stamps one after the other, and commit order is stamp
  order.  No reader can see stamp 7 committed without stamp 6.
* **Memory changes only by applying the committed log.**  A catch-up reads,
  in one repeatable-read snapshot, the head and every change-log row stamped
  after this process's ``head``, and applies them in stamp order.  What it
  applies is always a gap-free prefix of the database's history, so a
  ``serverTime`` handed out here never runs past a change not yet applied.
  A write is one round trip: its function also returns the catch-up
  through its own stamp, and it is answered once that has been applied.
* **NOTIFY only wakes.**  Every write sends ``NOTIFY talkserver_changes``;
  a dedicated connection LISTENs and starts a catch-up.  The same catch-up
  runs at start, after every reconnect, and on a timer (``catch_up_every``
  seconds), so a notification lost with a connection delays a change and
  never loses it.

Every call to the database is bounded by ``timeout`` (``--db-timeout``).
A write that certainly did not commit (no connection could be had, or the
database reported the failure) raises StoreWriteFailed (answered 503); a
write that was sent and got no answer in time, or lost its connection on
the way, may have committed, and raises WriteOutcomeUnknown (answered 504).
Reads and polls go on from memory meanwhile, and the follower reconnects
once a second through the (possibly multi-host) URL, logging one line per
change of the database's state.

Every answer (a catch-up's or a write's) also carries the board's epoch and
a witness, which tell a database that went back in time (a restore, a
failover that lost commits); a catch-up round then marks the cut for every
server and reloads the board (stores.history).  docs/storage.md describes
the schema, the choices and each fault.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Awaitable, Callable, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from talkserver.stores import history
from talkserver.stores.contract import NotTheOwner, StoreOpenError, StoreWriteFailed, TalkNotFound, WriteOutcomeUnknown
from talkserver.stores.memory import MemoryStore

try:
    import asyncpg
except ImportError:  # the optional extra is not installed
    asyncpg = None

log = logging.getLogger("talkserver")

URL_SCHEMES = ("postgresql", "postgres")
CHANNEL = "talkserver_changes"
# Any two talkserver versions migrating one database at once take turns.
MIGRATION_LOCK = 0x74616C6B  # "talk"

# Each migration takes the schema from version N to N + 1 (its position in
# the list).  Only ever append; talkserver_schema records how many ran.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE talks (title text PRIMARY KEY, presenter text NOT NULL, summary text NOT NULL,"
        # --protect-talks: the owner is stored with the talk, shared by every process.
        " owner text)",
        # Comments are kept in the order they were made: by id.
        "CREATE TABLE comments (id bigserial PRIMARY KEY, title text NOT NULL,"
        " author text NOT NULL, message text NOT NULL)",
        "CREATE INDEX comments_by_talk ON comments (title, id)",
        # The newest change per title; a title with no talk is a tombstone.
        "CREATE TABLE change_log (title text PRIMARY KEY, stamp bigint NOT NULL UNIQUE)",
        # One row: the newest stamp handed out (its lock orders all writers),
        # and the newest pruned tombstone's stamp.
        "CREATE TABLE head (one boolean PRIMARY KEY DEFAULT true CHECK (one),"
        " stamp bigint NOT NULL, pruned_through bigint NOT NULL)",
        # Each write is one call of a function, in one statement: the head
        # row is locked from the stamp to the COMMIT inside the server, never
        # across a round trip to a busy application process.  ``now_ms`` is
        # NULL except in tests, which bring their own clock.
        """CREATE FUNCTION talkserver_stamp(t text, now_ms bigint) RETURNS bigint LANGUAGE plpgsql AS $$
        DECLARE
            stamp bigint;
        BEGIN
            UPDATE head SET stamp = greatest(
                coalesce(now_ms, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint), head.stamp + 1)
            RETURNING head.stamp INTO stamp;
            INSERT INTO change_log (title, stamp) VALUES (t, stamp)
                ON CONFLICT (title) DO UPDATE SET stamp = excluded.stamp;
            PERFORM pg_notify('talkserver_changes', stamp::text);
            RETURN stamp;
        END $$""",
        # --protect-talks (``o`` not NULL): the check is repeated here, under
        # the head lock, because another process may have given the talk an
        # owner that this one has not applied yet.
        """CREATE FUNCTION talkserver_check_owner(t text, o text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            IF o IS NOT NULL AND EXISTS (SELECT 1 FROM talks WHERE title = t AND owner <> o) THEN
                RAISE EXCEPTION 'talk % has another owner', t USING ERRCODE = 'insufficient_privilege';
            END IF;
        END $$""",
        """CREATE FUNCTION talkserver_put(t text, p text, s text, o text, now_ms bigint) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE
            stamp bigint := talkserver_stamp(t, now_ms);
        BEGIN
            PERFORM talkserver_check_owner(t, o);
            INSERT INTO talks (title, presenter, summary, owner) VALUES (t, p, s, o) ON CONFLICT (title)
                DO UPDATE SET presenter = excluded.presenter, summary = excluded.summary,
                              owner = coalesce(excluded.owner, talks.owner);
            DELETE FROM comments WHERE title = t;
            RETURN stamp;
        END $$""",
        # A missing talk raises no_data_found, which rolls the stamp back.
        """CREATE FUNCTION talkserver_delete(t text, o text, now_ms bigint) RETURNS bigint LANGUAGE plpgsql AS $$
        DECLARE
            stamp bigint := talkserver_stamp(t, now_ms);
        BEGIN
            PERFORM talkserver_check_owner(t, o);
            DELETE FROM talks WHERE title = t;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'no talk titled %', t USING ERRCODE = 'no_data_found';
            END IF;
            DELETE FROM comments WHERE title = t;
            RETURN stamp;
        END $$""",
        """CREATE FUNCTION talkserver_comment(t text, a text, m text, now_ms bigint) RETURNS bigint
        LANGUAGE plpgsql AS $$
        DECLARE
            stamp bigint := talkserver_stamp(t, now_ms);
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM talks WHERE title = t) THEN
                RAISE EXCEPTION 'no talk titled %', t USING ERRCODE = 'no_data_found';
            END IF;
            INSERT INTO comments (title, author, message) VALUES (t, a, m);
            RETURN stamp;
        END $$""",
    ],
    # Version 2: cuts, stretches of history the database lost (stores.history).
    history.PG_MIGRATION,
    # Version 3: one round trip per write, and pruning in one statement.
    # Every answer also carries what tells a database that went back in
    # time (stores.history): the board's epoch, and the witness, the
    # database's stamp of the title the asking process changed last.  The
    # version 1 functions stay, so servers of the previous versions keep
    # working on a migrated database during a rolling upgrade.
    [
        # A database that a pre-release of this version took to "version 2"
        # with these functions and no cuts table gets the table here.
        *history.PG_MIGRATION,
        # The head, and every change after the cursor ``since`` with its
        # talk's state, in stamp order; one query, so one snapshot.
        # Tombstones pruned after ``since`` took deletes with them that the
        # reader has not applied: then it gets the whole log (``reload``).
        """CREATE FUNCTION talkserver_changes(since bigint, witness_title text)
        RETURNS TABLE (db_head bigint, db_pruned_through bigint, reload boolean, changes text,
                       epoch bigint, witness bigint) LANGUAGE sql AS $$
        SELECT h.stamp, h.pruned_through, h.pruned_through > since,
          (SELECT coalesce(json_agg(json_build_array(c.title, c.stamp, t.presenter, t.summary, t.owner,
               (SELECT coalesce(json_agg(json_build_array(m.author, m.message) ORDER BY m.id), '[]')
                FROM comments m WHERE m.title = c.title)) ORDER BY c.stamp), '[]')
           FROM change_log c LEFT JOIN talks t ON t.title = c.title
           WHERE c.stamp > CASE WHEN h.pruned_through > since THEN -1 ELSE since END)::text,
          """ + history.PG_CATCH_UP_COLUMNS.replace("$2", "witness_title") + """
        FROM head h
        $$""",
        # Each write, and then the catch-up from the writer's head through
        # its own stamp.  The catch-up's snapshot is taken after the head
        # lock was granted, so every smaller stamp has committed and is in it.
        # The witness is read before the write, which may change that title.
        """CREATE FUNCTION talkserver_put(t text, p text, s text, o text, now_ms bigint, since bigint,
                                          witness_title text)
        RETURNS TABLE (written bigint, db_head bigint, db_pruned_through bigint, reload boolean, changes text,
                       epoch bigint, witness bigint)
        LANGUAGE plpgsql AS $$
        DECLARE
            seen bigint := (SELECT l.stamp FROM change_log l WHERE l.title = witness_title);
        BEGIN
            written := talkserver_put(t, p, s, o, now_ms);
            RETURN QUERY SELECT written, c.db_head, c.db_pruned_through, c.reload, c.changes, c.epoch, seen
                FROM talkserver_changes(since, NULL) c;
        END $$""",
        """CREATE FUNCTION talkserver_delete(t text, o text, now_ms bigint, since bigint, witness_title text)
        RETURNS TABLE (written bigint, db_head bigint, db_pruned_through bigint, reload boolean, changes text,
                       epoch bigint, witness bigint)
        LANGUAGE plpgsql AS $$
        DECLARE
            seen bigint := (SELECT l.stamp FROM change_log l WHERE l.title = witness_title);
        BEGIN
            written := talkserver_delete(t, o, now_ms);
            RETURN QUERY SELECT written, c.db_head, c.db_pruned_through, c.reload, c.changes, c.epoch, seen
                FROM talkserver_changes(since, NULL) c;
        END $$""",
        """CREATE FUNCTION talkserver_comment(t text, a text, m text, now_ms bigint, since bigint,
                                              witness_title text)
        RETURNS TABLE (written bigint, db_head bigint, db_pruned_through bigint, reload boolean, changes text,
                       epoch bigint, witness bigint)
        LANGUAGE plpgsql AS $$
        DECLARE
            seen bigint := (SELECT l.stamp FROM change_log l WHERE l.title = witness_title);
        BEGIN
            written := talkserver_comment(t, a, m, now_ms);
            RETURN QUERY SELECT written, c.db_head, c.db_pruned_through, c.reload, c.changes, c.epoch, seen
                FROM talkserver_changes(since, NULL) c;
        END $$""",
        # Forget tombstones stamped before ``older_than``: one statement, so
        # the head lock (which keeps it between writes) is held for no
        # longer than the DELETE, never across a round trip.  (OR REPLACE:
        # the pre-release "version 2" had the same function.)
        """CREATE OR REPLACE FUNCTION talkserver_prune(older_than bigint) RETURNS bigint LANGUAGE plpgsql AS $$
        DECLARE
            gone bigint;
            newest bigint;
        BEGIN
            PERFORM 1 FROM head FOR UPDATE;
            WITH pruned AS (
                DELETE FROM change_log c WHERE c.stamp < older_than
                    AND NOT EXISTS (SELECT 1 FROM talks t WHERE t.title = c.title)
                RETURNING c.stamp
            )
            SELECT count(*), max(pruned.stamp) INTO gone, newest FROM pruned;
            IF gone > 0 THEN
                UPDATE head SET pruned_through = greatest(head.pruned_through, newest);
                PERFORM pg_notify('talkserver_changes', '');
            END IF;
            RETURN gone;
        END $$""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

# The head, the changes after $1, the epoch and the witness (the stamp of
# the title $2); see talkserver_changes above.
_CATCH_UP = "SELECT * FROM talkserver_changes($1, $2)"

# Seconds a database call may take (--db-timeout): the connection, the
# statement and its answer together.
DEFAULT_TIMEOUT = 5.0
# Seconds between attempts to reach the database while it is away.
RETRY_EVERY = 1.0

# JIT compilation costs the catch-up query some 200 ms a time and buys
# nothing on queries this small.
SESSION_SETTINGS = {"jit": "off", "application_name": "talkserver"}

_DB_CLOCK_MS = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"


def is_postgres_url(db: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database (a libpq URL)."""
    return urlsplit(db).scheme in URL_SCHEMES


def redact(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _unreachable(e: BaseException) -> bool:
    """Whether ``e`` is the database failing us (away, or refusing), rather than a bug here."""
    if asyncpg is None:
        return False
    # InternalClientError: asyncpg's state when a connection dies mid-query.
    return isinstance(
        e, (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
            _NotSent, _NoAnswer)
    )


def _rolled_back(e: BaseException) -> bool:
    """Whether the database itself reported that the statement failed, so nothing of it was committed.

    Not so for a lost connection, nor for errors of class 08 (connection)
    and 57 (operator intervention: a shutdown, a terminated backend): those
    can come after the COMMIT, as when a backend is stopped while it waits
    for a synchronous standby's acknowledgement of a local commit.
    """
    if not isinstance(e, asyncpg.PostgresError) or isinstance(e, asyncpg.PostgresConnectionError):
        return False
    return not (getattr(e, "sqlstate", None) or "").startswith(("08", "57"))


def _failure(e: BaseException) -> str:
    """What went wrong, for the 503 or 504 answer."""
    if isinstance(e, (_NotSent, _NoAnswer)):
        return f"the database is unreachable ({e})"
    connection_trouble = isinstance(
        e, (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.InternalClientError, asyncpg.CannotConnectNowError, asyncpg.OperatorInterventionError,
            asyncpg.TooManyConnectionsError)
    )
    return f"the database is {'unreachable' if connection_trouble else 'refusing changes'} ({_one_line(e)})"


def _cause(e: BaseException | None) -> str:
    """The reason alone, for the log line that says the database is unreachable."""
    return str(e) if isinstance(e, (_NotSent, _NoAnswer)) else _one_line(e)


class _NotSent(Exception):
    """No connection could be had in time: the call never reached the database."""


class _NoAnswer(Exception):
    """The call was sent, and no answer came in time."""


async def _within(conn, call: Awaitable, timeout: float, limit: float):
    """Await ``call`` made on ``conn`` for at most ``timeout`` s; then close ``conn`` and raise _NoAnswer.

    The call is not cancelled: asyncpg would then send a cancel request on
    a new connection, which a hung server does not answer either.  Closing
    the socket ends the wait for certain; whether the statement ran is then
    the database's secret.  ``limit`` is --db-timeout, for the message.
    """
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.0))
    if not done:
        conn.terminate()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise _NoAnswer(f"no answer within {limit:g} s")
    return task.result()


async def _leave_as_is(_conn) -> None:
    """The pool's reset: nothing to undo, since every use of a connection leaves it clean."""


def _host_of(conn) -> str | None:
    """``host:port`` of the server ``conn`` reached, as the URL spells it (None if not known)."""
    # asyncpg keeps the address it dialled (one of the URL's hosts) only as
    # a private attribute; the server's own view would be a bare IP address.
    address = getattr(conn, "_addr", None)
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address) if address else None


class _Asked(NamedTuple):
    """What a process had applied when it asked the database; its answer is checked against it."""

    applied: int  # answers applied by then (PostgresStore._applied)
    head: int
    epoch: int
    title: str | None  # the title it changed last, whose stamp in the database is the witness
    stamp: int | None  # and that change's stamp


class PostgresStore(MemoryStore):
    """A MemoryStore that follows the committed change log of a PostgreSQL database.

    Open it with ``await PostgresStore.open(url)``.  Its write methods are
    coroutines.  ``on_change`` (set by the Board) is called whenever a
    catch-up applied changes, whichever process made them.  ``reachable``
    and ``primary`` (the host of the URL it reaches) are for /healthz.
    """

    on_change: Callable[[], None] | None = None

    def __init__(self, url: str, pool, *, clock: Callable[[], int] | None = None, catch_up_every: float = 1.0,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        # Memory starts empty and older than anything, so the first
        # catch-up loads the whole board.
        super().__init__(clock=lambda: 0)
        self.url = url
        self.timeout = timeout
        self.reachable = True
        self.primary: str | None = None
        self.reconnects = 0
        self._pool = pool
        # For tests: a hand-set clock in place of the database's.
        self._given_clock = clock
        self._catch_up_every = catch_up_every
        self._next_round: asyncio.Future | None = None
        self._catching_up = False
        self._rounds: asyncio.Future | None = None
        # Answers applied so far; an answer asked for before the last one
        # was applied may come from an older snapshot (see _apply).
        self._applied = 0
        self._down_since = 0.0
        self._up_since = 0.0
        self._down_reason = ""
        self._follower: asyncio.Task | None = None
        self._closed = False
        # Until the first catch-up nothing was applied, so nothing can be lost.
        self._loaded = False
        # A catch-up round is settling a cut (_settle_cut): other answers wait.
        self._settling = False
        # An answer showed that the database lost what this process applied;
        # the next round settles it, and answers wait till then.
        self._loss_seen = False

    @classmethod
    async def open(cls, url: str, *, clock=None, catch_up_every: float = 1.0, follow: bool = True,
                   timeout: float = DEFAULT_TIMEOUT) -> "PostgresStore":
        """Connect, create or migrate the schema, load the board and start following it."""
        if asyncpg is None:
            # Named with this Python, so the extra lands where talkserver runs,
            # not in whatever pip is first on the PATH.
            raise StoreOpenError(
                "the PostgreSQL store needs the asyncpg driver: from a checkout, make run-postgres DB=... installs it;"
                f" otherwise {sys.executable} -m pip install 'talkserver[postgres]'"
            )
        try:
            pool = await asyncpg.create_pool(
                # min_size=0: no connection floor kept up in the background,
                # whose failures asyncpg logs with a traceback each time.
                # The no-op reset: every use leaves its connection clean, so
                # a release costs no round trip (asyncpg's reset is a query).
                url, min_size=0, max_size=10, timeout=timeout, command_timeout=None,
                server_settings=SESSION_SETTINGS, reset=_leave_as_is,
            )
        except Exception as e:
            if _unreachable(e) or isinstance(e, ValueError):
                raise StoreOpenError(f"{redact(url)}: cannot connect ({_one_line(e)})") from None
            raise
        store = cls(url, pool, clock=clock, catch_up_every=catch_up_every, timeout=timeout)
        try:
            await store._prepare()
            await store.catch_up()
        except BaseException as e:
            await pool.close()
            if isinstance(e, StoreOpenError):
                raise
            if _unreachable(e) or isinstance(e, StoreWriteFailed):
                raise StoreOpenError(f"{redact(url)}: cannot prepare the database ({_one_line(e)})") from None
            raise
        if follow:
            store._follower = asyncio.ensure_future(store._follow())
        return store

    async def _prepare(self) -> None:
        """Bring the schema to SCHEMA_VERSION and create the head row, once for all processes."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute("CREATE TABLE IF NOT EXISTS talkserver_schema (version integer NOT NULL)")
                version = await conn.fetchval("SELECT max(version) FROM talkserver_schema") or 0
                if version > SCHEMA_VERSION:
                    raise StoreOpenError(
                        f"{redact(self.url)}: schema version {version} is newer than this talkserver knows"
                        f" ({SCHEMA_VERSION}); use a newer talkserver"
                    )
                for number in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[number]:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO talkserver_schema (version) VALUES ($1)", number + 1)
                # A new board's creation time is its first serverTime; cursors
                # from before it (another, wiped board) get a reset.
                now = _DB_CLOCK_MS if self._given_clock is None else str(int(self._given_clock()))
                await conn.execute(
                    # One reading of the clock for both: a cursor at the
                    # creation time must not count as older than history.
                    f"INSERT INTO head (stamp, pruned_through) SELECT created, created FROM (SELECT {now} AS created) AS c"
                    " WHERE NOT EXISTS (SELECT 1 FROM head)"
                )

    # -- writing: one round trip that commits and brings the log back -------

    async def put(self, title: str, presenter: str, summary: str, owner: str | None = None) -> int:
        """Create or replace a talk (a replaced talk loses its comments); None keeps the owner.

        Raises NotTheOwner if ``owner`` is given and the talk has another.
        """
        return await self._write(
            "SELECT * FROM talkserver_put($1, $2, $3, $4, $5, $6, $7)", title, presenter, summary, owner
        )

    async def delete(self, title: str, owner: str | None = None) -> int | None:
        """Delete a talk; returns its stamp, or None if there was no talk.

        ``owner`` (with --protect-talks): refuse with NotTheOwner if the talk
        has another owner.
        """
        try:
            return await self._write("SELECT * FROM talkserver_delete($1, $2, $3, $4, $5)", title, owner)
        except TalkNotFound:
            return None

    async def add_comment(self, title: str, author: str, message: str) -> int:
        """Append a comment; raises TalkNotFound if there is no such talk."""
        return await self._write("SELECT * FROM talkserver_comment($1, $2, $3, $4, $5, $6)", title, author, message)

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
        except asyncpg.InsufficientPrivilegeError:
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

    def _raise_for_write(self, e: BaseException) -> None:
        """Raise what the client of a failed write is told: not saved (503) only when that is certain."""
        if not _unreachable(e):
            raise e
        if isinstance(e, _NotSent) or _rolled_back(e):
            raise StoreWriteFailed(_failure(e)) from None
        raise WriteOutcomeUnknown(_failure(e)) from None

    async def _apply_after_commit(self) -> None:
        try:
            await self.catch_up()
        except StoreWriteFailed as e:
            # Committed all the same: the follower applies it when it can.
            log.info("committed, but could not read the change back yet: %s", e)

    async def _call(self, query: str, *args):
        """Run one statement on a connection of the pool; its first row, within ``self.timeout`` in all."""
        return await self._on_connection(lambda conn: conn.fetchrow(query, *args))

    async def _on_connection(self, work: Callable[..., Awaitable]):
        """Await ``work(conn)`` on a connection of the pool, within ``self.timeout`` in all; return its result.

        Raises _NotSent when no connection could be had in time (nothing
        reached the database), _NoAnswer when the work got no answer in
        time, else the driver's error.  Whether it was answered tells whether
        the database is reachable.
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + self.timeout
        try:
            conn = await asyncio.wait_for(self._pool.acquire(), self.timeout)
        except Exception as e:
            if not _unreachable(e):
                raise
            reason = f"no connection within {self.timeout:g} s" if isinstance(e, asyncio.TimeoutError) else _one_line(e)
            self._set_reachable(False, _NotSent(reason), started)
            raise _NotSent(reason) from None
        # Read now: a connection that breaks later is no longer asyncpg's to tell.
        host = _host_of(conn)
        try:
            result = await _within(conn, work(conn), deadline - loop.time(), self.timeout)
        except Exception as e:
            if _unreachable(e) and not _rolled_back(e):
                self._set_reachable(False, e, started)
            raise
        finally:
            await self._pool.release(conn)
        self._reached(host)
        self._set_reachable(True, None, started)
        return result

    # -- following the database ------------------------------------------------

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
                    answer = await self._call(_CATCH_UP, asked.head, asked.title)
                    # No row: the head row is gone (a wiped table), a cut too.
                    applied = None if answer is None else self._apply(*answer, asked=asked)
                    if applied is None:
                        applied = await self._settle_cut()
                except Exception as e:
                    if not _unreachable(e):
                        log.exception("catch-up failed")
                    this_round.set_exception(StoreWriteFailed(_failure(e)))
                    continue
                this_round.set_result(None)
                if applied and self.on_change is not None:
                    self.on_change()
        finally:
            self._catching_up = False

    def _asking(self) -> "_Asked":
        """What this process has applied now, against which an answer asked for now is checked."""
        return _Asked(self._applied, self.head, self.cuts.epoch, *history.newest_change(self._log))

    def _apply(self, head: int, pruned_through: int, reload: bool, changes: str, epoch: int, witness: int | None,
               *, asked: "_Asked") -> bool | None:
        """Apply one answer of talkserver_changes (a catch-up's or a write's); returns whether memory changed.

        One statement is one snapshot: the head and the rows after the
        cursor come from the same moment, so they are a gap-free prefix.
        Writes and catch-ups run side by side, so an answer may come from a
        snapshot older than one already applied (``asked.applied`` is the
        count of applied answers when it was asked for): then it is old news.

        Returns None, applying nothing, when the answer shows a cut for a
        catch-up round to settle (``_settle_cut``): the database no longer
        holds what this process had applied when it asked (its head, epoch
        or witness went back, stores.history; after a restore a write's
        stamp is the clock, so its head alone may look ahead of ours while
        the witness is gone), or it has cuts this process does not know; or
        a round is settling one now.
        """
        if self._settling or self._loss_seen:
            return None
        if self._loaded and history.lost_history(
            applied_head=asked.head, known_epoch=asked.epoch, newest_stamp=asked.stamp,
            db_head=head, db_pruned_through=pruned_through, db_epoch=epoch, witness=witness,
        ):
            # Kept for the settling round: the next answer may no longer
            # show it (a write of the witness's own title hides it).
            self._loss_seen = True
            return None
        if epoch != self.cuts.epoch:
            return None
        return self._merge(head, pruned_through, reload, changes, stale=asked.applied != self._applied)

    def _merge(self, head: int, pruned_through: int, reload: bool, changes: str, *, stale: bool) -> bool:
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
            MemoryStore.prune(self, pruned_through + 1)
            self.pruned_through = pruned_through
        self.head = head
        return True

    async def _settle_cut(self) -> bool:
        """Settle what an answer showed (see _apply), in a catch-up round; returns whether memory changed.

        On one connection, the catch-up is asked again from where this
        process is now.  A database that no longer holds what it applied is
        a cut: marked once for every server (history.mark_cut) unless another
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
                row = await conn.fetchrow(_CATCH_UP, asked.head, asked.title)
                lost = seen or row is None or (self._loaded and history.lost_history(
                    applied_head=asked.head, known_epoch=asked.epoch, newest_stamp=asked.stamp,
                    db_head=row["db_head"], db_pruned_through=row["db_pruned_through"], db_epoch=row["epoch"],
                    witness=row["witness"],
                ))
                if not lost and row["epoch"] == asked.epoch:
                    return row, lost, None, None  # settled meanwhile, or old news
                cuts = await history.pg_cuts(conn)
                covering = next((c for c in cuts if c.holds(asked.head)), None) if self._loaded else None
                if lost and covering is None:
                    covering = await history.mark_cut(
                        conn, applied_head=asked.head, log=self._log, known=self.cuts, clock_sql=_DB_CLOCK_MS
                    )
                    cuts = await history.pg_cuts(conn)
                if lost or covering is not None:
                    row = await conn.fetchrow(_CATCH_UP, -1, None)
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
                         _describe(self.cuts.noticed))
        head, pruned_through, reload, changes = tuple(row)[:4]
        return self._merge(head, pruned_through, reload, changes, stale=False)

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
                if not _unreachable(e):
                    raise
                if isinstance(e, asyncio.TimeoutError):
                    e = _NoAnswer(f"no answer within {self.timeout:g} s")
                self._set_reachable(False, e, started)
                await asyncio.sleep(RETRY_EVERY)
                continue
            try:
                self._reached(_host_of(conn))
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn: lost.set())
                await _within(conn, conn.add_listener(CHANNEL, self._notified), self.timeout, self.timeout)
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
                        await _within(conn, conn.execute("SELECT 1"), self.timeout, self.timeout)
            except Exception as e:
                if not _unreachable(e):
                    raise
                if isinstance(e, _NoAnswer):
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

    def _reached(self, host: str | None) -> None:
        """A connection reached ``host``: say so if the primary is not the one it was."""
        if host is None:
            return
        if self.primary is None:
            # Debug only: the first log line is the one naming the port
            # bound (the listening line names the store; /healthz the host).
            log.debug("following PostgreSQL at %s", host)
        elif host != self.primary:
            log.warning("the PostgreSQL primary is now %s (was %s)", host, self.primary)
        self.primary = host

    def _set_reachable(self, reachable: bool, error: BaseException | None, started: float) -> None:
        """Record whether the database answers, as told by a call made at ``started``; one log line when that changes.

        A call made before the last change of state tells old news (an answer
        to a call sent before an outage began, a failure of one sent before
        the database came back) and is not heard: else the log would say
        "away" and "back" more than once for one outage.
        """
        if started < (self._up_since if not reachable else self._down_since):
            return
        if reachable != self.reachable and not self._closed:
            if reachable:
                self._up_since = time.monotonic()
                log.warning("PostgreSQL is reachable again after %.1f s; caught up to %d",
                            time.monotonic() - self._down_since, self.head)
            else:
                self._down_since = time.monotonic()
                self._down_reason = _cause(error)
                log.warning("PostgreSQL is unreachable (%s): writes answer 503, or 504 when their outcome is unknown;"
                            " reads are served from memory; trying again every %g s", _cause(error), RETRY_EVERY)
        self.reachable = reachable

    async def talk_count(self) -> int:
        """Talks and tombstones in the database (for talkserver-import's check)."""
        async with self._pool.acquire() as conn:
            return await conn.fetchval("SELECT count(*) FROM change_log")

    async def replace_board(self, talks: list[dict], newer_than: int, owners: dict[str, str] | None = None) -> int:
        """Replace the whole board with ``talks`` (from another store) in one transaction.

        The new head is past ``newer_than`` (the old store's head), the
        database clock and the current head, and history is marked pruned
        up to it: a cursor from either old board gets one clean reset.
        Returns the new head.  Processes following the database reload.
        """
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                head = await conn.fetchval(
                    f"UPDATE head SET stamp = greatest({_DB_CLOCK_MS}, stamp + 1, $1::bigint + 1) RETURNING stamp",
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
        await self._apply_after_commit()
        return head

    async def ping(self) -> bool:
        """Whether the database answers now (for /healthz), within the timeout.

        No while it is known to be away: the follower keeps trying, and says
        when it is back.
        """
        if not self.reachable:
            return False
        try:
            await self._call("SELECT 1")
        except Exception as e:
            if not _unreachable(e):
                raise
            return False
        return True

    def health(self) -> dict:
        """The database's state for /healthz: reachable, and the host of the URL that is primary."""
        return {"reachable": self.reachable, "primary": self.primary}

    def register_metrics(self, metrics) -> None:
        """Add the database's state to ``metrics`` (a talkserver.operation.metrics.Metrics)."""
        metrics.gauge("talkserver_store_reachable",
                      "1 while PostgreSQL answers; 0 from a failed or unanswered call until it answers again.",
                      lambda: int(self.reachable), merge="min")
        metrics.gauge("talkserver_store_reconnects", "Times the PostgreSQL LISTEN connection was lost and made again.",
                      lambda: self.reconnects)

    async def close(self) -> None:
        """Stop following the database and close its connections."""
        self._closed = True
        if self._follower is not None:
            self._follower.cancel()
            try:
                await self._follower
            except (asyncio.CancelledError, Exception):
                pass
        if self._rounds is not None:
            # A round still connecting must finish before the pool closes
            # under it (it takes no longer than the timeout).
            await asyncio.wait({self._rounds}, timeout=self.timeout)
        try:
            await asyncio.wait_for(self._pool.close(), 5)
        except asyncio.TimeoutError:
            self._pool.terminate()


def _describe(cut: history.Cut | None) -> str:
    return "none" if cut is None else f"cut {cut.epoch}: cursors after {cut.survived} up to {cut.cut_through}"


def _one_line(e: BaseException | None) -> str:
    text = " ".join(str(e).split()) if e is not None else ""
    return text or type(e).__name__
