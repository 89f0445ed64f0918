"""The SQLite store: what it keeps across a reopen, and the files it refuses.

The store's rules themselves are MemoryStore's (tests/test_store.py); here
SQLiteStore must follow them step by step and keep them across restarts.
"""

import asyncio
import json
import random
import sqlite3

import pytest

from talkserver.stores.sqlite import SCHEMA_VERSION, SQLiteStore, StoreOpenError, StoreWriteFailed
from talkserver.stores import MemoryStore, TalkNotFound

from .harness import run_talkserver


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "talks.db"


@pytest.fixture
def store(db_path, clock, io_loop):
    # Also the store behind conftest's app, so the HTTP tests here run on SQLite.
    store = SQLiteStore(str(db_path), clock=clock)
    yield store
    io_loop.run_sync(store.close)


async def reopen(store, clock):
    """Close ``store`` and open its file again, as a restarted server does."""
    await store.close()
    return SQLiteStore(store.path, clock=clock)


def state(store, cursors=()):
    """Everything a client can see of a store."""
    return {
        "head": store.head,
        "talks": store.all_talks(),
        "changes": {c: store.changes_since(c) for c in cursors},
    }


# -- keeping everything across a reopen ----------------------------------------


@pytest.mark.gen_test
async def test_a_reopened_store_has_every_talk_comment_tombstone_and_the_head(store, clock):
    await store.put("Unicycling", "Ann", "One wheel")
    await store.add_comment("Unicycling", "Bob", "first")
    await store.add_comment("Unicycling", "Cy", "second")
    await store.put("Knitting", "Dee", "Two needles")
    await store.delete("Knitting")
    await store.put("Cooking", "Eve", "Pasta ✓ 🍝")
    cursors = [0, 1_000_000, 1_000_001, 1_000_003, store.head]
    before = state(store, cursors)

    after = await reopen(store, clock)

    assert state(after, cursors) == before
    assert after.get("Unicycling")["comments"] == [
        {"author": "Bob", "message": "first"},
        {"author": "Cy", "message": "second"},
    ]
    assert after.changes_since(1_000_003).talks == [
        after.get("Cooking"), {"title": "Knitting", "deleted": True}
    ]
    await after.close()


@pytest.mark.gen_test
async def test_a_random_history_matches_the_memory_store_before_and_after_reopening(store, clock):
    """SQLiteStore is MemoryStore plus a file: same answers at every step."""
    memory = MemoryStore(clock=clock)
    rng = random.Random(3)
    titles = ["a", "b", "c", "ü/ñ", "d e"]
    cursors = []
    for step in range(300):
        title = rng.choice(titles)
        op = rng.choice(["put", "put", "comment", "comment", "delete"])
        clock.now += rng.choice([0, 0, 5, -50])
        if op == "put":
            args = (title, f"p{step}", f"summary {step}")
            assert await store.put(*args) == await memory.put(*args)
        elif op == "delete":
            assert await store.delete(title) == await memory.delete(title)
        elif memory.get(title) is None:
            with pytest.raises(TalkNotFound):
                await store.add_comment(title, "x", "y")
        else:
            assert await store.add_comment(title, "x", f"c{step}") == await memory.add_comment(title, "x", f"c{step}")
        cursors.append(memory.head)
        if step % 50 == 49:
            assert await store.prune(memory.head - 100) == await memory.prune(memory.head - 100)
        assert store.head == memory.head
    sample = cursors[::17] + [0, memory.head, memory.head + 1]
    assert state(store, sample) == state(memory, sample)
    assert state(await reopen(store, clock), sample) == state(memory, sample)


@pytest.mark.gen_test
async def test_a_new_file_keeps_its_first_server_time(store, clock):
    first = store.head
    clock.now -= 60_000
    assert (await reopen(store, clock)).head == first


@pytest.mark.gen_test
async def test_stamps_continue_after_a_restart_even_when_the_clock_went_back(store, clock):
    await store.put("a", "p", "s")
    head = store.head
    clock.now -= 3_600_000
    after = await reopen(store, clock)
    assert await after.put("b", "p", "s") == head + 1
    assert after.head == head + 1


@pytest.mark.gen_test
async def test_a_cursor_from_before_the_restart_gets_exactly_the_later_changes(store, clock):
    await store.put("old", "p", "s")
    await store.put("older-cursor", "p", "s")
    cursor = store.head
    after = await reopen(store, clock)
    assert after.changes_since(cursor).talks == []
    await after.add_comment("old", "Ann", "after the restart")
    changes = after.changes_since(cursor)
    assert changes.talks == [after.get("old")]
    assert changes.server_time == after.head and not changes.reset


