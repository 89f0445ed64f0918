"""Closing connections whose client stops reading its answers.

An answer the client does not read stays queued in the server: with
answers shared (wakeup.py), that is a reference to bytes that may
otherwise be long gone, plus a socket.  A connection whose unsent bytes
stay above ``UNSENT_BOUND`` for ``send_timeout`` seconds is closed and
counted in ``talkserver_slow_readers_closed_total``.  A slow but reading
client is not affected as long as it takes each answer within the timeout
(a 5 MB board in 60 s needs about 90 kB/s).  The socket's own buffers hold
the bound's worth and more, so a client that reads at all rarely gets near it.

Connections are checked once a second, only while some are watched.
"""

from __future__ import annotations

import logging
import time

from tornado.ioloop import PeriodicCallback
from tornado.iostream import IOStream

from talkserver.operation.metrics import Metrics
from talkserver.wire.tornado_private import unsent_bytes

log = logging.getLogger("talkserver")

UNSENT_BOUND = 64 * 1024
CHECK_EVERY_MS = 1000


class SlowReaders:
    """Watches connections left with a large unsent answer; closes those that stay so."""

    def __init__(self, send_timeout: float | None, metrics: Metrics) -> None:
        self.send_timeout = send_timeout or 0.0
        self._watched: dict[IOStream, float] = {}
        self._checker: PeriodicCallback | None = None
        self._closed = metrics.counter(
            "talkserver_slow_readers_closed_total",
            "Connections closed because their client did not read its answer in time.",
        )

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, stream: IOStream) -> None:
        """Keep an eye on ``stream`` if it has more than the bound left to send."""
        if not self.send_timeout or stream in self._watched or stream.closed():
            return
        if unsent_bytes(stream) <= UNSENT_BOUND:
            return
        self._watched[stream] = time.monotonic()
        if self._checker is None:
            self._checker = PeriodicCallback(self.check, CHECK_EVERY_MS)
            self._checker.start()

    def check(self) -> None:
        """Forget streams that caught up or closed; close those over the bound for too long."""
        now = time.monotonic()
        for stream, since in list(self._watched.items()):
            if stream.closed() or unsent_bytes(stream) <= UNSENT_BOUND:
                del self._watched[stream]
            elif now - since >= self.send_timeout:
                del self._watched[stream]
                self._closed.inc()
                log.info("closing a connection whose client has not read %d bytes in %.0f s",
                         unsent_bytes(stream), now - since)
                stream.close()
        if not self._watched and self._checker is not None:
            self._checker.stop()
            self._checker = None
