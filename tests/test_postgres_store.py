"""The PostgreSQL store between processes: stamps, pruning, schema.

Two stores on one database play two processes.  They are BlockingStores
that do not LISTEN, so each test says exactly when a process catches up.
"""

import pytest

from talkserver.stores import NotTheOwner, StoreOpenError
from talkserver.stores.postgres.schema import MIGRATIONS, SCHEMA_VERSION

from .postgres import BlockingStore


@pytest.fixture
def database(postgres_cluster):
    return postgres_cluster.new_database()


@pytest.fixture
def two(database, clock):
    first, second = BlockingStore(database, clock), BlockingStore(database, clock)
    yield first, second
    first.close()
    second.close()


def test_stamps_from_two_processes_follow_one_order(two, clock):
    a, b = two
    stamps = [a.put("x", "p", "1"), b.put("y", "p", "2"), a.put("z", "p", "3"), b.add_comment("x", "c", "m")]
    assert stamps == [clock.now + 1, clock.now + 2, clock.now + 3, clock.now + 4]


def test_a_process_applies_anothers_changes_only_when_it_catches_up(two):
    a, b = two
    a.put("x", "p", "s")
    assert b.get("x") is None
    b.catch_up()
    assert b.get("x") == a.get("x")
    assert b.head == a.head


def test_a_comment_on_a_talk_deleted_by_another_process_is_not_found(two):
    a, b = two
    a.put("x", "p", "s")
    b.catch_up()
    a.delete("x")
    with pytest.raises(KeyError):
        b.add_comment("x", "c", "too late")
    assert b.get("x") is None  # and b has caught up with the delete meanwhile


def test_a_prune_in_one_process_reaches_the_other(two, clock):
    a, b = two
    a.put("gone", "p", "s")
    old_cursor = a.head
    a.delete("gone")
    tombstone = a.head
    clock.now += 10_000
    a.put("later", "p", "s")
    b.catch_up()
    assert "gone" in b._log

    assert a.prune(older_than=tombstone + 1) == 1
    b.catch_up()

    assert "gone" not in b._log
    assert b.pruned_through == tombstone
    assert b.changes_since(old_cursor).reset


def test_a_process_behind_a_prune_reloads_the_board(two, clock):
    a, b = two
    a.put("gone", "p", "s")
    a.put("kept", "p", "s")
    b.catch_up()
    a.delete("gone")
    clock.now += 10_000
    a.prune(older_than=clock.now)
    b.catch_up()
    assert b.get("gone") is None
    assert b.all_talks() == a.all_talks()
    assert (b.head, b.pruned_through) == (a.head, a.pruned_through)


def test_the_schema_version_is_recorded(database, postgres_cluster):
    BlockingStore(database).close()
    name = database.rsplit("/", 1)[1]
    assert postgres_cluster.psql("SELECT max(version) FROM talkserver_schema", name) == str(SCHEMA_VERSION)


def test_a_schema_newer_than_this_talkserver_is_refused(database, postgres_cluster):
    BlockingStore(database).close()
    name = database.rsplit("/", 1)[1]
    postgres_cluster.psql("INSERT INTO talkserver_schema (version) VALUES (99)", name)
    with pytest.raises(StoreOpenError, match="schema version 99 is newer than this talkserver knows"):
        BlockingStore(database)


def test_an_owner_set_in_one_process_is_known_to_the_other(two):
    a, b = two
    a.put("x", "p", "s", owner="browser-1")
    b.catch_up()
    assert b.owner("x") == "browser-1"


def test_a_process_that_has_not_seen_the_owner_yet_still_cannot_take_the_talk(two):
    a, b = two
    a.put("x", "p", "s", owner="browser-1")
    # b has not caught up, so its own check (talkserver.access.auth) would let these through.
    with pytest.raises(NotTheOwner):
        b.put("x", "Eve", "mine now", owner="browser-2")
    with pytest.raises(NotTheOwner):
        b.delete("x", owner="")
    assert b.get("x")["presenter"] == "p"  # and b has caught up meanwhile
    assert b.delete("x", owner="browser-1") is not None


