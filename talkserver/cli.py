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
from .store import MemoryStore

define("port", default=8000, help="TCP port to listen on", group="talkserver")
define("address", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)", group="talkserver")
define("db", default=":memory:", help="the store: an SQLite file, or :memory: to keep nothing", group="talkserver")
define("poll_timeout", default=90.0, help="seconds a long poll waits before an empty answer", group="talkserver")
define("static_path", default=None, type=str, help="directory of the browser client (default: the bundled www/)", group="talkserver")
define("max_body_size", default=DEFAULT_MAX_BODY_SIZE, help="largest request body in bytes; larger ones get 413", group="talkserver")
define(
    "config",
    type=str,
    help="read options from this file (Python syntax), then the command line again",
    callback=lambda path: parse_config_file(path, final=False),
    group="talkserver",
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


def open_store(path: str):
    """The store named by ``--db``."""
    if path == ":memory:":
        return MemoryStore()
    raise SystemExit(f"talkserver: --db={path}: only :memory: is supported so far")


async def serve() -> None:
    """Run the server until SIGTERM or SIGINT."""
    store = open_store(options.db)
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
    asyncio.run(serve())
