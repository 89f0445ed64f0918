"""The durable store: talks, comments and the change log in an SQLite file.

SQLiteStore is a MemoryStore that commits every change to an SQLite
database before it makes it.  The whole state is loaded into memory when the
file is opened, so reads, ``changes_since`` and the long-poll hot path never
touch SQL.  A write runs one transaction (the talk or comment, the change-log
row, the new head) and changes memory only after COMMIT has returned, so a
failed commit (disk full, a file gone read-only) changes nothing and raises
StoreWriteFailed; the handlers answer it with 503.

``head``, the last handed-out server time, is stored with every change, so
after a restart new stamps still follow ``max(wall clock, head + 1)`` and a
cursor from before the restart gets exactly the changes after it.

The file is in WAL mode.  ``sync="normal"`` keeps every commit through a
crash of the process (SIGKILL included); ``sync="full"`` also through a
power loss.  docs/storage.md explains the choice, backups and retention.

Before each write the store checks that the file at its path is still the
one it has open; if the file was removed or replaced, writes are refused
(StoreWriteFailed, so 503) and the error is logged at each refusal.

The schema version is ``PRAGMA user_version``, the number of MIGRATIONS
applied.  A file that is not ours to use (not SQLite, corrupt, from a newer
talkserver, not writable, held by another server) raises StoreOpenError
before anything in it has been changed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from talkserver.stores import history
from talkserver.stores.contract import (
    Changes, Settings, StoreOpenError, StoreWriteFailed, TalkNotFound, next_stamp, wall_clock_ms,
)
from talkserver.stores.memory import MemoryStore

log = logging.getLogger("talkserver")

SQLITE_HEADER = b"SQLite format 3\x00"
SYNC_MODES = ("normal", "full")

# Each migration is the list of statements that takes the schema from
# version N to N + 1; the position in the list is the version it leaves.
# Only ever append: a file records how many of these it has had.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE talks (title TEXT PRIMARY KEY, presenter TEXT NOT NULL, summary TEXT NOT NULL)",
        # Comments are kept in the order they were made: by id.
        "CREATE TABLE comments (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
        " author TEXT NOT NULL, message TEXT NOT NULL)",
        "CREATE INDEX comments_by_talk ON comments (title, id)",
        # The newest change per title; a title with no talk is a tombstone.
        "CREATE TABLE change_log (title TEXT PRIMARY KEY, stamp INTEGER NOT NULL UNIQUE)",
        # 'head' (the last handed-out server time) and 'pruned_through'.
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('pruned_through', 0)",
    ],
    # --protect-talks: the owner is stored with the talk, so it survives restarts.
    ["ALTER TABLE talks ADD COLUMN owner TEXT"],
    # Stretches of stamps a restored (older) copy of the file never had.
    history.SQLITE_MIGRATION,
]
SCHEMA_VERSION = len(MIGRATIONS)

_SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


class SQLiteStore(MemoryStore):
    """A MemoryStore whose every change is first committed to an SQLite file."""

    def __init__(self, path: str, *, sync: str = "normal", clock=wall_clock_ms) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}, not {sync!r}")
        self.path = path
        self._wall_clock = clock
        # MemoryStore stamps with max(its clock, head + 1).  Its clock here
        # hands out the stamp that has just been committed, so memory takes
        # exactly the stamp the database has.
        self._committed = clock()
        super().__init__(clock=lambda: self._committed)
        self._lock, self._db = _open(path, sync)
        try:
            self._load()
        # KeyError: a comment on a talk that is not there (a hand-edited file).
        except (sqlite3.Error, StoreWriteFailed, KeyError) as e:
            self._release()
            raise StoreOpenError(f"{path}: cannot load the database ({e})") from None

    @classmethod
    async def open(cls, db: str, settings: Settings = Settings()) -> "SQLiteStore":
        """Open (or create) the file ``--db`` names; StoreOpenError if it is not ours to use."""
        return cls(db, sync=settings.sync)

    def _load(self) -> None:
        db = self._db
        talks = {}
        for title, presenter, summary, owner in db.execute("SELECT title, presenter, summary, owner FROM talks"):
            talks[title] = {"title": title, "presenter": presenter, "summary": summary, "comments": []}
            if owner is not None:
                self._owners[title] = owner
        for title, author, message in db.execute("SELECT title, author, message FROM comments ORDER BY id"):
            talks[title]["comments"].append({"author": author, "message": message})
        self._talks = talks
        self._log = dict(db.execute("SELECT title, stamp FROM change_log ORDER BY stamp"))
        meta = dict(db.execute("SELECT key, value FROM meta"))
        if "head" in meta:
            self.head = meta["head"]
            self.pruned_through = meta.get("pruned_through", 0)
        else:
            # A new file: its creation time is the first serverTime handed
            # out, so it is stored before anyone can see it; and, as in
            # MemoryStore, cursors from before it get a reset.
            self._transaction([(_SET_META, ("head", self.head)), (_SET_META, ("pruned_through", self.head))])
        self.cuts.replace(history.sqlite_cuts(db.execute("SELECT survived, cut_through FROM cuts")))
        self.cuts.forget_through(self.pruned_through)
        # An existing file may be an older copy of the board (restored from
        # a backup): clients may hold stamps past its head that it never
        # had.  The first write records the stretch up to its own stamp.
        self._opened_head: int | None = self.head if "head" in meta else None
        self._warned = False

    def changes_since(self, cursor: int) -> Changes:
        """As MemoryStore; the first cursor this file never handed out is logged (a restored file?)."""
        changes = super().changes_since(cursor)
        if changes.reset and not self._warned and cursor > self.pruned_through:
            cut = self.cuts.lost(cursor)
            if cut is not None or cursor > self.head:
                # Once per process: clients can send any cursor they like.
                self._warned = True
                where = (
                    f"between {cut.survived} and {cut.cut_through + 1}" if cut is not None
                    else f"after this database's newest, {self.head}"
                )
                log.warning(
                    "%s: history cut? a client holds stamp %d, %s, which this file never had"
                    " (restored from an older copy?); such clients get the whole board with reset",
                    self.path, cursor, where,
                )
        return changes

    # -- writing: commit first, then the same change in memory -------------

    async def put(self, title: str, presenter: str, summary: str, owner: str | None = None) -> int:
        """Create or replace a talk (a replaced talk loses its comments); None keeps the owner."""
        self._commit_change(title, [
            (
                "INSERT INTO talks (title, presenter, summary, owner) VALUES (?, ?, ?, ?) ON CONFLICT (title)"
                " DO UPDATE SET presenter = excluded.presenter, summary = excluded.summary,"
                " owner = coalesce(excluded.owner, talks.owner)",
                (title, presenter, summary, owner),
            ),
            ("DELETE FROM comments WHERE title = ?", (title,)),
        ])
        return self._put(title, presenter, summary, owner)

    async def delete(self, title: str, owner: str | None = None) -> int | None:
        """Delete a talk; returns its stamp, or None if there was no talk (``owner``: see MemoryStore)."""
        if self.get(title) is None:
            return None
        self._commit_change(title, [
            ("DELETE FROM talks WHERE title = ?", (title,)),
            ("DELETE FROM comments WHERE title = ?", (title,)),
        ])
        return self._delete(title)

    async def add_comment(self, title: str, author: str, message: str) -> int:
        """Append a comment; raises TalkNotFound if there is no such talk."""
        if self.get(title) is None:
            raise TalkNotFound(title)
        self._commit_change(title, [
            ("INSERT INTO comments (title, author, message) VALUES (?, ?, ?)", (title, author, message)),
        ])
        return self._add_comment(title, author, message)

    async def prune(self, older_than: int) -> int:
        """Forget tombstones stamped before ``older_than``; returns how many."""
        tombstone = "stamp < ? AND title NOT IN (SELECT title FROM talks)"
        self._transaction([
            (
                "UPDATE meta SET value = max(value, (SELECT coalesce(max(stamp), 0) FROM change_log"
                f" WHERE {tombstone})) WHERE key = 'pruned_through'",
                (older_than,),
            ),
            (f"DELETE FROM change_log WHERE {tombstone}", (older_than,)),
            # Cuts wholly older than pruned history tell nothing more.
            ("DELETE FROM cuts WHERE cut_through < (SELECT value FROM meta WHERE key = 'pruned_through')", ()),
        ])
        return self._forget_tombstones(older_than)

    async def close(self) -> None:
        """Close the database and let another server open the file."""
        self._release()

    def _release(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            # Only after the connection: closing any descriptor of the file
            # drops the POSIX locks SQLite holds on it.
            self._lock.close()
            self._lock = None

    def _commit_change(self, title: str, statements: list[tuple[str, tuple]]) -> None:
        """Commit ``statements`` with the change-log row and head of the next stamp.

        The first change after opening also records the stamps between the
        file's head and its own as a cut (see stores.history).
        """
        stamp = next_stamp(self._wall_clock(), self.head)
        cut = None
        if self._opened_head is not None and stamp - 1 > self._opened_head:
            cut = history.Cut(0, self._opened_head, stamp - 1)
            statements = statements + [
                ("INSERT INTO cuts (survived, cut_through) VALUES (?, ?)", (cut.survived, cut.cut_through)),
            ]
        self._transaction(statements + [
            (
                "INSERT INTO change_log (title, stamp) VALUES (?, ?)"
                " ON CONFLICT (title) DO UPDATE SET stamp = excluded.stamp",
                (title, stamp),
            ),
            (_SET_META, ("head", stamp)),
        ])
        self._committed = stamp
        self._opened_head = None
        if cut is not None:
            self.cuts.add(cut)

    def _transaction(self, statements: list[tuple[str, tuple]]) -> None:
        """Run ``statements`` as one committed transaction, or raise StoreWriteFailed."""
        db = self._db
        if db is None:
            raise StoreWriteFailed("the store is closed")
        self._check_still_at_path()
        try:
            db.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                db.execute(sql, args)
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.rollback()
            raise StoreWriteFailed(str(e)) from e


    def _check_still_at_path(self) -> None:
        """Refuse to write when the open file is no longer the one at ``path``.

        A database removed or replaced under a running server would take
        every later write with it (or hide it under the new file): each
        would be acknowledged and then gone after a restart.  One stat per
        write (microseconds) tells.
        """
        opened = os.fstat(self._lock.fileno())
        try:
            current = os.stat(self.path)
            moved = (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino)
        except OSError:
            moved = True
        if moved:
            message = (
                "the database file was removed or replaced while the server was running; "
                "writes are refused until the server is restarted"
            )
            log.error("%s: %s (a write was refused with 503)", self.path, message)
            raise StoreWriteFailed(message)


def _open(path: str, sync: str) -> tuple:
    """(lock file, connection) for ``path``, checked, locked and migrated.

    Every check that can refuse the file runs before the first write, so a
    refused file is left exactly as it was.
    """
    exists = _check_file(path)
    uri = f"file:{quote(os.path.abspath(path))}?mode={'rw' if exists else 'rwc'}"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreOpenError(f"{path}: cannot open the database ({e})") from None
    lock = None
    try:
        lock = _lock_file(path)
        _check_database(db, path)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {sync.upper()}")
        _migrate(db, path)
    except BaseException as e:
        db.close()
        if lock is not None:
            lock.close()
        if isinstance(e, sqlite3.Error):
            raise StoreOpenError(f"{path}: cannot prepare the database ({e})") from None
        raise
    return lock, db


def _check_file(path: str) -> bool:
    """Whether ``path`` exists; refuses anything that is not an SQLite file or cannot be made one."""
    file = Path(path)
    if not file.exists():
        if not file.parent.is_dir():
            raise StoreOpenError(f"{path}: cannot create the database: {file.parent} is not a directory")
        return False
    if not file.is_file():
        raise StoreOpenError(f"{path}: not a regular file")
    try:
        with file.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise StoreOpenError(f"{path}: cannot read the file ({e.strerror})") from None
    # SQLite treats an empty file as an empty database.
    if header and header != SQLITE_HEADER:
        raise StoreOpenError(f"{path}: not an SQLite database")
    if not os.access(path, os.W_OK) or not os.access(file.parent, os.W_OK):
        raise StoreOpenError(f"{path}: cannot write the database or its directory (permission denied)")
    return True


def _lock_file(path: str):
    """An exclusive lock on the file: two servers on one file would each miss the other's changes."""
    lock = open(path, "rb")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreOpenError(f"{path}: in use by another talkserver") from None
    return lock


def _check_database(db: sqlite3.Connection, path: str) -> None:
    """Refuse a newer schema, a damaged file or a read-only one, without writing."""
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"{path}: schema version {version} is newer than this talkserver knows"
                f" ({SCHEMA_VERSION}); use a newer talkserver"
            )
        problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as e:
        damaged = e.sqlite_errorname in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
        raise StoreOpenError(f"{path}: {'corrupt database' if damaged else 'cannot read the database'} ({e})") from None
    if problems != ["ok"]:
        # quick_check reports over several lines; the operator gets one.
        raise StoreOpenError(f"{path}: corrupt database ({' '.join(problems[0].split())})")
    try:
        # Takes the write lock without writing: fails on a read-only file.
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except sqlite3.Error as e:
        raise StoreOpenError(f"{path}: cannot write the database ({e})") from None


def _migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the schema to SCHEMA_VERSION, one transaction per migration."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number in range(version, SCHEMA_VERSION):
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[number]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {number + 1}")
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.rollback()
            raise StoreOpenError(f"{path}: migration to schema version {number + 1} failed ({e})") from None