@pytest.mark.gen_test
async def test_pruned_tombstones_stay_pruned_and_old_cursors_get_a_reset(store, clock):
    await store.put("kept", "p", "s")
    await store.put("gone", "p", "s")
    before_delete = store.head
    await store.delete("gone")
    deleted_at = store.head
    clock.now += 8 * 86_400_000
    await store.put("new", "p", "s")

    assert await store.prune(clock.now - 7 * 86_400_000) == 1
    after = await reopen(store, clock)

    assert after.pruned_through == deleted_at
    reset = after.changes_since(before_delete)
    assert reset.reset and [t["title"] for t in reset.talks] == ["kept", "new"]
    diff = after.changes_since(deleted_at)
    assert not diff.reset and [t["title"] for t in diff.talks] == ["new"]


@pytest.mark.gen_test
async def test_pruning_keeps_tombstones_inside_the_window(store, clock):
    await store.put("gone", "p", "s")
    await store.delete("gone")
    cursor = store.head - 1
    assert await store.prune(clock.now - 7 * 86_400_000) == 0
    assert (await reopen(store, clock)).changes_since(cursor).talks == [{"title": "gone", "deleted": True}]


# -- a write that cannot be committed ------------------------------------------


def fill_the_disk(store):
    """Make the database full, as a full disk would: the next new page fails."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


@pytest.mark.gen_test
async def test_a_write_that_cannot_be_committed_changes_nothing(store, clock):
    await store.put("Unicycling", "Ann", "One wheel")
    cursors = [0, store.head]
    before = state(store, cursors)
    fill_the_disk(store)

    with pytest.raises(StoreWriteFailed, match="full"):
        await store.put("Big", "Bob", "x" * 50_000)
    with pytest.raises(StoreWriteFailed, match="full"):
        await store.add_comment("Unicycling", "Bob", "y" * 50_000)

    assert state(store, cursors) == before
    assert state(await reopen(store, clock), cursors) == before


@pytest.mark.gen_test(timeout=120)
async def test_a_failed_commit_is_answered_503_with_a_message(http_client, base_url, store):
    await store.put("Unicycling", "Ann", "One wheel")
    fill_the_disk(store)
    response = await http_client.fetch(
        base_url + "/talks/Big", method="PUT", raise_error=False,
        body=json.dumps({"presenter": "Bob", "summary": "x" * 5_000}),
    )
    assert response.code == 503
    assert "could not be saved" in json.loads(response.body)["error"]
    listed = json.loads((await http_client.fetch(base_url + "/talks")).body)
    assert [t["title"] for t in listed["talks"]] == ["Unicycling"]


@pytest.mark.gen_test(timeout=120)
async def test_writes_over_http_are_in_the_file(http_client, base_url, store, clock):
    response = await http_client.fetch(
        base_url + "/talks/Unicycling", method="PUT",
        body=json.dumps({"presenter": "Ann", "summary": "One wheel"}),
    )
    assert response.code == 204
    # A second connection to the file, as a backup tool would open it.
    with sqlite3.connect(store.path) as other:
        rows = other.execute("SELECT title, presenter, summary FROM talks").fetchall()
    assert rows == [("Unicycling", "Ann", "One wheel")]


@pytest.mark.gen_test
async def test_a_live_store_can_be_copied_with_sqlites_online_backup(store, clock, tmp_path):
    await store.put("Unicycling", "Ann", "One wheel")
    await store.add_comment("Unicycling", "Bob", "Hi")
    at_backup = state(store, [0])

    source, copy = sqlite3.connect(store.path), sqlite3.connect(tmp_path / "backup.db")
    source.backup(copy)
    source.close()
    copy.close()
    await store.put("After the backup", "Cy", "s")

    restored = SQLiteStore(str(tmp_path / "backup.db"), clock=clock)
    assert state(restored, [0]) == at_backup
    await restored.close()


# -- files the store refuses -----------------------------------------------------


@pytest.mark.gen_test
async def test_a_second_store_on_a_file_in_use_is_refused(store):
    with pytest.raises(StoreOpenError, match="in use by another talkserver"):
        SQLiteStore(store.path)
    await store.close()
    await SQLiteStore(store.path).close()


def make_database(path, version):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE future (x)")
        db.execute("INSERT INTO future VALUES ('keep me')")
        db.execute(f"PRAGMA user_version = {version}")
    db.close()


def corrupt(path, tmp_path):
    """A talkserver file whose table pages are overwritten with garbage."""
    async def fill():
        store = SQLiteStore(str(path))
        for i in range(200):
            await store.put(f"talk {i}", "p", "s" * 200)
        await store.close()

    asyncio.run(fill())
    data = bytearray(path.read_bytes())
    page = 4096
    data[page * 2 : page * 2 + 200] = b"\xff" * 200
    path.write_bytes(bytes(data))


BAD_FILES = {
    "not SQLite": (lambda p, t: p.write_text("title,presenter\nUnicycling,Ann\n"), "not an SQLite database"),
    "corrupt": (corrupt, "corrupt database"),
    "newer schema": (
        lambda p, t: make_database(p, SCHEMA_VERSION + 1),
        f"schema version {SCHEMA_VERSION + 1} is newer than this talkserver knows",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_stops_the_server_with_one_line_and_stays_as_it_was(tmp_path, case):
    make, message = BAD_FILES[case]
    path = tmp_path / "talks.db"
    make(path, tmp_path)
    before = path.read_bytes()

    result = run_talkserver("--db=talks.db", "--port=18399", cwd=tmp_path)

    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("talkserver: talks.db: ")
    assert message in result.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talks.db"]


@pytest.mark.parametrize(
    "db, message",
    [
        ("missing/talks.db", "missing is not a directory"),
        ("notes.txt/talks.db", "notes.txt is not a directory"),
        ("folder", "not a regular file"),
    ],
)
def test_a_path_that_cannot_be_written_stops_the_server_with_one_line(tmp_path, db, message):
    (tmp_path / "notes.txt").write_text("not a directory")
    (tmp_path / "folder").mkdir()
    result = run_talkserver(f"--db={db}", "--port=18399", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "notes.txt"]
    assert list((tmp_path / "folder").iterdir()) == []


@pytest.mark.parametrize("read_only", ["the file", "its directory"])
@pytest.mark.gen_test
async def test_a_database_that_cannot_be_written_stops_the_server_and_stays_as_it_was(tmp_path, read_only):
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "talks.db"
    store = SQLiteStore(str(path))
    await store.put("Unicycling", "Ann", "One wheel")
    await store.close()
    before = path.read_bytes()
    (path if read_only == "the file" else folder).chmod(0o444 if read_only == "the file" else 0o555)
    try:
        result = run_talkserver("--db=data/talks.db", "--port=18399", cwd=tmp_path, as_ordinary_user=True)
    finally:
        path.chmod(0o644)
        folder.chmod(0o755)
    assert result.returncode != 0
    assert result.stderr == "talkserver: data/talks.db: cannot write the database or its directory (permission denied)\n"
    assert path.read_bytes() == before
    assert [p.name for p in folder.iterdir()] == ["talks.db"]


@pytest.mark.parametrize(
    "option, message",
    [("--sync=sometimes", "--sync=sometimes: use one of normal, full"), ("--retention=0", "positive number of days")],
)
def test_bad_storage_options_stop_the_server_with_one_line(tmp_path, option, message):
    result = run_talkserver(option, "--port=18399", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gen_test
async def test_an_older_schema_is_migrated_in_place(db_path, clock):
    # Version 0 is a file SQLite made but nobody has used yet.
    sqlite3.connect(db_path).close()
    store = SQLiteStore(str(db_path), clock=clock)
    await store.put("a", "p", "s")
    await store.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


@pytest.mark.gen_test
async def test_a_talks_owner_survives_a_reopen(store, clock):
    await store.put("Unicycling", "Ann", "One wheel", owner="browser-1")
    after = await reopen(store, clock)
    assert after.owner("Unicycling") == "browser-1"
    await after.close()


@pytest.mark.gen_test
async def test_a_version_1_file_gains_owners_and_keeps_its_talks(db_path, clock):
    with sqlite3.connect(db_path) as db:
        from talkserver.stores.sqlite import MIGRATIONS
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO talks VALUES ('Old', 'Ann', 's')")
        db.execute("INSERT INTO change_log VALUES ('Old', 1000001)")
        db.execute("INSERT INTO meta VALUES ('head', 1000001)")
        db.execute("PRAGMA user_version = 1")
    db.close()
    store = SQLiteStore(str(db_path), clock=clock)
    assert store.get("Old")["presenter"] == "Ann" and store.owner("Old") is None
    await store.put("Old", "Ann", "s", owner="browser-1")
    assert (await reopen(store, clock)).owner("Old") == "browser-1"
