"""How a PostgreSQL store notices that its database lost history, and what every server then answers.

Real PostgreSQL (the session's cluster), several PostgresStores on one
database as several servers would be, each catching up when the test says
so; the database is made to go back by hand, as a failover, a wiped table
or an older restore would.  Plus the rule itself (stores.history.Cuts) on
its own.
"""

import pytest

from talkserver.stores.history import Cut, Cuts

from .postgres import BlockingStore


@pytest.fixture
def database(postgres_cluster):
    return postgres_cluster.new_database()


@pytest.fixture
def stores(database, clock):
    opened = []

    def open_store():
        store = BlockingStore(database, clock)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def sql(cluster, url, statement):
    return cluster.psql(statement, database=url.rsplit("/", 1)[1])


def titles(store):
    return [t["title"] for t in store.all_talks()]


# -- the rule ----------------------------------------------------------------


def test_a_cursor_in_a_lost_stretch_is_lost_and_its_ends_are_not():
    cuts = Cuts()
    cuts.replace([Cut(1, 100, 200), Cut(2, 300, 310)])
    assert cuts.epoch == 2
    assert [cuts.lost(c) for c in (100, 101, 200, 201, 305)] == [None, Cut(1, 100, 200), Cut(1, 100, 200), None,
                                                                 Cut(2, 300, 310)]


def test_forgetting_pruned_cuts_keeps_the_epoch():
    cuts = Cuts()
    cuts.replace([Cut(1, 100, 200), Cut(2, 300, 310)])
    cuts.forget_through(250)
    assert list(cuts) == [Cut(2, 300, 310)] and cuts.epoch == 2


# -- noticing a cut ---------------------------------------------------------------


def test_a_database_that_lost_the_newest_commit_and_took_writes_since_is_a_cut(
    postgres_cluster, database, stores, clock
):
    a, other = stores(), stores()
    a.put("Kept", "Ann", "s")
    clock.now += 10
    lost = a.put("Lost", "Bo", "s")
    # A failover to a standby that never got "Lost": gone from the log, and
    # the new primary takes a write stamped past it.
    sql(postgres_cluster, database,
        "DELETE FROM talks WHERE title = 'Lost'; DELETE FROM change_log WHERE title = 'Lost'")
    clock.now += 10
    after = other.put("After", "Cy", "s")
    assert after > lost

    a.catch_up()

    assert titles(a) == ["Kept", "After"]
    assert a.cuts.lost(lost) == Cut(1, lost - 1, lost)
    assert a.changes_since(lost).reset
    plain = a.changes_since(lost - 1)
    assert not plain.reset and [t["title"] for t in plain.talks] == ["After"]
    # New stamps stay above the cut.
    assert a.put("Later", "Di", "s") > lost


def test_a_server_that_lost_nothing_learns_the_cut_and_resets_the_same_cursors(
    postgres_cluster, database, stores, clock
):
    a, b = stores(), stores()
    a.put("Kept", "Ann", "s")
    b.catch_up()
    clock.now += 10
    lost = a.put("Lost", "Bo", "s")  # b has not applied it
    head = sql(postgres_cluster, database, "SELECT stamp FROM head")
    sql(postgres_cluster, database,
        f"DELETE FROM talks WHERE title = 'Lost'; DELETE FROM change_log WHERE title = 'Lost';"
        f" UPDATE head SET stamp = {int(head) - 10}")
    a.catch_up()  # a notices and marks the cut

    b.catch_up()

    assert titles(b) == titles(a) == ["Kept"]
    assert b.cuts.epoch == a.cuts.epoch == 1
    assert b.head == a.head > lost
    assert b.changes_since(lost).reset
    assert b.changes_since(lost).talks == a.changes_since(lost).talks


def test_a_wiped_table_is_a_cut_and_the_board_empties(postgres_cluster, database, stores, clock):
    a = stores()
    a.put("Kept", "Ann", "s")
    clock.now += 10
    cursor = a.put("Also", "Bo", "s")
    sql(postgres_cluster, database, "TRUNCATE talks, comments, change_log")

    a.catch_up()

    assert a.all_talks() == []
    assert a.changes_since(cursor).reset
    assert a.cuts.epoch == 1


def test_cuts_a_restore_took_away_are_written_back_by_a_server_that_knows_them(
    postgres_cluster, database, stores, clock
):
    a = stores()
    a.put("Kept", "Ann", "s")
    clock.now += 10
    lost = a.put("Lost", "Bo", "s")
    head = sql(postgres_cluster, database, "SELECT stamp FROM head")
    sql(postgres_cluster, database,
        f"DELETE FROM talks WHERE title = 'Lost'; DELETE FROM change_log WHERE title = 'Lost';"
        f" UPDATE head SET stamp = {int(head) - 10}")
    a.catch_up()
    # A dump from before that cut, restored: the cut is gone from the database.
    sql(postgres_cluster, database, "DELETE FROM talkserver_cuts")

    a.catch_up()

    assert sql(postgres_cluster, database, "SELECT epoch, cut_through FROM talkserver_cuts") == f"1|{lost}"
    newcomer = stores()
    assert newcomer.changes_since(lost).reset
    assert titles(newcomer) == ["Kept"]


@pytest.mark.parametrize("written", ["After", "Lost"])
def test_a_write_that_meets_a_restore_first_finds_the_cut_though_its_stamp_is_ahead(
    postgres_cluster, database, stores, clock, written
):
    a = stores()
    a.put("Kept", "Ann", "s")
    clock.now += 10
    gone = a.put("Gone", "Bo", "s")
    clock.now += 10
    lost = a.put("Lost", "Bo", "s")
    # A restore: "Gone", "Lost" and the head that stamped them are gone.
    sql(postgres_cluster, database,
        f"DELETE FROM talks WHERE title IN ('Gone', 'Lost'); DELETE FROM change_log WHERE title IN ('Gone', 'Lost');"
        f" UPDATE head SET stamp = {gone - 1}")
    clock.now += 1000

    # The first the process hears of it is its own write, stamped by the
    # clock: the database's head in that answer is ahead of the process's.
    # Rewriting the witness's own title must not hide the loss either.
    stamp = a.put(written, "Cy", "after the restore")

    assert stamp > lost
    assert sorted(titles(a)) == sorted({"Kept", written})
    assert a.get(written)["presenter"] == "Cy"
    assert a.cuts.epoch == 1 and a.cuts.lost(lost) == Cut(1, gone - 1, lost)
    for cursor in (gone, lost):
        reset = a.changes_since(cursor)
        assert reset.reset and {t["title"] for t in reset.talks} == {"Kept", written}
    newcomer = stores()
    assert titles(newcomer) == titles(a) and newcomer.changes_since(gone).reset
