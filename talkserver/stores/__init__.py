"""The stores: where the board's talks and change log live.

    contract.py   what every store promises (Store, Changes, the stamp rule, errors)
    memory.py     MemoryStore: everything in memory, the reference for the rules
    sqlite.py     SQLiteStore: a MemoryStore that commits each change to a file first
    postgres.py   PostgresStore: a MemoryStore that follows a PostgreSQL database's
                  committed log, so many processes and hosts share one board
    history.py    cuts: stretches of history a database lost (a restore, a failover),
                  whose cursors get a reset on every server of the board

One contract test suite (tests/test_store.py) runs against every store.
"""

from talkserver.stores.contract import (
    Changes, NotTheOwner, Store, StoreOpenError, StoreWriteFailed, TalkNotFound, WriteOutcomeUnknown,
    next_stamp, wall_clock_ms,
)
from talkserver.stores.memory import MemoryStore
from talkserver.stores.postgres import PostgresStore, is_postgres_url
from talkserver.stores.sqlite import SYNC_MODES, SQLiteStore

__all__ = [
    "Changes",
    "MemoryStore",
    "NotTheOwner",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoreOpenError",
    "StoreWriteFailed",
    "SYNC_MODES",
    "TalkNotFound",
    "WriteOutcomeUnknown",
    "is_postgres_url",
    "next_stamp",
    "wall_clock_ms",
]
