"""Fixtures shared by the tests: a server on a fresh store of each kind, ports, clients, passwords.

The PostgreSQL store runs in a throwaway cluster started once per session
(tests/postgres.py), with a new database per test.  pytest-tornado serves
the ``app`` fixture on a port of its own and gives ``http_client`` and
``base_url`` for it.  Every store kind must follow the same rules, so the
tests of the rules run on each: a module overrides ``store`` with
``each_store`` (autouse when some of its tests reach the server only
through ``http_client``, since pytest-tornado looks ``app`` up by name at
run time).  The poll timeout is short so the timeout path can be tested
without waiting 90 seconds.  The helpers themselves live in
tests/harness.py (docs/testing.md).
"""

import gc

import pytest
from tornado.httpclient import AsyncHTTPClient

# Helpers whose asserts should explain themselves like the tests' own.
pytest.register_assert_rewrite("tests.consistency", "tests.follower", "tests.harness")

from talkserver import make_app  # noqa: E402
from talkserver.stores import MemoryStore, SQLiteStore
from talkserver.stores.postgres import PostgresStore

from .harness import FrozenClock, running_servers, stop_leftovers, write_passwords
from .postgres import BlockingStore, Cluster

POLL_TIMEOUT = 1.0
# The group password of ``password_file`` (not ASCII, to check the decoding too).
PASSWORD = "s3cret ünïcode"


@pytest.fixture(autouse=True)
def no_server_left_running():
    """Whatever way a test ends, no talkserver subprocess it started outlives it
    (those of module- or session-wide fixtures, started before it, are kept)."""
    before = running_servers()
    yield
    stop_leftovers(kept=before)


@pytest.fixture
def clock():
    """A wall clock the test sets by hand (it may stand still or go back)."""
    return FrozenClock(1_000_000)


@pytest.fixture
def port(http_server, http_port):
    """The port of the live server pytest-tornado runs for ``app``."""
    return http_port


@pytest.fixture
def pool(io_loop, http_server):
    """An HTTP client that can hold many long polls at once."""
    client = AsyncHTTPClient(force_instance=True, max_clients=200)
    yield client
    client.close()


@pytest.fixture
def password_file(tmp_path):
    """A password file with one name, ``ada``, whose password is PASSWORD."""
    return write_passwords(tmp_path / "passwords", {"ada": PASSWORD})


STORE_KINDS = ["memory", "sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_cluster():
    """A PostgreSQL cluster for the whole session, removed at the end."""
    cluster = Cluster()
    yield cluster
    cluster.destroy()


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


@pytest.fixture
def store_kind(request):
    """The kind of ``each_store``: each of STORE_KINDS for a test that names it (see below), else memory."""
    return getattr(request, "param", "memory")


def pytest_generate_tests(metafunc):
    # Only here does pytest see which tests need each_store (it looks the
    # ``app`` of pytest-tornado's server up at run time): those get every kind.
    if "each_store" in metafunc.fixturenames:
        metafunc.parametrize("store_kind", STORE_KINDS, indirect=True)


@pytest.fixture
def each_store(request, tmp_path, store_kind, io_loop):
    """A new store of each kind in turn; tests marked ``frozen_clock`` get one on a clock that never moves.

    A module whose tests must hold on every store overrides ``store`` with
    it; a test of such a module that names neither ``store``, ``board`` nor
    ``app`` (it reaches the server only through ``http_client``) runs on
    memory only.
    """
    clock = FrozenClock() if request.node.get_closest_marker("frozen_clock") else None
    store = new_store(store_kind, tmp_path, clock, request=request)
    yield store
    close_store(store, request)


def close_store(store, request):
    """Close a store from ``new_store``, whichever kind (on the test's IOLoop: closing is a coroutine)."""
    if isinstance(store, BlockingStore):
        store.close()
    else:
        request.getfixturevalue("io_loop").run_sync(store.close)


@pytest.fixture
def store(io_loop):
    """An in-memory store; modules that test the rules override it with each kind."""
    store = MemoryStore()
    yield store
    io_loop.run_sync(store.close)


@pytest.fixture
def app(store):
    return make_app(store, poll_timeout=POLL_TIMEOUT)


@pytest.fixture
def board(app):
    return app.board


@pytest.fixture
def no_collector():
    """The cyclic garbage collector off for the test (after one full collection),
    so what a test leaves in cycles stays for it to find; back as it was after."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
        gc.collect()
