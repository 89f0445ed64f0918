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
  A write is answered only after its COMMIT returned and a catch-up has
  applied it here.
* **NOTIFY only wakes.**  Every write sends ``NOTIFY talkserver_changes``;
  a dedicated connection LISTENs and starts a catch-up.  The same catch-up
  runs at start, after every reconnect, and on a timer (``catch_up_every``
  seconds), so a notification lost with a connection delays a change and
  never loses it.

When PostgreSQL cannot be reached, writes raise StoreWriteFailed (answered
503, nothing half-done: each write is one transaction), reads and polls go
on from memory, and the follower reconnects with backoff, catching up as
soon as it is back.  docs/storage.md describes the schema and the choices.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from . import history
from .contract import NotTheOwner, StoreOpenError, StoreWriteFailed, TalkNotFound
from .memory import MemoryStore

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
    # Cuts: stretches of history the database lost (stores.history).
    history.PG_MIGRATION,
]
SCHEMA_VERSION = len(MIGRATIONS)

# The head, and every change after the cursor $1 with its talk's state, in
# stamp order.  Tombstones pruned after $1 took deletes with them that the
# reader has not applied: then it gets the whole log (``reload``).  The
# epoch and the witness ($2: the title this process changed last) tell a
# database that went back in time (stores.history).
_CATCH_UP = """
SELECT h.stamp, h.pruned_through, h.pruned_through > $1 AS reload,
  (SELECT coalesce(json_agg(json_build_array(c.title, c.stamp, t.presenter, t.summary, t.owner,
       (SELECT coalesce(json_agg(json_build_array(m.author, m.message) ORDER BY m.id), '[]')
        FROM comments m WHERE m.title = c.title)) ORDER BY c.stamp), '[]')
   FROM change_log c LEFT JOIN talks t ON t.title = c.title
   WHERE c.stamp > CASE WHEN h.pruned_through > $1 THEN -1 ELSE $1 END)::text,
  """ + history.PG_CATCH_UP_COLUMNS + """
FROM head h
"""

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
        e, (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    )


def _failure(e: BaseException) -> str:
    """What went wrong, for the 503 answer and the log."""
    connection_trouble = isinstance(
        e, (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.InternalClientError, asyncpg.CannotConnectNowError, asyncpg.OperatorInterventionError,
            asyncpg.TooManyConnectionsError)
    )
    return f"the database is {'unreachable' if connection_trouble else 'refusing changes'} ({_one_line(e)})"


