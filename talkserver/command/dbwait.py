"""Waiting for PostgreSQL at start-up (``--db-wait``).

At boot, talkserver may start before its database answers: systemd starts
units side by side, a database on another host may be rebooting too, a
cluster may still be replaying its log.  Exiting at once would leave it to
the service manager to try again, as fast as it restarts units.  Instead
the command tries again itself, with pauses that grow from half a second
to five, until ``--db-wait`` seconds have passed (30 by default; 0 gives up
at once); then it stops with one line and exit status 2, as for any other
store that cannot be opened.

Only a database that is *away* is waited for: a refused or timed-out
connection, a name that does not resolve yet, a server that is starting
up, shutting down or has all its connections taken.  A wrong password, a
missing database, a schema of a newer talkserver or a missing driver fail
at once, since waiting would not change them.  The store says which it
was only through the exception it raised from (its message is written
for the operator), so that is what ``database_away`` reads.

The log says each state once: one warning when the database is first found
away, with the reason, another only when the reason changes (refused, then
"the database system is starting up"), and one line when it answers.  A
storm of retries is not a storm of lines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from talkserver.stores import StoreOpenError

try:
    import asyncpg
except ImportError:  # the postgres extra is not installed: nothing to wait for
    asyncpg = None

log = logging.getLogger("talkserver")

DEFAULT_WAIT = 30.0
FIRST_PAUSE = 0.5
LONGEST_PAUSE = 5.0

# SQLSTATE classes and codes of a server that is there but cannot take us
# yet: 08 connection exceptions, 57P operator intervention (shutting down,
# starting up), 53300 too many connections.
_AWAY_STATES = ("08", "57P", "53300")

T = TypeVar("T")


def database_away(error: BaseException) -> bool:
    """Whether the store could not be opened because the database is away (worth waiting for).

    The store raises ``StoreOpenError`` from the driver's or the socket's
    own exception; this walks that chain.
    """
    seen = error.__cause__ or error.__context__
    while seen is not None:
        if isinstance(seen, (OSError, asyncio.TimeoutError)):
            return True
        if (getattr(seen, "sqlstate", None) or "").startswith(_AWAY_STATES):
            return True
        if asyncpg is not None and isinstance(seen, asyncpg.ConnectionDoesNotExistError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def open_when_reachable(open_store: Callable[[], Awaitable[T]], wait: float) -> T:
    """``await open_store()``, trying again while the database is away, for up to ``wait`` seconds.

    Raises ``StoreOpenError`` at once when the store cannot be opened for
    another reason, and when the database is still away once the time is
    up (with the wait in its message).  A try that
    hangs ends within ``--db-timeout``, so the whole wait is at most
    ``wait`` plus one of those.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + wait
    pause = FIRST_PAUSE
    reported = None
    while True:
        try:
            store = await open_store()
        except StoreOpenError as e:
            if wait <= 0 or not database_away(e):
                raise
            left = deadline - loop.time()
            if left <= 0:
                raise StoreOpenError(f"{e}; still unreachable after waiting {wait:g} s (--db-wait)") from e
            if str(e) != reported:
                reported = str(e)
                log.warning("%s; waiting for the database, up to %g s in all (--db-wait)", e, wait)
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE)
            continue
        if reported is not None:
            log.info("the database answered after %.1f s of waiting", loop.time() - started)
        return store
