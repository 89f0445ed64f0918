"""Accepting connections without spinning when file descriptors run out.

Tornado's accept loop (``netutil.add_accept_handler``) lets an ``EMFILE``
from ``accept()`` escape: the listening socket stays readable, so the loop
calls it again at once, logging a traceback each time, at 100 % CPU.
``HTTPServer`` here accepts with ``add_accept_handler`` below instead:
when the process (or system) is out of descriptors, it stops watching the
listening socket for ``BACKOFF_SECONDS``, so waiting clients stay in the
kernel's listen queue until descriptors are free again; the event is
logged at most once per ``LOG_EVERY_SECONDS`` and counted in
``talkserver_accept_errors_total``.  Accepting resumes by itself.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import Callable

from tornado.ioloop import IOLoop

from talkserver.operation import collector
from talkserver.wire import tornado_private
from talkserver.web.app import TalkApplication
from talkserver.operation.metrics import Counter

log = logging.getLogger("talkserver")

# Out of descriptors or of kernel memory for sockets: waiting helps.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
BACKOFF_SECONDS = 0.1
# Tornado's own bound on accepts per wake-up (its listen backlog).
ACCEPTS_PER_WAKEUP = 128
LOG_EVERY_SECONDS = 10.0


def add_accept_handler(
    sock: socket.socket,
    callback: Callable[[socket.socket, object], None],
    errors: Counter | None = None,
) -> Callable[[], None]:
    """Like ``tornado.netutil.add_accept_handler``, with a back-off when out of descriptors."""
    loop = IOLoop.current()
    state = {"removed": False, "paused": False, "logged": -LOG_EVERY_SECONDS}

    def resume() -> None:
        state["paused"] = False
        if not state["removed"]:
            loop.add_handler(sock, accept, IOLoop.READ)

    def accept(fd, events) -> None:
        # As many as the backlog at most, so other work is not starved.
        for _ in range(ACCEPTS_PER_WAKEUP):
            if state["removed"]:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno not in OUT_OF_RESOURCES:
                    raise
                pause(e)
                return
            callback(connection, address)

    def pause(error: OSError) -> None:
        if errors is not None:
            errors.inc(errno.errorcode.get(error.errno, str(error.errno)))
        now = time.monotonic()
        if now - state["logged"] >= LOG_EVERY_SECONDS:
            state["logged"] = now
            log.error("cannot accept connections (%s); pausing accept for %.1f s at a time until it recovers",
                      error.strerror, BACKOFF_SECONDS)
        loop.remove_handler(sock)
        state["paused"] = True
        loop.call_later(BACKOFF_SECONDS, resume)

    def remove() -> None:
        if not state["paused"]:
            loop.remove_handler(sock)
        state["removed"] = True

    loop.add_handler(sock, accept, IOLoop.READ)
    return remove


class HTTPServer(collector.HTTPServer):
    """Tornado's HTTPServer, accepting through the back-off above (and, from
    collector.HTTPServer, leaving no cycle behind a connection that failed).

    ``accept_errors`` (a labelled Counter) counts the failed accepts.
    """

    accept_errors: Counter | None = None

    def initialize(self, request_callback, *args, **kwargs) -> None:
        super().initialize(request_callback, *args, **kwargs)
        # The fast path notes every connection that waits for headers
        # (talkserver.wire.idle), so the idle timeout needs no timer per request.
        if isinstance(request_callback, TalkApplication) and request_callback.fast_path:
            request_callback.idle.start(tornado_private.take_header_timeout(self))

    def handle_stream(self, stream, address) -> None:
        tornado_private.keep_nodelay_on(stream)
        tornado_private.lighten(stream)
        super().handle_stream(stream, address)

    def add_sockets(self, sockets) -> None:
        tornado_private.add_listening_sockets(
            self, sockets, lambda sock, callback: add_accept_handler(sock, callback, self.accept_errors)
        )
