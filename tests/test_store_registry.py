"""Which store a --db value opens (talkserver.stores.registry), and the one asynchronous contract they share."""

import subprocess
import sys

import pytest

from talkserver.stores import MemoryStore, Settings, SQLiteStore, StoreOpenError, open_store, registry
from talkserver.stores.postgres import PostgresStore


class DemoStore(MemoryStore):
    """A store of a kind talkserver does not ship, registered by one line in a test."""

    @classmethod
    async def open(cls, db, settings=Settings()):
        store = cls()
        store.opened_as = db
        return store


@pytest.mark.gen_test
async def test_memory_names_the_memory_store(io_loop):
    store = await open_store(":memory:")
    assert type(store) is MemoryStore
    await store.close()


@pytest.mark.gen_test
async def test_a_file_path_names_the_sqlite_store_with_the_sync_setting(tmp_path):
    store = await open_store(str(tmp_path / "talks.db"), Settings(sync="full"))
    try:
        assert type(store) is SQLiteStore
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        await store.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_both_postgresql_schemes_name_the_postgresql_store(postgres_cluster, scheme):
    url = postgres_cluster.new_database().replace("postgresql://", f"{scheme}://", 1)
    store = await open_store(url, Settings(follow=False, timeout=3))
    try:
        assert type(store) is PostgresStore and store.timeout == 3
        assert store.health() == {"reachable": True, "primary": f"127.0.0.1:{postgres_cluster.port}"}
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_an_unknown_scheme_is_refused_with_one_line_naming_it():
    with pytest.raises(StoreOpenError, match=r"^mysql:// is not a store talkserver knows: .*postgresql://"):
        await open_store("mysql://ann@db.example/talks")
    assert registry.check("MySQL://db.example/talks").startswith("mysql:// is not a store")
    assert registry.check("talks.db") is None and registry.check(":memory:") is None


def test_logs_show_a_postgresql_url_without_its_password():
    assert registry.display("postgresql://ann:secret@db.example/talks") == "postgresql://ann:***@db.example/talks"
    assert registry.display("talks.db") == "talks.db"


@pytest.mark.gen_test
async def test_a_new_kind_of_store_is_one_class_and_one_line_in_the_table(monkeypatch):
    monkeypatch.setitem(registry.STORES, "demo", f"{__name__}:DemoStore")

    assert registry.check("demo://anything") is None
    assert registry.store_class("demo://anything").shared is False
    store = await open_store("demo://anything")
    assert type(store) is DemoStore and store.opened_as == "demo://anything"
    await store.put("Registered", "Ann", "one line")
    assert [t["title"] for t in store.all_talks()] == ["Registered"]


def test_the_postgresql_store_is_imported_only_when_db_names_it():
    # asyncpg blocked, as where the optional extra is not installed.
    code = (
        "import asyncio, sys; sys.modules['asyncpg'] = None\n"
        "from talkserver.stores import open_store\n"
        "from talkserver.command import cli, options, importer\n"
        "from talkserver.web import handlers\n"
        "store = asyncio.run(open_store(':memory:'))\n"
        "print(type(store).__name__, 'talkserver.stores.postgres' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["MemoryStore", "False"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_local_stores_writes_finish_without_suspending(kind, tmp_path):
    """The contract's coroutines; a local store's run to the end at the first step (no event loop needed)."""
    store = MemoryStore() if kind == "memory" else SQLiteStore(str(tmp_path / "talks.db"))
    woken = []
    store.on_change = lambda: woken.append(store.head)

    def run(coroutine):
        with pytest.raises(StopIteration) as done:
            coroutine.send(None)
        return done.value.value

    stamps = [run(store.put("a", "p", "s")), run(store.add_comment("a", "ann", "hi")), run(store.delete("a"))]
    assert run(store.delete("a")) is None  # no change: no stamp, nobody woken
    assert run(store.prune(store.head + 1)) == 1
    # Every change applied was told to on_change, once, with the head already moved.
    assert stamps == sorted(set(stamps)) and woken == stamps
    assert run(store.close()) is None
