"""The stores: where the board's talks and change log live.

    contract.py   what every store promises (Store, Changes, the stamp rule, errors)
    memory.py     MemoryStore: everything in memory, the reference for the rules
    sqlite.py     SQLiteStore: a MemoryStore that commits each change to a file first

One contract test suite (tests/test_store.py) runs against every store.
"""

from .contract import Changes, Store, StoreOpenError, StoreWriteFailed, TalkNotFound, next_stamp, wall_clock_ms
from .memory import MemoryStore
from .sqlite import SYNC_MODES, SQLiteStore

__all__ = [
    "Changes",
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "StoreOpenError",
    "StoreWriteFailed",
    "SYNC_MODES",
    "TalkNotFound",
    "next_stamp",
    "wall_clock_ms",
]
