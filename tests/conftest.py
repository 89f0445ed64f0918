"""Fixtures shared by the tests: a server on a fresh store of each kind, ports, clients, passwords.

The PostgreSQL store runs in a throwaway cluster started once per session
(tests/postgres.py), with a new database per test.  pytest-tornado serves
the ``app`` fixture on a port of its own and gives ``http_client`` and
``base_url`` for it.  Every store kind must follow the same rules, so the
tests of the rules run on each: a module overrides ``store`` with
``each_store`` (autouse when some of its tests reach the server only
through ``http_client``, since pytest-tornado looks ``app`` up by name at
run time).  The poll timeout is short (harness.POLL_TIMEOUT) so the
timeout path can be tested without waiting 90 seconds.  Fixtures reach
the tests through pytest only: no test module imports this one.  The
helpers themselves live in tests/harness.py, and the stores of each kind
in tests/store_kinds.py (docs/testing.md).
"""

import gc

import pytest
from tornado.httpclient import AsyncHTTPClient

# Helpers whose asserts should explain themselves like the tests' own.
pytest.register_assert_rewrite("tests.consistency", "tests.follower", "tests.harness")

from talkserver import make_app  # noqa: E402
from talkserver.stores import MemoryStore
from talkserver.testing.cluster import Cluster

from .harness import PASSWORD, POLL_TIMEOUT, FrozenClock, running_servers, stop_leftovers, write_passwords
from .store_kinds import STORE_KINDS, close_store, new_store


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


@pytest.fixture(scope="session")
def postgres_cluster():
    """A PostgreSQL cluster for the whole session, removed at the end."""
    cluster = Cluster()
    yield cluster
    cluster.destroy()


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
