"""Fixtures shared by the tests: a server on a fresh store of each kind.

pytest-tornado serves the ``app`` fixture on a free port and gives
``http_client`` and ``base_url`` for it.  Both store kinds must follow
the same rules, so the tests of the rules run on each.  pytest-tornado looks ``app`` up
by name at run time, so a module that wants each store kind overrides
``store`` with an autouse fixture parametrized over STORE_KINDS.  The poll timeout is short so the
timeout path can be tested without waiting 90 seconds.
"""

import pytest

from talkserver import make_app
from talkserver.stores.sqlite import SQLiteStore
from talkserver.stores import MemoryStore

POLL_TIMEOUT = 1.0


class FakeClock:
    """A wall clock the test sets by hand (it may stand still or go back)."""

    def __init__(self, now=1_000_000):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


STORE_KINDS = ["memory", "sqlite"]


def new_store(kind, tmp_path, clock=None):
    """A new, empty store of ``kind`` (on the wall clock unless ``clock`` is given)."""
    clock_arg = {} if clock is None else {"clock": clock}
    if kind == "memory":
        return MemoryStore(**clock_arg)
    return SQLiteStore(str(tmp_path / "talks.db"), **clock_arg)


@pytest.fixture
def store():
    """An in-memory store; modules that test the rules override it with each kind."""
    store = MemoryStore()
    yield store
    store.close()


@pytest.fixture
def app(store):
    return make_app(store, poll_timeout=POLL_TIMEOUT)


@pytest.fixture
def board(app):
    return app.board
