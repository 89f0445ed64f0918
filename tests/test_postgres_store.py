"""The PostgreSQL store between processes: stamps, pruning, schema.

Two stores on one database play two processes.  They are BlockingStores
that do not LISTEN, so each test says exactly when a process catches up.
"""

import pytest

from talkserver.stores import NotTheOwner
from talkserver.stores.postgres import SCHEMA_VERSION, StoreOpenError

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
    # b has not caught up, so its own check (talkserver.auth) would let these through.
    with pytest.raises(NotTheOwner):
        b.put("x", "Eve", "mine now", owner="browser-2")
    with pytest.raises(NotTheOwner):
        b.delete("x", owner="")
    assert b.get("x")["presenter"] == "p"  # and b has caught up meanwhile
    assert b.delete("x", owner="browser-1") is not None
