"""Fixtures shared by the tests: a server on a fresh in-memory store.

pytest-tornado serves the ``app`` fixture on a free port and gives
``http_client`` and ``base_url`` for it.  The poll timeout is short so the
timeout path can be tested without waiting 90 seconds.
"""

import pytest

from talkserver import make_app
from talkserver.store import MemoryStore

POLL_TIMEOUT = 1.0


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def app(store):
    return make_app(store, poll_timeout=POLL_TIMEOUT)


@pytest.fixture
def board(app):
    return app.board