class PostgresStore(MemoryStore):
    """A MemoryStore that follows the committed change log of a PostgreSQL database.

    Open it with ``await PostgresStore.open(url)``.  Its write methods are
    coroutines.  ``on_change`` (set by the Board) is called whenever a
    catch-up applied changes, whichever process made them.
    """

    on_change: Callable[[], None] | None = None

    def __init__(self, url: str, pool, *, clock: Callable[[], int] | None = None, catch_up_every: float = 1.0) -> None:
        # Memory starts empty and older than anything, so the first
        # catch-up loads the whole board.
        super().__init__(clock=lambda: 0)
        self.url = url
        self.reachable = True
        self.reconnects = 0
        self._pool = pool
        # For tests: a hand-set clock in place of the database's.
        self._given_clock = clock
        self._catch_up_every = catch_up_every
        self._next_round: asyncio.Future | None = None
        self._catching_up = False
        self._follower: asyncio.Task | None = None
        self._closed = False
        # Until the first catch-up nothing was applied, so nothing can be lost.
        self._loaded = False

    @classmethod
    async def open(cls, url: str, *, clock=None, catch_up_every: float = 1.0, follow: bool = True) -> "PostgresStore":
        """Connect, create or migrate the schema, load the board and start following it."""
        if asyncpg is None:
            raise StoreOpenError(
                "the PostgreSQL store needs the asyncpg driver: pip install 'talkserver[postgres]'"
            )
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=10, timeout=10, command_timeout=10, server_settings=SESSION_SETTINGS
            )
        except Exception as e:
            if _unreachable(e) or isinstance(e, ValueError):
                raise StoreOpenError(f"{redact(url)}: cannot connect ({_one_line(e)})") from None
            raise
        store = cls(url, pool, clock=clock, catch_up_every=catch_up_every)
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

    # -- writing: commit in the database, then apply the log -----------------

    async def put(self, title: str, presenter: str, summary: str, owner: str | None = None) -> int:
        """Create or replace a talk (a replaced talk loses its comments); None keeps the owner.

        Raises NotTheOwner if ``owner`` is given and the talk has another.
        """
        return await self._write("SELECT talkserver_put($1, $2, $3, $4, $5)", title, presenter, summary, owner)

    async def delete(self, title: str, owner: str | None = None) -> int | None:
        """Delete a talk; returns its stamp, or None if there was no talk.

        ``owner`` (with --protect-talks): refuse with NotTheOwner if the talk
        has another owner.
        """
        try:
            return await self._write("SELECT talkserver_delete($1, $2, $3)", title, owner)
        except TalkNotFound:
            return None

    async def add_comment(self, title: str, author: str, message: str) -> int:
        """Append a comment; raises TalkNotFound if there is no such talk."""
        return await self._write("SELECT talkserver_comment($1, $2, $3, $4)", title, author, message)

    async def prune(self, older_than: int) -> int:
        """Forget tombstones stamped before ``older_than``; returns how many.

        It takes the head lock like a write, so it runs between writes, and
        every process drops the same tombstones when it next catches up.
        """
        tombstone = "stamp < $1 AND NOT EXISTS (SELECT 1 FROM talks t WHERE t.title = change_log.title)"
        try:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute("SELECT 1 FROM head FOR UPDATE")
                    await conn.execute(
                        "UPDATE head SET pruned_through = greatest(pruned_through,"
                        f" (SELECT coalesce(max(stamp), 0) FROM change_log WHERE {tombstone}))",
                        older_than,
                    )
                    pruned = int((await conn.execute(f"DELETE FROM change_log WHERE {tombstone}", older_than)).split()[-1])
                    await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
        except Exception as e:
            if _unreachable(e):
                raise StoreWriteFailed(_failure(e)) from None
            raise
        await self._apply_after_commit()
        return pruned

    async def _write(self, call: str, *args) -> int:
        """Run one write function (stamp, change, log, NOTIFY, COMMIT); apply it here once committed.

        Raises TalkNotFound when the talk is not there (nothing changed).
        """
        if self._closed:
            raise StoreWriteFailed("the store is closed")
        now = None if self._given_clock is None else self._given_clock()
        try:
            async with self._pool.acquire() as conn:
                stamp = await conn.fetchval(call, *args, now)
        except asyncpg.NoDataFoundError:
            # Rolled back: the talk is not there, perhaps deleted by another
            # process; this one should show that too before it answers.
            await self._apply_after_commit()
            raise TalkNotFound(args[0]) from None
        except asyncpg.InsufficientPrivilegeError:
            await self._apply_after_commit()
            raise NotTheOwner(args[0]) from None
        except Exception as e:
            if _unreachable(e):
                raise StoreWriteFailed(_failure(e)) from None
            raise
        await self._apply_after_commit()
        return stamp

    async def _apply_after_commit(self) -> None:
        try:
            await self.catch_up()
        except StoreWriteFailed as e:
            # Committed all the same: the follower applies it when it can.
            log.warning("committed, but could not read the change back yet: %s", e)

    # -- following the database ------------------------------------------------

    async def catch_up(self) -> None:
        """Apply every change committed before this call (raises StoreWriteFailed if unreachable).

        Catch-ups run one at a time.  A call made while one runs waits for
        the next round, whose snapshot is taken after the call, so a writer
        always sees its own commit applied.
        """
        if self._next_round is None:
            self._next_round = asyncio.get_running_loop().create_future()
            # Nobody may be waiting on a round started by a timer or a NOTIFY.
            self._next_round.add_done_callback(lambda f: f.cancelled() or f.exception())
            if not self._catching_up:
                asyncio.ensure_future(self._run_rounds())
        await asyncio.shield(self._next_round)

    async def _run_rounds(self) -> None:
        self._catching_up = True
        try:
            while self._next_round is not None:
                this_round, self._next_round = self._next_round, None
                try:
                    applied = await self._read_and_apply()
                except Exception as e:
                    if not _unreachable(e):
                        log.exception("catch-up failed")
                    self._set_reachable(False, e)
                    this_round.set_exception(StoreWriteFailed(_failure(e)))
                    continue
                self._set_reachable(True)
                this_round.set_result(None)
                if applied and self.on_change is not None:
                    self.on_change()
        finally:
            self._catching_up = False

    async def _read_and_apply(self) -> bool:
        """One catch-up round; returns whether anything changed in memory.

        One statement is one snapshot: the head and the rows after our head
        come from the same moment, so they are a gap-free prefix.  A
        database found behind what this process applied is a cut
        (``_settle_cut``): the board is then reloaded whole.
        """
        newest_title, newest_stamp = history.newest_change(self._log)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(_CATCH_UP, self.head, newest_title)
            lost = row is None or (self._loaded and history.lost_history(
                applied_head=self.head, known_epoch=self.cuts.epoch, newest_stamp=newest_stamp,
                db_head=row["stamp"], db_pruned_through=row["pruned_through"], db_epoch=row["epoch"],
                witness=row["witness"],
            ))
            if lost or row["epoch"] != self.cuts.epoch:
                row = await self._settle_cut(conn, row, lost)
        head, pruned_through, reload, changes = tuple(row)[:4]
        self._loaded = True
        if head == self.head and pruned_through == self.pruned_through:
            return False
        if reload:
            self._talks, self._log, self._owners = {}, {}, {}
        for title, stamp, presenter, summary, owner, comments in json.loads(changes):
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

    async def _settle_cut(self, conn, row, lost: bool):
        """The database went back (``lost``), or has cuts this process does not know: return the row to apply.

        A cut that covers what this process applied (found here and marked,
        or marked by another server) means a reload of the whole board;
        a cut elsewhere in history only needs knowing.
        """
        cuts = await history.pg_cuts(conn)
        covering = next((c for c in cuts if c.holds(self.head)), None) if self._loaded else None
        if lost and covering is None:
            covering = await history.mark_cut(
                conn, applied_head=self.head, log=self._log, known=self.cuts, clock_sql=_DB_CLOCK_MS
            )
            cuts = await history.pg_cuts(conn)
        self.cuts.replace(cuts)
        self.cuts.noticed = max(cuts, key=lambda c: c.epoch, default=None)
        if not lost and covering is None:
            if self._loaded:
                log.info("the board's history was cut elsewhere (%s); nothing this process applied was lost",
                         _describe(self.cuts.noticed))
            return row
        if covering is not None:
            log.warning(
                "history cut %d: the database lost the changes after %d that this process had applied up to %d"
                " (restored from an older dump? failed over to a standby that lost commits?); reloading the board"
                " from the database; cursors in that stretch get the whole board with reset",
                covering.epoch, covering.survived, self.head,
            )
        else:
            log.warning("the database's head went back, but it holds everything this process applied; reloading")
        return await conn.fetchrow(_CATCH_UP, -1, None)

    async def _follow(self) -> None:
        """LISTEN for changes on a connection of its own; reconnect with backoff when it is lost."""
        delay = 0.1
        first = True
        while not self._closed:
            try:
                conn = await asyncpg.connect(
                    self.url, timeout=5, server_settings=dict(SESSION_SETTINGS, application_name="talkserver-listen")
                )
            except Exception as e:
                if not _unreachable(e):
                    raise
                self._set_reachable(False, e)
                log.warning("cannot reach PostgreSQL (%s); trying again in %.1f s", _one_line(e), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                if not first:
                    log.info("reconnected to PostgreSQL; catching up")
                first, delay = False, 0.1
                self._catch_up_soon()
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), self._catch_up_every)
                    except asyncio.TimeoutError:
                        # The timer: a lost NOTIFY only delays a change.  The
                        # query on the listening connection notices one that
                        # died silently.
                        self._catch_up_soon()
                        await conn.execute("SELECT 1", timeout=5)
            except Exception as e:
                if not _unreachable(e):
                    raise
            finally:
                conn.terminate()
            if not self._closed:
                self.reconnects += 1
                log.warning("lost the PostgreSQL connection that wakes this process; reconnecting")

    def _notified(self, _conn, _pid, _channel, payload: str) -> None:
        # A write made here has been applied before its NOTIFY arrives.
        if not payload.isdigit() or int(payload) > self.head:
            self._catch_up_soon()

    def _catch_up_soon(self) -> None:
        task = asyncio.ensure_future(self.catch_up())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _set_reachable(self, reachable: bool, error: BaseException | None = None) -> None:
        if reachable != self.reachable:
            if reachable:
                log.info("PostgreSQL is reachable again; caught up to %d", self.head)
            else:
                log.warning("PostgreSQL is unreachable (%s): writes answer 503, reads are served from memory",
                            _one_line(error))
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
        """Whether the database answers now (for /healthz)."""
        try:
            async with self._pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1", timeout=2)
        except Exception as e:
            if not _unreachable(e):
                raise
            return False
        return True

    def register_metrics(self, metrics) -> None:
        """Add the database's state to ``metrics`` (a talkserver.metrics.Metrics)."""
        metrics.gauge("talkserver_store_reachable", "1 when the last catch-up from PostgreSQL worked.",
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
        try:
            await asyncio.wait_for(self._pool.close(), 5)
        except asyncio.TimeoutError:
            self._pool.terminate()


def _describe(cut: history.Cut | None) -> str:
    return "none" if cut is None else f"cut {cut.epoch}: cursors after {cut.survived} up to {cut.cut_through}"


def _one_line(e: BaseException | None) -> str:
    text = " ".join(str(e).split()) if e is not None else ""
    return text or type(e).__name__
