"""History cuts that later writes would hide: found by the history id of each server's head, on real PostgreSQL.

Several PostgresStores on one database play several servers, each
catching up when the test says so; the database goes back with a real
``pg_dump`` and ``pg_restore``.  Then the lost stretch is rewritten by
other servers before a server that applied it looks again: its last title
written again with a newer stamp (so the database's head and that title's
stamp are both ahead of it), or a cut already recorded by a server that
had applied less.  Every server must end with the database's board and
answer every cursor the same way: a reset for the lost stretch.
"""

import pytest

from .postgres import BlockingStore

LOST = [f"Lost {letter}" for letter in "ABCDEFGHIJ"]  # A..J: written after the dump


@pytest.fixture
def database(postgres_cluster):
    return postgres_cluster.new_database()


@pytest.fixture
def servers(database, clock):
    opened = []

    def start():
        store = BlockingStore(database, clock)
        opened.append(store)
        return store

    yield start
    for store in opened:
        store.close()


def titles(store):
    return sorted(t["title"] for t in store.all_talks())


def board(store):
    return sorted(store.all_talks(), key=lambda t: t["title"])


def answers(store, cursors):
    """How ``store`` answers each cursor: (reset, the talks it sends)."""
    return [(c.reset, sorted(t["title"] for t in c.talks)) for c in map(store.changes_since, cursors)]


def write_lost_stretch(store, clock):
    """A..J, each in a millisecond of its own; returns their stamps."""
    stamps = []
    for title in LOST:
        clock.now += 1
        stamps.append(store.put(title, "Ann", "gone after the restore"))
    return stamps


def test_a_lost_title_written_again_with_a_newer_stamp_does_not_hide_the_cut(
    postgres_cluster, database, servers, clock, tmp_path
):
    # Given: S applied the base and A..J; T was started on the base and
    # has not caught up since.
    s, t = servers(), servers()
    s.put("Base", "Bo", "in the dump")
    t.catch_up()
    base = s.head
    postgres_cluster.dump(database, tmp_path / "base.dump")
    stamps = write_lost_stretch(s, clock)
    # When: the database goes back to the dump, and T writes J again, with
    # a newer stamp: the database's head, and J's stamp, are ahead of S's.
    postgres_cluster.restore(database, tmp_path / "base.dump")
    clock.now += 1000
    rewritten = t.put(LOST[-1], "Cy", "written again after the restore")
    assert rewritten > stamps[-1]

    s.catch_up()

    # Then: S drops A..I and takes T's J; every cursor of the lost stretch is a reset.
    assert titles(s) == titles(t) == ["Base", LOST[-1]]
    assert s.get(LOST[-1])["presenter"] == "Cy"
    cut = s.cuts.lost(stamps[0])
    assert cut is not None and cut.survived >= base and cut.cut_through == stamps[-1]
    for cursor in stamps:
        reset = s.changes_since(cursor)
        assert reset.reset and sorted(t["title"] for t in reset.talks) == ["Base", LOST[-1]]
    after_base = s.changes_since(base)
    assert not after_base.reset and [t["title"] for t in after_base.talks] == [LOST[-1]]
    t.catch_up()
    cursors = [base, *stamps, rewritten]
    assert answers(t, cursors) == answers(s, cursors) == answers(servers(), cursors)


def test_a_cut_recorded_by_a_server_that_applied_less_still_drops_what_the_other_applied_beyond_it(
    postgres_cluster, database, servers, clock, tmp_path
):
    # Given: S applied A..J; T, one change behind, applied A..I.
    s, t = servers(), servers()
    s.put("Base", "Bo", "in the dump")
    postgres_cluster.dump(database, tmp_path / "base.dump")
    stamps = write_lost_stretch(s, clock)
    t.catch_up()
    assert titles(t) == sorted(["Base", *LOST])
    t_head = t.head
    clock.now += 1
    j_again = s.put(LOST[-1], "Ann", "one change T has not applied")
    # When: the database goes back to the dump; T notices first and
    # records the cut up to its own head (not S's), then writes J again.
    postgres_cluster.restore(database, tmp_path / "base.dump")
    t.catch_up()
    assert t.cuts.epoch == 1 and t.cuts.lost(t_head) is not None and t.cuts.lost(j_again) is None
    clock.now += 1000
    t.put(LOST[-1], "Cy", "written again after the cut")

    s.catch_up()

    # Then: S drops everything it applied beyond the database's history too.
    assert titles(s) == titles(t) == ["Base", LOST[-1]]
    assert s.get(LOST[-1])["presenter"] == "Cy"
    for cursor in (*stamps, j_again):
        assert s.changes_since(cursor).reset
    cursors = [stamps[0] - 1, *stamps, j_again, s.head]
    t.catch_up()
    assert answers(t, cursors) == answers(s, cursors) == answers(servers(), cursors)


def test_a_cut_under_three_servers_with_one_lagging_ends_with_the_databases_board_everywhere(
    postgres_cluster, database, servers, clock, tmp_path
):
    # Given: L lags (it applied A..C), T and S applied A..J.
    s, t, lagging = servers(), servers(), servers()
    s.put("Base", "Bo", "in the dump")
    s.put("Changed", "Bo", "the dump's version")
    postgres_cluster.dump(database, tmp_path / "base.dump")
    stamps = []
    for title in LOST:
        clock.now += 1
        stamps.append(s.put(title, "Ann", "gone after the restore"))
        if title == "Lost C":
            lagging.catch_up()
    clock.now += 1
    s.put("Changed", "Di", "a version the restore loses")
    t.catch_up()
    # When: the database goes back; the lagging server looks first, then a
    # write lands, then the others look.
    postgres_cluster.restore(database, tmp_path / "base.dump")
    lagging.catch_up()
    clock.now += 1000
    lagging.put("After", "Cy", "written after the restore")
    lagging.put(LOST[-1], "Cy", "written again after the restore")
    t.catch_up()
    s.catch_up()
    lagging.catch_up()

    # Then: all three serve the database's board and reset every cursor of the lost stretch alike.
    newcomer = servers()
    assert board(s) == board(t) == board(lagging) == board(newcomer)
    assert titles(s) == ["After", "Base", "Changed", LOST[-1]] and s.get("Changed")["presenter"] == "Bo"
    cursors = [stamps[0] - 1, *stamps, s.head]
    for server in (s, t, lagging, newcomer):
        assert answers(server, cursors) == answers(s, cursors)
        assert all(server.changes_since(cursor).reset for cursor in stamps)
