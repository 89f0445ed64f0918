"""PostgresStore: the shared store, assembled from its parts; opening and closing it.

The class holds the state its parts share (set up in ``__init__``, so a
reader finds every attribute here) and takes its behaviour from them:
connection (calls and health), writes, follower (catch-up and LISTEN) and
cuts (settling a history cut), over a MemoryStore that holds the board.
"""

from __future__ import annotations

import asyncio
from typing import Callable, ClassVar

from talkserver.stores.contract import Settings, StoreOpenError, StoreWriteFailed
from talkserver.stores.memory import MemoryStore
from talkserver.stores.postgres import schema
from talkserver.stores.postgres.connection import Connection, one_line, open_pool, redact, unreachable
from talkserver.stores.postgres.cuts import CutSettling
from talkserver.stores.postgres.follower import Follower
from talkserver.stores.postgres.writes import Writes


class PostgresStore(Writes, Follower, CutSettling, Connection, MemoryStore):
    """A MemoryStore that follows the committed change log of a PostgreSQL database.

    Open it with ``await PostgresStore.open(url)``.  ``on_change`` (set by
    the Board) is called whenever a catch-up applied changes, whichever
    process made them.  ``reachable`` and ``primary`` (the host of the URL
    it reaches) are for /healthz.
    """

    shared: ClassVar[bool] = True
    on_change: Callable[[], None] | None = None

    def __init__(self, url: str, pool, *, clock: Callable[[], int] | None = None, catch_up_every: float = 1.0,
                 timeout: float = Settings.timeout) -> None:
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
        # was applied may come from an older snapshot (see Follower._apply).
        self._applied = 0
        self._down_since = 0.0
        self._up_since = 0.0
        self._down_reason = ""
        # The privileges last logged as missing (Writes._missing_privileges).
        self._privileges_missing = ""
        self._follower: asyncio.Task | None = None
        self._closed = False
        # While open() runs, a failure is open()'s to report (one line, or
        # --db-wait's), not a change of the database's state to log.
        self._opening = True
        # Until the first catch-up nothing was applied, so nothing can be lost.
        self._loaded = False
        # The database's history id of ``head`` (stores.postgres.cuts): the
        # witness that the database still holds what this process applied.
        self._head_id: int | None = None
        # A catch-up round is settling a cut (CutSettling._settle_cut): other answers wait.
        self._settling = False
        # An answer showed that the database lost what this process applied;
        # the next round settles it, and answers wait till then.
        self._loss_seen = False

    @staticmethod
    def check_db(db: str) -> str | None:
        """Nothing to refuse before connecting: the driver reads the URL (a bad one: StoreOpenError, one line)."""
        return None

    @staticmethod
    def display(db: str) -> str:
        """The URL without its password."""
        return redact(db)

    @classmethod
    async def open(cls, url: str, settings: Settings = Settings(), *, clock=None,
                   catch_up_every: float = 1.0) -> "PostgresStore":
        """Connect, create or migrate the schema, load the board and (``settings.follow``) start following it.

        ``clock`` (tests): stamps from it instead of the database's clock.
        """
        pool = await open_pool(url, settings.timeout)
        store = cls(url, pool, clock=clock, catch_up_every=catch_up_every, timeout=settings.timeout)
        try:
            created = schema.DB_CLOCK_MS if clock is None else str(int(clock()))
            await store._on_connection(lambda conn: schema.prepare(conn, created))
            await store.catch_up()
        except BaseException as e:
            await pool.close()
            if isinstance(e, schema.NewerSchema):
                raise StoreOpenError(f"{redact(url)}: {e}; use a newer talkserver") from None
            if unreachable(e) or isinstance(e, StoreWriteFailed):
                raise StoreOpenError(f"{redact(url)}: cannot prepare the database ({one_line(e)})") from None
            raise
        store._opening = False
        if settings.follow:
            store._follower = asyncio.ensure_future(store._follow())
        return store

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

