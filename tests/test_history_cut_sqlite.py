"""An SQLite board restored from an older copy of its file: cursors from the lost stretch get a reset.

Given a server on talks.db, an online backup, and changes after it that a
client has seen; when the server is restarted on the backup; then a
cursor from the lost stretch is answered with the whole board and
``reset``, before and after new writes, while cursors from before the
backup get plain diffs.
"""

import sqlite3
from pathlib import Path

import pytest

from talkserver.stores import SQLiteStore

from .harness import ServerProcess, send
from .sse import StreamClient


def started(directory):
    return ServerProcess("--db=talks.db", "--poll-timeout=5", "--logging=warning", cwd=directory)


async def board(port):
    return (await send(port, "GET", "/talks")).json()


async def put(port, title, presenter="Ann", summary="A talk"):
    answer = await send(port, "PUT", f"/talks/{title}", {"presenter": presenter, "summary": summary})
    assert answer.status == 204, answer.body


async def since(port, cursor):
    return (await send(port, "GET", f"/talks?changesSince={cursor}")).json()


def backup(directory: Path) -> Path:
    copy = directory / "backup.db"
    with sqlite3.connect(copy) as target:
        source = sqlite3.connect(directory / "talks.db")
        source.backup(target)
        source.close()
    return copy


def put_back(directory: Path, copy: Path) -> None:
    """Restore as docs/storage.md says: the backup as talks.db, no WAL files of the newer one."""
    for leftover in ("talks.db-wal", "talks.db-shm"):
        (directory / leftover).unlink(missing_ok=True)
    copy.replace(directory / "talks.db")


@pytest.mark.gen_test(timeout=60)
async def test_a_server_on_a_restored_file_resets_cursors_from_the_lost_stretch(tmp_path):
    with started(tmp_path) as server:
        await put(server.port, "Kept", "Ann")
        before_backup = (await board(server.port))["serverTime"]
        copy = backup(tmp_path)
        restored = await board(server.port)
        await put(server.port, "Lost", "Bo")
        await put(server.port, "Kept", "Ann", "A version the backup lacks")
        lost = await board(server.port)
        lost_cursor = lost["serverTime"]
        old_tag = (await send(server.port, "GET", "/talks")).headers["etag"]
        server.stop()

    put_back(tmp_path, copy)
    with started(tmp_path) as server:
        # Before any new write: the lost cursor is ahead of the file.
        first = await since(server.port, lost_cursor)
        assert first.get("reset") is True
        assert first["talks"] == restored["talks"]
        assert (await send(server.port, "GET", "/talks", headers={"If-None-Match": old_tag})).status == 200

        # After new writes, which take stamps past the lost cursor, it still gets a reset.
        await put(server.port, "New", "Cy")
        now = await board(server.port)
        assert now["serverTime"] > lost_cursor
        assert [t["title"] for t in now["talks"]] == ["Kept", "New"]
        again = await since(server.port, lost_cursor)
        assert again.get("reset") is True
        assert again["talks"] == now["talks"]
        # A cursor from before the backup gets just what changed since, as usual.
        old = await since(server.port, before_backup)
        assert "reset" not in old
        assert [t["title"] for t in old["talks"]] == ["New"]
        # An event stream from the lost stretch gets the reset too.
        stream = await StreamClient.open(server.port, headers={"Last-Event-ID": str(lost_cursor - 1)})
        event = (await stream.event()).json()
        stream.close()
        assert event.get("reset") is True and event["talks"] == now["talks"]
        log = server.log()

    # The operator sees one warning line naming the stamp and the file.
    warnings = [line for line in log.splitlines() if "history cut?" in line]
    assert len(warnings) == 1
    assert str(lost_cursor) in warnings[0] and "talks.db" in warnings[0]


@pytest.mark.gen_test
async def test_the_stretch_before_the_first_write_after_opening_survives_a_restart(tmp_path, clock):
    path = str(tmp_path / "talks.db")
    store = SQLiteStore(path, clock=clock)
    await store.put("Kept", "Ann", "s")
    opened_at = store.head
    await store.close()

    clock.now += 1000
    store = SQLiteStore(path, clock=clock)
    await store.put("New", "Bo", "s")
    await store.close()

    store = SQLiteStore(path, clock=clock)
    try:
        assert store.changes_since(opened_at + 500).reset
        assert store.changes_since(store.head - 1).reset
        ordinary = store.changes_since(opened_at)
        assert not ordinary.reset and [t["title"] for t in ordinary.talks] == ["New"]
        assert store.changes_since(store.head).talks == []
    finally:
        await store.close()


@pytest.mark.gen_test
async def test_a_new_file_records_no_stretch(tmp_path, clock):
    store = SQLiteStore(str(tmp_path / "talks.db"), clock=clock)
    created = store.head
    clock.now += 1000
    await store.put("First", "Ann", "s")
    try:
        assert len(store.cuts) == 0
        assert not store.changes_since(created + 10).reset
    finally:
        await store.close()
