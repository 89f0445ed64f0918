"""The PostgreSQL store's connection to its database: the pool, every call's time bound, and whether the database answers.

Every call to the database is bounded by ``timeout`` (``--db-timeout``):
getting a connection, the statement, its answer and giving the connection
back together.  What a failure means is decided here once: whether it was
the database failing us (``unreachable``), whether the connection is gone
(``connection_lost``), whether the database itself reported that nothing was
committed (``rolled_back``), and the words the client and the log get.  The
store is *reachable* until a connection is lost or cannot be had, or a
health check gets no answer in time (a slow statement alone is not away),
and again once a call is answered; one log line per change of that state,
and the reason 503 answers give is always the newest.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

from talkserver.stores.contract import StoreOpenError

try:
    import asyncpg
except ImportError:  # the optional extra is not installed
    asyncpg = None

log = logging.getLogger("talkserver")

# Seconds between attempts to reach the database while it is away.
RETRY_EVERY = 1.0

# JIT compilation costs the catch-up query some 200 ms a time and buys
# nothing on queries this small.
SESSION_SETTINGS = {"jit": "off", "application_name": "talkserver"}


def redact(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def one_line(e: BaseException | None) -> str:
    """An error as one line of text (its type's name when it says nothing)."""
    text = " ".join(str(e).split()) if e is not None else ""
    return text or type(e).__name__


class NotSent(Exception):
    """No connection could be had in time: the call never reached the database."""


class NoAnswer(Exception):
    """The call was sent, and no answer came in time."""


def _read_outcome(task: asyncio.Future) -> None:
    """Read a finished task's error, so that asyncio does not report it as never retrieved."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("returning a connection to the pool failed: %s", one_line(task.exception()))


def unreachable(e: BaseException) -> bool:
    """Whether ``e`` is the database failing us (away, or refusing), rather than a bug here."""
    if asyncpg is None:
        return False
    # InternalClientError: asyncpg's state when a connection dies mid-query.
    return isinstance(
        e, (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
            NotSent, NoAnswer)
    )


def rolled_back(e: BaseException) -> bool:
    """Whether the database itself reported that the statement failed, so nothing of it was committed.

    Not so for a lost connection, nor for errors of class 08 (connection)
    and 57 (operator intervention: a shutdown, a terminated backend): those
    can come after the COMMIT, as when a backend is stopped while it waits
    for a synchronous standby's acknowledgement of a local commit.
    """
    if not isinstance(e, asyncpg.PostgresError) or isinstance(e, asyncpg.PostgresConnectionError):
        return False
    return not (getattr(e, "sqlstate", None) or "").startswith(("08", "57"))


def connection_lost(e: BaseException) -> bool:
    """Whether ``e`` says the connection is gone or cannot be had (not merely that an answer was slow)."""
    return isinstance(
        e, (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.InternalClientError, asyncpg.CannotConnectNowError, asyncpg.OperatorInterventionError,
            asyncpg.TooManyConnectionsError)
    )


def failure(e: BaseException) -> str:
    """What went wrong, for the 503 or 504 answer."""
    if isinstance(e, (NotSent, NoAnswer)):
        return f"the database is unreachable ({e})"
    return f"the database is {'unreachable' if connection_lost(e) else 'refusing changes'} ({one_line(e)})"


def cause(e: BaseException | None) -> str:
    """The reason alone, for the log line that says the database is unreachable."""
    return str(e) if isinstance(e, (NotSent, NoAnswer)) else one_line(e)


async def within(conn, call: Awaitable, timeout: float, limit: float):
    """Await ``call`` made on ``conn`` for at most ``timeout`` s; then close ``conn`` and raise NoAnswer.

    The call is not cancelled: asyncpg would then send a cancel request on
    a new connection, which a hung server does not answer either.  Closing
    the socket ends the wait for certain; whether the statement ran is then
    the database's secret.  ``limit`` is --db-timeout, for the message.
    """
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.0))
    if not done:
        conn.terminate()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise NoAnswer(f"no answer within {limit:g} s")
    return task.result()


async def _leave_as_is(_conn) -> None:
    """The pool's reset: nothing to undo, since every use of a connection leaves it clean."""


def host_of(conn) -> str | None:
    """``host:port`` of the server ``conn`` reached, as the URL spells it (None if not known)."""
    # asyncpg keeps the address it dialled (one of the URL's hosts) only as
    # a private attribute; the server's own view would be a bare IP address.
    address = getattr(conn, "_addr", None)
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address) if address else None


async def open_pool(url: str, timeout: float):
    """A pool of connections to ``url``; StoreOpenError (one line) when asyncpg is missing or it cannot connect."""
    if asyncpg is None:
        # Named with this Python, so the extra lands where talkserver runs,
        # not in whatever pip is first on the PATH.
        raise StoreOpenError(
            "the PostgreSQL store needs the asyncpg driver: from a checkout, make run-postgres DB=... installs it;"
            f" otherwise {sys.executable} -m pip install 'talkserver[postgres]'"
        )
    try:
        return await asyncpg.create_pool(
            # min_size=0: no connection floor kept up in the background,
            # whose failures asyncpg logs with a traceback each time.
            # The no-op reset: every use leaves its connection clean, so
            # a release costs no round trip (asyncpg's reset is a query).
            url, min_size=0, max_size=10, timeout=timeout, command_timeout=None,
            server_settings=SESSION_SETTINGS, reset=_leave_as_is,
        )
    except Exception as e:
        if unreachable(e) or isinstance(e, ValueError):
            raise StoreOpenError(f"{redact(url)}: cannot connect ({one_line(e)})") from None
        raise


