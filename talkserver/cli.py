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

import tornado.ioloop
from tornado.options import define, options, parse_command_line, parse_config_file

from . import collector, limits
from .app import DEFAULT_MAX_BODY_SIZE, make_app
from .auth import PasswordFileError, cookie_secret_path, exposure_warning, load_or_create_secret
from .shutdown import drain
from .stores import SYNC_MODES, MemoryStore, SQLiteStore, Store, StoreOpenError, StoreWriteFailed, wall_clock_ms

define("port", default=8000, help="TCP port to listen on", group="talkserver")
define("address", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)", group="talkserver")
define("db", default="talks.db", help="the store: an SQLite file (relative to the working directory), or :memory: to keep nothing", group="talkserver")
define("sync", default="normal", help="normal: commits survive a crash of the server; full: also a power loss, but slower", group="talkserver")
define("retention", default=7.0, help="days a deleted talk's tombstone is kept; older cursors get the full list and reset", group="talkserver")
define("poll_timeout", default=90.0, help="seconds a long poll waits before an empty answer", group="talkserver")
define("static_path", default=None, type=str, help="directory of the browser client (default: the bundled www/)", group="talkserver")
define("max_body_size", default=DEFAULT_MAX_BODY_SIZE, help="largest request body in bytes; larger ones get 413", group="talkserver")
# Hardening: docs/security.md says what each one protects against.
define("max_polls_per_ip", default=limits.DEFAULT_MAX_POLLS_PER_IP, help="concurrent long polls per client address (0: no limit); more get 429", group="talkserver")
define("write_rate", default=limits.DEFAULT_WRITE_RATE, help="writes per second per client address (0: no limit); more get 429", group="talkserver")
define("write_burst", default=limits.DEFAULT_WRITE_BURST, help="writes a client address may make at once before --write-rate applies", group="talkserver")
define("limit_local_writes", default=False, help="apply --write-rate to clients on this machine (loopback addresses) too", group="talkserver")
define("max_comments", default=limits.DEFAULT_MAX_COMMENTS, help="comments per talk (0: no limit); more get 409", group="talkserver")
define("idle_timeout", default=60.0, help="seconds a connection may take to send a request's headers or body before it is closed", group="talkserver")
define("xheaders", default=False, help="behind a reverse proxy: take the client address from X-Real-Ip / X-Forwarded-For", group="talkserver")
define("password_file", type=str, help="require HTTP Basic credentials from this file (see talkserver-passwd)", group="talkserver")
define("protect_talks", default=False, help="only the browser that proposed a talk may replace or delete it", group="talkserver")
define("cookie_secret", type=str, help="key for --protect-talks cookies (default: generated, kept beside --db)", group="talkserver")
define("gc", default="tuned", help="garbage collector: tuned (for thousands of parked polls) or python (Python's defaults); see docs/architecture.md", group="talkserver")
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


def hardening_settings() -> dict:
    """make_app() settings for the limits and access control chosen by options."""
    settings = {
        "max_polls_per_ip": options.max_polls_per_ip,
        "write_rate": options.write_rate,
        "write_burst": options.write_burst,
        "limit_local_writes": options.limit_local_writes,
        "max_comments": options.max_comments,
        "password_file": options.password_file,
        "protect_talks": options.protect_talks,
    }
    if options.protect_talks:
        settings["cookie_secret"] = options.cookie_secret or load_or_create_secret(cookie_secret_path(options.db))
    return settings


async def serve(store: Store) -> None:
    """Run the server on ``store`` until SIGTERM or SIGINT, then drain (talkserver.shutdown)."""
    prune_tombstones(store, options.retention)
    tornado.ioloop.PeriodicCallback(lambda: prune_tombstones(store, options.retention), PRUNE_EVERY_MS).start()
    try:
        app = make_app(
            store,
            poll_timeout=options.poll_timeout,
            static_path=options.static_path,
            max_body_size=options.max_body_size,
            **hardening_settings(),
        )
    except PasswordFileError as e:
        raise SystemExit(f"talkserver: {e}") from None
    collector.instrument(app.board.metrics)
    # The server's own cap is a little above the limit: the handlers answer
    # oversized bodies with 413 themselves, which HTTPServer cannot.
    server = collector.HTTPServer(
        app,
        max_body_size=options.max_body_size + 65536,
        xheaders=options.xheaders,
        idle_connection_timeout=options.idle_timeout,
        body_timeout=options.idle_timeout,
    )
    # Handle signals before listening: a client that can connect may
    # already rely on SIGTERM draining rather than killing.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server.listen(options.port, options.address)
    log.info(
        "talkserver listening on http://%s:%d/ (store %s, open-files limit %d)",
        options.address, options.port, options.db, raise_open_files_limit(),
    )
    collector.tune(options.gc)
    warning = exposure_warning(options.address, options.password_file, options.protect_talks)
    if warning:
        log.warning("%s", warning)

    await stop.wait()
    log.info("stopping: answering waiting polls, finishing writes")
    await drain(server, app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver`` console script."""
    parse_command_line(argv)
    if options.retention <= 0:
        raise SystemExit(f"talkserver: --retention={options.retention}: must be a positive number of days")
    if options.gc not in collector.POLICIES:
        raise SystemExit(f"talkserver: --gc={options.gc}: use one of {', '.join(collector.POLICIES)}")
    # Opened before the loop starts, so a bad file ends the process at once.
    asyncio.run(serve(open_store(options.db, options.sync)))