def test_a_database_made_by_schema_version_1_is_migrated_and_keeps_its_board(database, postgres_cluster):
    name = database.rsplit("/", 1)[1]
    # The board as a version 1 talkserver left it: its schema, a talk, a comment.
    statements = [MIGRATIONS[0], "CREATE TABLE talkserver_schema (version integer NOT NULL)",
                  "INSERT INTO talkserver_schema (version) VALUES (1)",
                  "INSERT INTO head (stamp, pruned_through) VALUES (1000, 1000)",
                  "SELECT talkserver_put('old', 'Ada', 'kept', NULL, 2000)",
                  "SELECT talkserver_comment('old', 'Bo', 'still here', 3000)"]
    for statement in statements:
        postgres_cluster.psql(statement, name)

    store = BlockingStore(database)
    try:
        kept = store.get("old")
        head = store.head
        stamp = store.put("new", "Cy", "after the migration")
        # A version 1 server still running during a rolling upgrade writes as before.
        postgres_cluster.psql("SELECT talkserver_put('from v1', 'Di', 's', NULL, NULL)", name)
        store.catch_up()
        titles = {t["title"] for t in store.all_talks()}
    finally:
        store.close()
    version = postgres_cluster.psql("SELECT max(version) FROM talkserver_schema", name)
    assert version == str(SCHEMA_VERSION) == "4"
    assert kept == {"title": "old", "presenter": "Ada", "summary": "kept",
                    "comments": [{"author": "Bo", "message": "still here"}]}
    assert head == 3000 and stamp > head
    assert titles == {"old", "new", "from v1"}


def _version_1_board(postgres_cluster, name):
    for statement in [MIGRATIONS[0], "CREATE TABLE talkserver_schema (version integer NOT NULL)",
                      "INSERT INTO head (stamp, pruned_through) VALUES (1000, 1000)",
                      "SELECT talkserver_put('old', 'Ada', 'kept', NULL, 2000)"]:
        postgres_cluster.psql(statement, name)


def test_a_database_at_version_2_with_a_cut_is_migrated_and_keeps_the_cut(database, postgres_cluster):
    name = database.rsplit("/", 1)[1]
    # Version 2 as released: cuts (stores.history), one recorded.
    _version_1_board(postgres_cluster, name)
    for statement in [MIGRATIONS[1], "INSERT INTO talkserver_schema (version) VALUES (2)",
                      "INSERT INTO talkserver_cuts (epoch, survived, cut_through) VALUES (1, 1500, 1800)"]:
        postgres_cluster.psql(statement, name)

    store = BlockingStore(database)
    try:
        stamp = store.put("new", "Cy", "after the migration")
        assert store.cuts.epoch == 1 and store.changes_since(1600).reset
        assert {t["title"] for t in store.all_talks()} == {"old", "new"} and stamp > 2000
    finally:
        store.close()
    assert postgres_cluster.psql("SELECT max(version) FROM talkserver_schema", name) == str(SCHEMA_VERSION)


def test_a_database_a_pre_release_took_to_version_2_without_cuts_is_migrated(database, postgres_cluster):
    name = database.rsplit("/", 1)[1]
    # Before the merge with the cut work, a build numbered its one-round-trip
    # functions version 2: such a database has them, and no cuts table.
    _version_1_board(postgres_cluster, name)
    for statement in [
        "CREATE FUNCTION talkserver_changes(since bigint) RETURNS TABLE (db_head bigint, db_pruned_through bigint,"
        " reload boolean, changes text) LANGUAGE sql AS $$ SELECT stamp, pruned_through, false, '[]' FROM head $$",
        # That build's prune function: the last statement of version 3.
        MIGRATIONS[2][MIGRATIONS[2].index("CREATE OR REPLACE FUNCTION talkserver_prune"):].replace(
            "CREATE OR REPLACE FUNCTION", "CREATE FUNCTION"),
        "INSERT INTO talkserver_schema (version) VALUES (2)",
    ]:
        postgres_cluster.psql(statement, name)

    store = BlockingStore(database)
    try:
        store.put("new", "Cy", "after the migration")
        titles = {t["title"] for t in store.all_talks()}
    finally:
        store.close()
    assert titles == {"old", "new"}
    assert postgres_cluster.psql("SELECT count(*) FROM talkserver_cuts", name) == "0"
    # A server of that build, still running during the upgrade, can still catch up.
    assert postgres_cluster.psql("SELECT count(*) FROM talkserver_changes(0)", name) == "1"
    assert postgres_cluster.psql("SELECT max(version) FROM talkserver_schema", name) == str(SCHEMA_VERSION)


def test_a_prune_is_one_statement_that_leaves_live_talks_alone(two, clock):
    a, b = two
    a.put("gone", "p", "s")
    a.put("kept", "p", "s")
    a.delete("gone")
    clock.now += 10_000
    assert a.prune(older_than=clock.now) == 1
    assert a.prune(older_than=clock.now) == 0
    b.catch_up()
    assert {t["title"] for t in b.all_talks()} == {"kept"}
    assert "kept" in b._log and "gone" not in b._log
