"""The shared store: one board in PostgreSQL, served by many processes and hosts.

Every process keeps the whole board in memory, as MemoryStore does, and
serves reads and long polls from it.  The database is the one place where
changes are ordered:

* **Stamps come from the database.**  A write transaction first moves the
  one-row ``head`` table to ``max(database clock in ms, head + 1)``; that
  UPDATE locks the row until COMMIT, so two writers (in any process, on any
  host) take their stamps one after the other, and commit order is stamp
  order.  No reader can see stamp 7 committed without stamp 6.
* **Memory changes only by applying the committed log.**  A catch-up reads,
  in one repeatable-read snapshot, the head and every change-log row stamped
  after this process's ``head``, and applies them in stamp order.  What it
  applies is always a gap-free prefix of the database's history, so a
  ``serverTime`` handed out here never runs past a change not yet applied.
  A write is one round trip: its function also returns the catch-up
  through its own stamp, and it is answered once that has been applied.
* **NOTIFY only wakes.**  Every write sends ``NOTIFY talkserver_changes``;
  a dedicated connection LISTENs and starts a catch-up.  The same catch-up
  runs at start, after every reconnect, and on a timer (``catch_up_every``
  seconds), so a notification lost with a connection delays a change and
  never loses it.

Every call to the database is bounded by ``timeout`` (``--db-timeout``).
A write that certainly did not commit (no connection could be had, or the
database reported the failure) raises StoreWriteFailed (answered 503); a
write that was sent and got no answer in time, or lost its connection on
the way, may have committed, and raises WriteOutcomeUnknown (answered 504).
Reads and polls go on from memory meanwhile, and the follower reconnects
once a second through the (possibly multi-host) URL, logging one line per
change of the database's state.

Every answer (a catch-up's or a write's) also carries the board's epoch and
the history id the database holds for this process's head (the witness),
which tell a database that went back in time (a restore, a failover that
lost commits) whatever was written since; a catch-up round then marks the
cut for every server, or finds it marked, and reloads the board
(stores.history, stores.postgres.cuts).  docs/storage.md describes
the schema, the choices and each fault.

The parts, each one job:

    store.py       PostgresStore: opening, the state its parts share, closing
    connection.py  the pool, every call's time bound, reachable or away, /healthz and metrics
    schema.py      the migrations (the SQL in sql/v<N>_*.sql) and bringing a database to the newest
    writes.py      the writes and what their client is told when they fail; talkserver-import's copy
    follower.py    catch-up rounds, applying answers, the LISTEN connection
    cuts.py        history cuts: telling the database lost what this process applied, settling it
"""

from talkserver.stores.postgres.connection import redact
from talkserver.stores.postgres.store import PostgresStore

__all__ = ["PostgresStore", "redact"]
