"""A new store of each kind, for the tests that must hold on every store.

conftest.py's ``each_store`` fixture uses these, and so do the tests that
open several stores of one kind themselves (tests/test_store.py,
tests/test_follow_contract.py).  A PostgreSQL store gets a database of its
own in the session's cluster (the ``postgres_cluster`` fixture).
"""

from talkserver.stores import MemoryStore
from talkserver.stores.postgres import PostgresStore
from talkserver.stores.sqlite import SQLiteStore

from .postgres import BlockingStore

STORE_KINDS = ["memory", "sqlite", "postgres"]


def new_store(kind, tmp_path, clock=None, *, request=None):
    """A new, empty store of ``kind`` (on the wall clock unless ``clock`` is given).

    A PostgreSQL store (which needs the test's ``request``) gets a database
    of its own.  It runs on the test's IOLoop when the test has one (the
    HTTP tests), else as a BlockingStore for plain synchronous tests.
    Close it with ``close_store``.
    """
    clock_arg = {} if clock is None else {"clock": clock}
    if kind == "memory":
        return MemoryStore(**clock_arg)
    if kind == "sqlite":
        return SQLiteStore(str(tmp_path / "talks.db"), **clock_arg)
    url = request.getfixturevalue("postgres_cluster").new_database()
    if "io_loop" not in request.fixturenames:
        return BlockingStore(url, clock)
    io_loop = request.getfixturevalue("io_loop")
    return io_loop.run_sync(lambda: PostgresStore.open(url, clock=clock, catch_up_every=0.2))


def close_store(store, request):
    """Close a store from ``new_store``, whichever kind (on the test's IOLoop: closing is a coroutine)."""
    if isinstance(store, BlockingStore):
        store.close()
    else:
        request.getfixturevalue("io_loop").run_sync(store.close)
