"""Closing connections left idle before a request's headers, with one timer for all.

Tornado's HTTPServer bounds how long a connection may take to send a
request's headers (``idle_connection_timeout``, ``--idle-timeout``) with a
timeout wrapped around every header read: a Future, a timer in the
IOLoop's heap and a chained callback, made and cancelled for every
request.  When a change answers 10,000 polls, all 10,000 come back at once
and pay it (about 7 % of the server's CPU in the profile of a re-poll
storm; docs/benchmarks.md).

With the fast path on, every request starts in a ``PollDelegate``
(fastpolls.py), which notes here when its connection began waiting for
headers and forgets it when they arrive: a dict store and a dict pop.  One
timer, every quarter of the timeout, closes the connections that have
waited longer than the timeout, so an idle or slow-header connection is
closed between one and one and a quarter timeouts after it went quiet.
The accept.HTTPServer hands the timeout over from Tornado to this when
the Application serves the fast path; otherwise Tornado keeps its own.
"""

from __future__ import annotations

from tornado.ioloop import PeriodicCallback

# Sweeps per timeout: a connection is closed at most 1/TICKS of the timeout late.
TICKS = 4


class IdleConnections:
    """Connections waiting for a request's headers, and when they began (in sweeps)."""

    def __init__(self) -> None:
        # HTTP1Connection -> the sweep count when it began to wait.  Holds
        # only connections between requests, never a parked poll's.
        self.waiting: dict[object, int] = {}
        self.tick = 0
        self.timeout: float | None = None
        self._timer: PeriodicCallback | None = None

    def start(self, timeout: float | None) -> None:
        """Close connections idle for ``timeout`` seconds from now on (None: never)."""
        self.timeout = timeout or None
        if self.timeout and self._timer is None:
            self._timer = PeriodicCallback(self.sweep, self.timeout * 1000 / TICKS)
            self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def sweep(self) -> None:
        """Close what has waited for at least the timeout; forget what has closed."""
        self.tick += 1
        # Noted in sweep k, so waiting for at least (tick - k - 1) periods.
        due = self.tick - TICKS - 1
        for conn, since in list(self.waiting.items()):
            stream = conn.stream
            if since <= due or stream is None or stream.closed():
                del self.waiting[conn]
                if since <= due and stream is not None:
                    conn.close()
