"""talkserver-import: an SQLite board copied into PostgreSQL, run as the command."""

import asyncio
import subprocess
import sys

import pytest

from talkserver.stores.sqlite import SQLiteStore

from .postgres import BlockingStore


def run_import(*args, cwd):
    return subprocess.run([sys.executable, "-m", "talkserver.command.importer", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def sqlite_board(tmp_path):
    """An SQLite board with two talks, a comment and a tombstone; returns (path, its head)."""
    async def write():
        store = SQLiteStore(str(tmp_path / "talks.db"))
        await store.put("Unicycling", "Ann", "One wheel")
        await store.add_comment("Unicycling", "Bob", "first ✓")
        await store.put("Knitting", "Dee", "Two needles")
        await store.put("Gone", "Eve", "s")
        await store.delete("Gone")
        await store.close()
        return store.head

    return tmp_path / "talks.db", asyncio.run(write())


def test_the_import_copies_every_talk_and_comment_in_order(sqlite_board, postgres_cluster, tmp_path):
    path, _ = sqlite_board
    url = postgres_cluster.new_database()
    done = run_import(str(path), url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("copied 2 talks and 1 comment;")
    board = BlockingStore(url)
    try:
        assert board.all_talks() == [
            {"title": "Unicycling", "presenter": "Ann", "summary": "One wheel",
             "comments": [{"author": "Bob", "message": "first ✓"}]},
            {"title": "Knitting", "presenter": "Dee", "summary": "Two needles", "comments": []},
        ]
    finally:
        board.close()


def test_a_cursor_from_the_old_server_resets_once_then_follows(sqlite_board, postgres_cluster, tmp_path):
    path, old_head = sqlite_board
    url = postgres_cluster.new_database()
    run_import(str(path), url, cwd=tmp_path)
    board = BlockingStore(url)
    try:
        reset = board.changes_since(old_head)
        assert reset.reset and len(reset.talks) == 2
        assert not board.changes_since(reset.server_time).reset
    finally:
        board.close()


def test_a_board_with_talks_is_not_overwritten_without_replace(sqlite_board, postgres_cluster, tmp_path):
    path, _ = sqlite_board
    url = postgres_cluster.new_database()
    board = BlockingStore(url)
    board.put("Already here", "Zed", "s")
    board.close()

    refused = run_import(str(path), url, cwd=tmp_path)
    kept = BlockingStore(url)
    titles = [t["title"] for t in kept.all_talks()]
    kept.close()
    replaced = run_import(str(path), url, "--replace", cwd=tmp_path)
    after = BlockingStore(url)
    titles_after = [t["title"] for t in after.all_talks()]
    after.close()

    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "talkserver-import: the PostgreSQL board is not empty (1 talk or tombstone); add --replace to overwrite it"
    ]
    assert titles == ["Already here"]
    assert replaced.returncode == 0 and titles_after == ["Unicycling", "Knitting"]


def test_a_missing_sqlite_file_is_refused_and_not_created(postgres_cluster, tmp_path):
    done = run_import("nothing.db", postgres_cluster.new_database(), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "talkserver-import: nothing.db: no such file"
    assert not (tmp_path / "nothing.db").exists()


@pytest.mark.parametrize("url, expected", [
    ("mysql://ann@db.example/talks", "talkserver-import: the second argument must be a postgresql:// URL"),
    ("postgresql://[::1/db", "talkserver-import: the PostgreSQL URL: an IPv6 address needs its closing bracket"),
    ("postgresql://u:pa[ss@h/db", "talkserver-import: the PostgreSQL URL: the user name or password holds [ or ]"),
])
def test_a_url_that_is_not_postgresql_is_refused_in_one_line_exit_2(sqlite_board, tmp_path, url, expected):
    path, _ = sqlite_board

    done = run_import(str(path), url, cwd=tmp_path)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(expected), done.stderr
    assert "pa[ss" not in done.stderr


def test_a_copy_the_database_refuses_is_one_line_exit_2_and_changes_nothing(sqlite_board, postgres_cluster, tmp_path):
    path, _ = sqlite_board
    url = postgres_cluster.new_database()
    name = url.rsplit("/", 1)[1]
    board = BlockingStore(url)
    board.put("Already here", "Zed", "s")
    board.close()
    role = f"importer_{name}"
    postgres_cluster.psql(f"CREATE ROLE {role} LOGIN")
    postgres_cluster.psql(f"GRANT USAGE ON SCHEMA public TO {role}; GRANT SELECT, INSERT, UPDATE ON ALL TABLES"
                          f" IN SCHEMA public TO {role}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}", name)

    done = run_import(str(path), url.replace("postgres@", f"{role}@", 1), "--replace", cwd=tmp_path)
    kept = BlockingStore(url)
    titles = [t["title"] for t in kept.all_talks()]
    kept.close()

    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("talkserver-import: nothing was copied: the database is refusing changes (permission denied")
    assert titles == ["Already here"]
