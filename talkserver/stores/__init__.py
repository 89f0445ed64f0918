"""The stores: where the board's talks and change log live.

    contract.py   what every store promises (Store, Changes, Settings, the stamp rule, errors)
    registry.py   which store a --db value names: one table from its scheme to the class
    memory.py     MemoryStore: everything in memory, the reference for the rules
    sqlite.py     SQLiteStore: a MemoryStore that commits each change to a file first
    postgres/     PostgresStore: a MemoryStore that follows a PostgreSQL database's
                  committed log, so many processes and hosts share one board
                  (imported only when --db names it: asyncpg is an optional extra)
    history.py    cuts: stretches of history a database lost (a restore, a failover),
                  whose cursors get a reset on every server of the board

Open a store with ``await open_store(db, settings)``; nothing outside this
package names a kind of store.  Adding one is one module (a class following
contract.Store, with its ``open``) plus one line in registry.STORES.  One
contract test suite (tests/test_store.py) runs against every store.
"""

from talkserver.stores import registry
from talkserver.stores.contract import (
    Changes, NotTheOwner, Settings, Store, StoreOpenError, StoreWriteFailed, TalkNotFound, WriteOutcomeUnknown,
    next_stamp, wall_clock_ms,
)
from talkserver.stores.memory import MemoryStore
from talkserver.stores.registry import UnknownStore, open_store, store_class
from talkserver.stores.sqlite import SYNC_MODES, SQLiteStore

__all__ = [
    "Changes",
    "MemoryStore",
    "NotTheOwner",
    "SQLiteStore",
    "Settings",
    "Store",
    "StoreOpenError",
    "StoreWriteFailed",
    "SYNC_MODES",
    "TalkNotFound",
    "UnknownStore",
    "WriteOutcomeUnknown",
    "next_stamp",
    "open_store",
    "registry",
    "store_class",
    "wall_clock_ms",
]