class Connection:
    """The store's side of the database: calls on its pool within the timeout, and the reachable state.

    A part of PostgresStore (stores.postgres.store), which sets these up.
    """

    url: str
    timeout: float
    reachable: bool  # for /healthz and the metrics
    primary: str | None  # the host of the URL that answered last
    reconnects: int
    _pool: object
    _closed: bool
    _opening: bool
    _down_since: float
    _up_since: float
    _down_reason: str

    async def _call(self, query: str, *args, probe: bool = False):
        """Run one statement on a connection of the pool; its first row, within ``self.timeout`` in all."""
        return await self._on_connection(lambda conn: conn.fetchrow(query, *args), probe=probe)

    async def _on_connection(self, work: Callable[..., Awaitable], *, probe: bool = False):
        """Await ``work(conn)`` on a connection of the pool, within ``self.timeout`` in all; return its result.

        The time bound covers getting the connection, the work, and giving
        the connection back (the pool closes a connection that has served
        its quota of queries on the way back, which waits for the database).

        Raises NotSent when no connection could be had in time (nothing
        reached the database), NoAnswer when the work got no answer in
        time, else the driver's error.  Slow is not away: only a connection
        that is lost or cannot be had, or a ``probe`` (the health check)
        that gets no answer in time, marks the database unreachable; any
        answer marks it reachable again.
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + self.timeout
        try:
            conn = await asyncio.wait_for(self._pool.acquire(), self.timeout)
        except Exception as e:
            if not unreachable(e):
                raise
            reason = f"no connection within {self.timeout:g} s" if isinstance(e, asyncio.TimeoutError) else one_line(e)
            self._set_reachable(False, NotSent(reason), started)
            raise NotSent(reason) from None
        # Read now: a connection that breaks later is no longer asyncpg's to tell.
        host = host_of(conn)
        try:
            result = await within(conn, work(conn), deadline - loop.time(), self.timeout)
        except Exception as e:
            if (connection_lost(e) and not rolled_back(e)) or (probe and isinstance(e, NoAnswer)):
                self._set_reachable(False, e, started)
            raise
        finally:
            await self._release(conn, deadline)
        self._reached(host)
        self._set_reachable(True, None, started)
        return result

    async def _release(self, conn, deadline: float) -> None:
        """Give ``conn`` back to the pool by ``deadline``; past it, close the socket and let the pool forget it."""
        release = asyncio.ensure_future(self._pool.release(conn))
        # A release that fails leaves nothing to do: the connection broke with
        # the database, or the pool took it back already (asyncpg then raises
        # InternalClientError, seen while PostgreSQL stops).  Its error is read
        # here, else asyncio logs "Task exception was never retrieved" with a
        # traceback in the operator's log.
        release.add_done_callback(_read_outcome)
        done, _ = await asyncio.wait({release}, timeout=max(deadline - asyncio.get_running_loop().time(), 0.0))
        if not done:
            # The pool's graceful close waits for the database's answer;
            # a closed socket ends it at once, and the pool then drops it.
            conn.terminate()

    def _reached(self, host: str | None) -> None:
        """A connection reached ``host``: say so if the primary is not the one it was."""
        if host is None:
            return
        if self.primary is None:
            # Debug only: the first log line is the one naming the port
            # bound (the listening line names the store; /healthz the host).
            log.debug("following PostgreSQL at %s", host)
        elif host != self.primary:
            log.warning("the PostgreSQL primary is now %s (was %s)", host, self.primary)
        self.primary = host

    def _set_reachable(self, reachable: bool, error: BaseException | None, started: float) -> None:
        """Record whether the database answers, as told by a call made at ``started``; one log line when that changes.

        A call made before the last change of state tells old news (an answer
        to a call sent before an outage began, a failure of one sent before
        the database came back) and is not heard: else the log would say
        "away" and "back" more than once for one outage.
        """
        if self._opening or started < (self._up_since if not reachable else self._down_since):
            return
        if not reachable:
            # The reason 503 answers give is the newest: a database shutting
            # down is soon one that refuses connections.
            self._down_reason = cause(error)
        if reachable != self.reachable and not self._closed:
            if reachable:
                self._up_since = time.monotonic()
                log.warning("PostgreSQL is reachable again after %.1f s; caught up to %d",
                            time.monotonic() - self._down_since, self.head)
            else:
                self._down_since = time.monotonic()
                self._down_reason = cause(error)
                log.warning("PostgreSQL is unreachable (%s): writes answer 503, or 504 when their outcome is unknown;"
                            " reads are served from memory; trying again every %g s", cause(error), RETRY_EVERY)
        self.reachable = reachable

    async def ping(self) -> bool:
        """Whether the database answers now (for /healthz), within the timeout.

        No while it is known to be away: the follower keeps trying, and says
        when it is back.
        """
        if not self.reachable:
            return False
        try:
            await self._call("SELECT 1", probe=True)
        except Exception as e:
            if not unreachable(e):
                raise
            return False
        return True

    def health(self) -> dict:
        """The database's state for /healthz: reachable, and the host of the URL that is primary."""
        return {"reachable": self.reachable, "primary": self.primary}

    def register_metrics(self, metrics) -> None:
        """Add the database's state to ``metrics`` (a talkserver.operation.metrics.Metrics)."""
        metrics.gauge("talkserver_store_reachable",
                      "1 while PostgreSQL answers; 0 from a failed or unanswered call until it answers again.",
                      lambda: int(self.reachable), merge="min")
        metrics.gauge("talkserver_store_reconnects", "Times the PostgreSQL LISTEN connection was lost and made again.",
                      lambda: self.reconnects)
