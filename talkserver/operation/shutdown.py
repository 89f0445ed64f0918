"""Stopping without dropping anyone: what the server does on SIGTERM.

1. Stop accepting connections.
2. Answer every waiting long poll at once with an empty change list, and
   end every event stream cleanly, so browsers poll or reconnect straight
   away, reaching whatever replaces this process.  Polls and streams that
   arrive on kept-alive connections meanwhile are answered the same way
   until the end.
3. Let the writes in flight finish (bounded by ``write_grace`` seconds): a
   write that got its 204 is in the store.
4. Close the remaining connections, then the store.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

import tornado.httpserver
import tornado.web

from talkserver.words import counted

log = logging.getLogger("talkserver")

# Long enough for answers just written to reach their clients before the
# connections close under them.
FLUSH_SECONDS = 0.2


async def drain(
    server: tornado.httpserver.HTTPServer,
    app: tornado.web.Application,
    write_grace: float = 10.0,
) -> int:
    """Shut ``server`` down as described above; returns how many polls were answered."""
    board = app.board  # type: ignore[attr-defined]
    limits = app.limits  # type: ignore[attr-defined]
    server.stop()
    app.draining = True  # type: ignore[attr-defined]  # /healthz answers 503 from now on
    loop = asyncio.get_running_loop()
    started = loop.time()
    answered = 0
    streams_ended = 0
    while True:
        if len(board.streams):
            streams_ended += board.streams.end_all()
        waiting = len(board.waiters) + len(board.slow_lane)
        if waiting:
            board.waiters.deliver_to_all(board.feed.timeout_answer())
            board.slow_lane.deliver_to_all(board.feed.timeout_answer())
            answered += waiting
        elapsed = loop.time() - started
        if (limits.writes_in_flight == 0 and elapsed >= FLUSH_SECONDS) or elapsed >= write_grace:
            break
        await asyncio.sleep(0.02)
    if limits.writes_in_flight:
        log.warning("%s still unfinished after %.0f s; closing anyway",
                    counted(limits.writes_in_flight, "write"), write_grace)
    try:
        await asyncio.wait_for(server.close_all_connections(), timeout=5)
    except asyncio.TimeoutError:
        log.warning("some connections did not close in time")
    talks = len(board.store.all_talks())
    closed = board.store.close()
    if inspect.isawaitable(closed):  # the shared store's connections
        await closed
    log.info("stopped: answered %s; %s in the store", counted(answered, "waiting poll"), counted(talks, "talk"))
    if streams_ended:
        log.info("ended %s", counted(streams_ended, "event stream"))
    return answered
