"""The ``talkserver`` command: options, the listening socket, signals.

Options are tornado.options, so they can come from the command line
(``--port=8000``) or from a config file (``--config=FILE``, Python syntax:
``port = 8000``).  ``--help`` lists them all.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import resource
import signal

import tornado.ioloop
import tornado.netutil
from tornado.options import define, options, parse_command_line, parse_config_file

from . import collector, guard, limits, tornado_private
from .follow import streams
from .accept import HTTPServer
from .app import DEFAULT_MAX_BODY_SIZE, make_app
from .guard import loopback_hosts, parse_allowed_hosts
from .auth import PasswordFileError, cookie_secret_path, exposure_warning, load_or_create_secret
from .follow.conditional import API_MODES
from .shutdown import drain
from .stores import (
    SYNC_MODES, MemoryStore, PostgresStore, SQLiteStore, Store, StoreOpenError, StoreWriteFailed,
    is_postgres_url, wall_clock_ms,
)
from .stores.postgres import redact
from .workers import Worker, fork_workers

define("port", default=8000, help="TCP port to listen on", group="talkserver")
define("address", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)", group="talkserver")
define("db", default="talks.db", help="the store: an SQLite file (relative to the working directory), :memory: to keep nothing, or postgresql://user:pass@host:port/dbname to share one board between processes and hosts", group="talkserver")
define("processes", default=1, help="worker processes sharing the port (0: one per core); more than 1 needs a postgresql:// --db", group="talkserver")
define("sync", default="normal", help="normal: commits survive a crash of the server; full: also a power loss, but slower", group="talkserver")
define("retention", default=7.0, help="days a deleted talk's tombstone is kept; older cursors get the full list and reset", group="talkserver")
define("poll_timeout", default=90.0, help="seconds a long poll waits before an empty answer", group="talkserver")
define("api", default="changes", help="what plain GET /talks answers: changes ({serverTime, talks}, the book's 2nd edition) or etag (the array, with ETag and Prefer: wait polling, its 3rd and 4th)", group="talkserver")
define("heartbeat", default=streams.DEFAULT_HEARTBEAT, help="seconds between keep-alive comments on an idle event stream (0: none)", group="talkserver")
define("stream_buffer", default=streams.DEFAULT_BUFFER_LIMIT, help="bytes an event stream's client may leave unread before the stream is closed (it reconnects and catches up)", group="talkserver")
define("static_path", default=None, type=str, help="directory of the browser client (default: the bundled www/)", group="talkserver")
define("max_body_size", default=DEFAULT_MAX_BODY_SIZE, help="largest request body in bytes; larger ones get 413", group="talkserver")
# Hardening: docs/security.md says what each one protects against.
define("max_polls_per_ip", default=limits.DEFAULT_MAX_POLLS_PER_IP, help="concurrent long polls per client address (0: no limit); more get 429", group="talkserver")
define("write_rate", default=limits.DEFAULT_WRITE_RATE, help="writes per second per client address (0: no limit); more get 429", group="talkserver")
define("write_burst", default=limits.DEFAULT_WRITE_BURST, help="writes a client address may make at once before --write-rate applies", group="talkserver")
define("limit_local_writes", default=False, help="apply --write-rate to clients on this machine (loopback addresses) too", group="talkserver")
define("max_comments", default=limits.DEFAULT_MAX_COMMENTS, help="comments per talk (0: no limit); more get 409", group="talkserver")
define("idle_timeout", default=60.0, help="seconds a connection may take to send a request's headers or body before it is closed", group="talkserver")
define("allowed_hosts", default=None, type=str, help="comma-separated host names the server answers to (Host header; '*' for any; .example.com for subdomains); default: the loopback names on a loopback address, any name otherwise", group="talkserver")
define("send_timeout", default=60.0, help="seconds a client may leave more than 64 KiB of an answer unread before its connection is closed (0: never)", group="talkserver")
define("xheaders", default=False, help="behind a reverse proxy: take the client address from X-Real-Ip / X-Forwarded-For", group="talkserver")
define("password_file", type=str, help="require HTTP Basic credentials from this file (see talkserver-passwd)", group="talkserver")
define("protect_talks", default=False, help="only the browser that proposed a talk may replace or delete it", group="talkserver")
define("cookie_secret", type=str, help="key for --protect-talks cookies (default: generated, kept beside --db)", group="talkserver")
define("gc", default="tuned", help="garbage collector: tuned (for thousands of parked polls) or python (Python's defaults); see docs/architecture.md", group="talkserver")
define("fast_polls", default=True, help="serve plain long polls without a RequestHandler (talkserver/fastpolls.py); --fast-polls=false sends every request through Tornado's routing, for comparison", group="talkserver")
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
    """The local store named by ``--db``; exits with one line on stderr if it cannot be used."""
    if sync not in SYNC_MODES:
        raise SystemExit(f"talkserver: --sync={sync}: use one of {', '.join(SYNC_MODES)}")
    if path == ":memory:":
        return MemoryStore()
    try:
        return SQLiteStore(path, sync=sync)
    except StoreOpenError as e:
        raise SystemExit(f"talkserver: {e}") from None


async def open_shared_store(url: str, follow: bool = True) -> Store:
    """The PostgreSQL store named by ``--db``; exits with one line on stderr if it cannot be used."""
    try:
        return await PostgresStore.open(url, follow=follow)
    except StoreOpenError as e:
        raise SystemExit(f"talkserver: {e}") from None


async def check_shared_store(url: str) -> None:
    """Open (creating or migrating the schema) and close the store once, before forking workers."""
    store = await open_shared_store(url, follow=False)
    await store.close()


PRUNE_EVERY_MS = 3600 * 1000


async def prune_tombstones(store: Store, retention_days: float) -> None:
    """Forget tombstones older than the retention window (a failure waits for the next round)."""
    try:
        pruned = store.prune(wall_clock_ms() - round(retention_days * 86_400_000))
        if inspect.isawaitable(pruned):
            pruned = await pruned
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
        "send_timeout": options.send_timeout,
        "allowed_hosts": (
            parse_allowed_hosts(options.allowed_hosts) if options.allowed_hosts is not None
            else loopback_hosts(options.address)
        ),
    }
    if options.protect_talks:
        if not options.cookie_secret and is_postgres_url(options.db):
            raise SystemExit("talkserver: --protect-talks with PostgreSQL needs --cookie-secret, the same for every process and host")
        settings["cookie_secret"] = options.cookie_secret or load_or_create_secret(cookie_secret_path(options.db))
    return settings


async def serve(store: Store | None, worker: Worker | None = None) -> None:
    """Run the server until SIGTERM or SIGINT, then drain (talkserver.shutdown).

    ``store`` None means the PostgreSQL store of ``--db``, opened here, in
    the process (and event loop) that uses it.  A ``worker`` (from
    ``--processes``) serves the parent's socket and also stops when the
    parent tells it to.
    """
    if store is None:
        store = await open_shared_store(options.db)
    await prune_tombstones(store, options.retention)
    tornado.ioloop.PeriodicCallback(lambda: prune_tombstones(store, options.retention), PRUNE_EVERY_MS).start()
    try:
        app = make_app(
            store,
            poll_timeout=options.poll_timeout,
            static_path=options.static_path,
            max_body_size=options.max_body_size,
            api=options.api,
            heartbeat=options.heartbeat,
            stream_buffer=options.stream_buffer,
            fast_polls=options.fast_polls,
            **hardening_settings(),
        )
    except PasswordFileError as e:
        raise SystemExit(f"talkserver: {e}") from None
    collector.instrument(app.board.metrics)
    # The server's own cap is a little above the limit: the handlers answer
    # oversized bodies with 413 themselves, which HTTPServer cannot.
    server = HTTPServer(
        app,
        # Above guard.MAX_HEADERS, so headers up to that get a 431 in JSON.
        max_header_size=guard.TORNADO_MAX_HEADER_SIZE,
        max_body_size=options.max_body_size + 65536,
        xheaders=options.xheaders,
        idle_connection_timeout=options.idle_timeout,
        body_timeout=options.idle_timeout,
    )
    server.accept_errors = app.board.metrics.counter(  # type: ignore[attr-defined]
        "talkserver_accept_errors_total", "Failed accepts of new connections, by error.", label="error"
    )
    # Handle signals before listening: a client that can connect may
    # already rely on SIGTERM draining rather than killing.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if worker is None:
        sockets = tornado.netutil.bind_sockets(options.port, options.address)
        server.add_sockets(sockets)
        log.info(
            "talkserver listening on %s (store %s, open-files limit %d)",
            _where(sockets), _store_name(options.db), raise_open_files_limit(),
        )
    else:
        loop.add_reader(worker.stop_fd, stop.set)
        app.board.metrics.share_with(worker.metrics_dir, worker.number)
        tornado.ioloop.PeriodicCallback(app.board.metrics.publish, 1000).start()
        server.add_sockets(worker.sockets)
        log.info("talkserver worker %d serving %s (store %s)",
                 worker.number, _where(worker.sockets), _store_name(options.db))
    # In every process that serves (each worker after the fork, too).
    collector.tune(options.gc)
    warning = exposure_warning(options.address, options.password_file, options.protect_talks)
    if warning and (worker is None or worker.number == 0):
        log.warning("%s", warning)
    if options.api == "etag" and options.static_path is None:
        log.warning("the bundled page polls with changesSince and cannot read --api=etag answers; "
                    "serve the book's 3rd or 4th edition client with --static-path")

    await stop.wait()
    log.info("stopping: answering waiting polls, finishing writes")
    await drain(server, app)


def _where(sockets) -> str:
    """The URL the server answers on, with the port it bound (``--port=0`` picks a free one)."""
    port = sockets[0].getsockname()[1]
    host = f"[{options.address}]" if ":" in (options.address or "") else (options.address or "0.0.0.0")
    return f"http://{host}:{port}/"


def _store_name(db: str) -> str:
    return redact(db) if is_postgres_url(db) else db


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver`` console script."""
    tornado_private.refuse_unsupported()
    parse_command_line(argv)
    if options.api not in API_MODES:
        raise SystemExit(f"talkserver: --api={options.api}: use one of {', '.join(API_MODES)}")
    if options.retention <= 0:
        raise SystemExit(f"talkserver: --retention={options.retention}: must be a positive number of days")
    if options.gc not in collector.POLICIES:
        raise SystemExit(f"talkserver: --gc={options.gc}: use one of {', '.join(collector.POLICIES)}")
    if options.processes < 0:
        raise SystemExit(f"talkserver: --processes={options.processes}: must be 0 (one per core) or more")
    shared = is_postgres_url(options.db)
    if options.processes != 1 and not shared:
        raise SystemExit(
            f"talkserver: --processes={options.processes} needs a store the processes can share:"
            " use --db=postgresql://... (SQLite and :memory: serve one process)"
        )
    if not shared:
        # Opened before the loop starts, so a bad file ends the process at once.
        asyncio.run(serve(open_store(options.db, options.sync)))
        return
    # Checked (and the schema made or migrated) once, before any worker
    # starts, so a bad URL ends the command at once instead of every worker.
    asyncio.run(check_shared_store(options.db))
    if options.processes == 1:
        asyncio.run(serve(None))
        return
    raise_open_files_limit()
    worker = fork_workers(options.processes, options.port, options.address)
    asyncio.run(serve(None, worker))
