"""The ``talkserver`` command: options, the listening socket, signals.

Options are tornado.options, so they can come from the command line
(``--port=8000``) or from a config file (``--config=FILE``, Python syntax:
``port = 8000``).  ``--help`` lists them all.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal

import tornado.httpserver
import tornado.ioloop
from tornado.options import define, options, parse_command_line, parse_config_file

from .app import DEFAULT_MAX_BODY_SIZE, make_app
from .sqlite_store import SYNC_MODES, SQLiteStore, StoreOpenError, StoreWriteFailed
from .store import MemoryStore, Store, wall_clock_ms

define("port", default=8000, help="TCP port to listen on")
define("address", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
define("db", default="talks.db", help="the store: an SQLite file (relative to the working directory), or :memory: to keep nothing")
define("sync", default="normal", help="normal: commits survive a crash of the server; full: also a power loss, but slower")
define("retention", default=7.0, help="days a deleted talk's tombstone is kept; older cursors get the full list and reset")
define("poll_timeout", default=90.0, help="seconds a long poll waits before an empty answer")
define("static_path", default=None, type=str, help="directory of the browser client (default: the bundled www/)")
define("max_body_size", default=DEFAULT_MAX_BODY_SIZE, help="largest request body in bytes; larger ones get 413")
define(
    "config",
    type=str,
    help="read options from this file (Python syntax), then the command line again",
    callback=lambda path: parse_config_file(path, final=False),
)

log = logging.getLogger("talkserver")


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one: each long poll holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def open_store(path: str, sync: str = "normal") -> Store:
    """The store named by ``--db``; exits with one line on stderr if it cannot be used."""
    if sync not in SYNC_MODES:
        raise SystemExit(f"talkserver: --sync={sync}: use one of {', '.join(SYNC_MODES)}")
    if path == ":memory:":
        return MemoryStore()
    try:
        return SQLiteStore(path, sync=sync)
    except StoreOpenError as e:
        raise SystemExit(f"talkserver: {e}") from None


PRUNE_EVERY_MS = 3600 * 1000


def prune_tombstones(store: Store, retention_days: float) -> None:
    """Forget tombstones older than the retention window (a failure waits for the next round)."""
    try:
        pruned = store.prune(wall_clock_ms() - round(retention_days * 86_400_000))
    except StoreWriteFailed as e:
        log.warning("could not prune old tombstones: %s", e)
        return
    if pruned:
        log.info("pruned %d tombstones older than %g days", pruned, retention_days)


async def serve(store: Store) -> None:
    """Run the server on ``store`` until SIGTERM or SIGINT."""
    prune_tombstones(store, options.retention)
    tornado.ioloop.PeriodicCallback(lambda: prune_tombstones(store, options.retention), PRUNE_EVERY_MS).start()
    app = make_app(
        store,
        poll_timeout=options.poll_timeout,
        static_path=options.static_path,
        max_body_size=options.max_body_size,
    )
    # The server's own cap is a little above the limit: the handlers answer
    # oversized bodies with 413 themselves, which HTTPServer cannot.
    server = tornado.httpserver.HTTPServer(app, max_body_size=options.max_body_size + 65536)
    server.listen(options.port, options.address)
    log.info(
        "talkserver listening on http://%s:%d/ (store %s, open-files limit %d)",
        options.address, options.port, options.db, raise_open_files_limit(),
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    server.stop()
    store.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver`` console script."""
    parse_command_line(argv)
    if options.retention <= 0:
        raise SystemExit(f"talkserver: --retention={options.retention}: must be a positive number of days")
    # Opened before the loop starts, so a bad file ends the process at once.
    asyncio.run(serve(open_store(options.db, options.sync)))
