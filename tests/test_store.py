"""The store's rules on their own: stamps, the change log, cursors, pruning."""

import pytest

from talkserver.stores import TalkNotFound

from .store_kinds import STORE_KINDS, close_store, new_store


@pytest.fixture(params=STORE_KINDS)
def store(request, clock, tmp_path, io_loop):
    """A new store of each kind on the hand-set clock, on the test's IOLoop."""
    store = new_store(request.param, tmp_path, clock, request=request)
    yield store
    close_store(store, request)


def titles(changes):
    return [t["title"] for t in changes.talks]


@pytest.mark.gen_test
async def test_stamps_strictly_increase_when_the_clock_stands_still(store, clock):
    stamps = [await store.put(f"t{i}", "p", "s") for i in range(5)]
    assert stamps == [clock.now + 1 + i for i in range(5)]
    assert store.head == stamps[-1]


@pytest.mark.gen_test
async def test_stamps_strictly_increase_when_the_clock_goes_back(store, clock):
    first = await store.put("a", "p", "s")
    clock.now -= 60_000
    second = await store.put("b", "p", "s")
    assert second == first + 1


@pytest.mark.gen_test
async def test_stamps_follow_the_wall_clock_when_it_moves_on(store, clock):
    await store.put("a", "p", "s")
    clock.now += 5000
    assert await store.put("b", "p", "s") == clock.now


def test_head_starts_at_the_creation_time(store, clock):
    assert store.head == clock.now


@pytest.fixture(params=STORE_KINDS)
def wall_clock_store(request, tmp_path, io_loop):
    """A new store of each kind on the real clock (the database's, for PostgreSQL)."""
    store = new_store(request.param, tmp_path, request=request)
    yield store
    close_store(store, request)


def test_a_new_stores_first_server_time_is_a_cursor_without_reset(wall_clock_store):
    changes = wall_clock_store.changes_since(wall_clock_store.head)
    assert not changes.reset and changes.talks == []


@pytest.mark.gen_test
async def test_changes_since_holds_exactly_the_changes_after_the_cursor(store):
    await store.put("a", "p", "s")
    cursor = store.head
    await store.put("b", "p", "s")
    await store.put("c", "p", "s")
    changes = store.changes_since(cursor)
    assert sorted(titles(changes)) == ["b", "c"]
    assert changes.server_time == store.head
    assert not changes.reset
    assert store.changes_since(store.head).talks == []


@pytest.mark.gen_test
async def test_a_title_changed_twice_appears_once_with_its_newest_state(store):
    cursor = store.head
    await store.put("a", "p", "first")
    await store.add_comment("a", "ann", "hi")
    changes = store.changes_since(cursor)
    assert len(changes.talks) == 1
    assert changes.talks[0]["comments"] == [{"author": "ann", "message": "hi"}]


@pytest.mark.gen_test
async def test_a_deleted_talk_leaves_a_tombstone(store):
    await store.put("a", "p", "s")
    cursor = store.head
    await store.delete("a")
    assert store.changes_since(cursor).talks == [{"title": "a", "deleted": True}]
    assert store.get("a") is None
    assert store.all_talks() == []


@pytest.mark.gen_test
async def test_deleting_a_missing_talk_is_no_change(store):
    head = store.head
    assert await store.delete("nothing") is None
    assert store.head == head


@pytest.mark.gen_test
async def test_the_log_holds_one_entry_per_title(store):
    # MemoryStore's log, which SQLiteStore mirrors row for row in change_log.
    for i in range(100):
        await store.put(f"t{i % 3}", "p", str(i))
    assert len(store._log) == 3


@pytest.mark.gen_test
async def test_a_replaced_talk_starts_without_comments(store):
    await store.put("a", "p", "s")
    await store.add_comment("a", "ann", "hi")
    await store.put("a", "q", "new")
    assert store.get("a") == {"title": "a", "presenter": "q", "summary": "new", "comments": []}


@pytest.mark.gen_test
async def test_commenting_on_a_missing_talk_changes_nothing(store):
    head = store.head
    with pytest.raises(TalkNotFound):
        await store.add_comment("ghost", "ann", "hi")
    assert store.head == head


@pytest.mark.gen_test
async def test_earlier_answers_are_not_changed_by_later_comments(store):
    await store.put("a", "p", "s")
    before = store.changes_since(0).talks
    await store.add_comment("a", "ann", "hi")
    assert before[0]["comments"] == []


@pytest.mark.gen_test
async def test_a_cursor_from_the_future_gets_the_full_list_as_a_reset(store):
    await store.put("a", "p", "s")
    changes = store.changes_since(store.head + 10_000)
    assert changes.reset
    assert titles(changes) == ["a"]
    assert changes.server_time == store.head


@pytest.mark.gen_test
async def test_a_cursor_from_before_the_store_existed_gets_a_reset(store, clock):
    """A page that polled a server since restarted on an empty store must not keep stale talks."""
    await store.put("a", "p", "s")
    changes = store.changes_since(clock.now - 60_000)
    assert changes.reset and titles(changes) == ["a"]
    assert not store.changes_since(clock.now).reset


@pytest.mark.gen_test
async def test_pruned_tombstones_turn_old_cursors_into_resets(store, clock):
    await store.put("keep", "p", "s")
    await store.put("gone", "p", "s")
    old_cursor = store.head
    await store.delete("gone")
    tombstone_stamp = store.head
    clock.now += 10_000
    await store.put("later", "p", "s")

    assert await store.prune(older_than=tombstone_stamp + 1) == 1
    assert store.pruned_through == tombstone_stamp
    # A cursor before the pruned tombstone cannot be told about the delete.
    reset = store.changes_since(old_cursor)
    assert reset.reset and sorted(titles(reset)) == ["keep", "later"]
    # A cursor at or after it still gets a plain diff.
    diff = store.changes_since(tombstone_stamp)
    assert not diff.reset and titles(diff) == ["later"]


@pytest.mark.gen_test
async def test_prune_keeps_live_talks_and_recent_tombstones(store, clock):
    await store.put("live", "p", "s")
    cursor = store.head
    await store.put("dead", "p", "s")
    await store.delete("dead")
    assert await store.prune(older_than=store.head) == 0
    # The tombstone is still told to a cursor from before the delete, and the live talk is kept.
    changes = store.changes_since(cursor)
    assert not changes.reset and changes.talks == [{"title": "dead", "deleted": True}]
    assert store.get("live") == {"title": "live", "presenter": "p", "summary": "s", "comments": []}


@pytest.mark.gen_test
async def test_a_talks_owner_is_kept_until_it_is_deleted(store):
    await store.put("a", "p", "s", owner="browser-1")
    await store.put("a", "p", "replaced without naming an owner")
    assert store.owner("a") == "browser-1"
    await store.delete("a")
    assert store.owner("a") is None
    await store.put("a", "p", "s", owner="browser-2")
    assert store.owner("a") == "browser-2"


@pytest.mark.gen_test
async def test_the_owner_is_not_part_of_the_talk_clients_see(store):
    await store.put("a", "p", "s", owner="browser-1")
    assert store.get("a") == {"title": "a", "presenter": "p", "summary": "s", "comments": []}
