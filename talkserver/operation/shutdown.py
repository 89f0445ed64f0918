"""Stopping without dropping anyone: what the server does on SIGTERM.

1. Stop accepting connections.
2. Answer every waiting long poll at once with an empty change list, and
   let every transport end what it holds cleanly (follow/transports.py), so
   browsers poll or reconnect straight away, reaching whatever replaces
   this process.  Polls and streams that
   arrive on kept-alive connections meanwhile are answered the same way
   until the end.
3. Let the writes in flight finish (bounded by ``write_grace`` seconds): a
   write that got its 204 is in the store.
4. Close the remaining connections, then the store.
"""

from __future__ import annotations

import asyncio
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
    following = app.following  # type: ignore[attr-defined]  # the registered transports
    server.stop()
    app.draining = True  # type: ignore[attr-defined]  # /healthz answers 503 from now on
    loop = asyncio.get_running_loop()
    started = loop.time()
    ended: dict[str, int] = {}
    while True:
        # Followers that come in on kept-alive connections meanwhile are
        # ended the same way, until the end.
        for name, count in following.end_all().items():
            ended[name] = ended.get(name, 0) + count
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
    await board.store.close()
    answered = ended.pop("lanes", 0)
    log.info("stopped: answered %s; %s in the store", counted(answered, "waiting poll"), counted(talks, "talk"))
    for name, count in ended.items():
        if count:
            log.info("ended %s on the %s transport", counted(count, "client"), name)
    return answered
