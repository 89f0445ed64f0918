"""The ``talkserver`` command: the listening socket, the store, signals.

Its options (talkserver.command.options) come from the command line
(``--port=8000``) or a config file (``--config=FILE``, Python syntax:
``port = 8000``); ``--help`` lists them.  Whatever stops the command before
it serves (a mistake in the options, a port in use, a store that cannot be
opened) is one line on stderr, ``talkserver: ...``, and exit status 2.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys

import tornado.ioloop
import tornado.netutil

from talkserver.operation import collector
from talkserver.access import guard
from talkserver.wire import tornado_check
from talkserver.web.accept import HTTPServer
from talkserver.web.app import make_app
from talkserver.access.guard import loopback_hosts, parse_allowed_hosts
from talkserver.access.auth import (
    CookieSecretError, PasswordFileError, cookie_secret_path, exposure_warning, load_or_create_secret, read_password_file,
)
from talkserver.command.dbwait import open_when_reachable
from talkserver.command.options import Refused, options, parse
from talkserver.operation.shutdown import drain
from talkserver.stores import (
    Settings, Store, StoreOpenError, StoreWriteFailed, UnknownStore, WriteOutcomeUnknown, open_store, registry,
    store_class, wall_clock_ms,
)
from talkserver.operation import metrics
from talkserver.operation.openfiles import raise_open_files_limit
from talkserver.words import counted
from talkserver.operation.workers import HEARTBEAT_EVERY, Worker, fork_workers, tag_log_lines

log = logging.getLogger("talkserver")


def store_settings(follow: bool = True) -> Settings:
    """How to open the store, from the options."""
    return Settings(sync=options.sync, timeout=options.db_timeout, follow=follow)


async def open_db(follow: bool = True, wait: float = 0.0) -> Store:
    """The store named by ``--db`` (talkserver.stores.registry); ``Refused`` if it cannot be used.

    A database that is away is waited for up to ``wait`` seconds
    (talkserver.command.dbwait).
    """
    try:
        return await open_when_reachable(lambda: open_store(options.db, store_settings(follow)), wait)
    except StoreOpenError as e:
        raise Refused(str(e)) from None


async def check_store() -> None:
    """Open (creating or migrating the schema) and close the store once, before forking workers.

    This first open is the one that waits for a database not there yet (``--db-wait``).
    """
    store = await open_db(follow=False, wait=options.db_wait)
    await store.close()


PRUNE_EVERY_MS = 3600 * 1000


async def prune_tombstones(store: Store, retention_days: float) -> None:
    """Forget tombstones older than the retention window (a failure waits for the next round)."""
    try:
        pruned = await store.prune(wall_clock_ms() - round(retention_days * 86_400_000))
    except (StoreWriteFailed, WriteOutcomeUnknown) as e:
        log.warning("could not prune old tombstones: %s", e)
        return
    if pruned:
        log.info("pruned %s older than %s", counted(pruned, "tombstone"), counted(retention_days, "day"))


def hardening_settings() -> dict:
    """make_app() settings for the limits and access control chosen by options."""
    settings = {
        "max_polls_per_ip": options.max_polls_per_ip,
        "write_rate": options.write_rate,
        "write_burst": options.write_burst,
        "limit_local_writes": options.limit_local_writes,
        "max_comments": options.max_comments,
        "max_talks": options.max_talks,
        "max_board_bytes": options.max_board_bytes,
        "password_file": options.password_file,
        "protect_talks": options.protect_talks,
        "send_timeout": options.send_timeout,
        "allowed_hosts": (
            parse_allowed_hosts(options.allowed_hosts) if options.allowed_hosts is not None
            else loopback_hosts(options.address)
        ),
    }
    if options.protect_talks:
        settings["cookie_secret"] = options.cookie_secret or stored_cookie_secret()
    return settings


def stored_cookie_secret() -> str:
    """The --protect-talks secret kept beside --db (made on first use); ``Refused`` if it cannot be."""
    try:
        return load_or_create_secret(cookie_secret_path(options.db))
    except CookieSecretError as e:
        raise Refused(f"--protect-talks: {e}") from None


async def serve(worker: Worker | None = None) -> None:
    """Run the server until SIGTERM or SIGINT, then drain (talkserver.operation.shutdown).

    The store of ``--db`` is opened here, in the process (and event loop)
    that uses it.  A ``worker`` (from ``--processes``) serves the parent's
    socket and also stops when the parent tells it to.
    """
    store = await open_db()
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
        raise Refused(str(e)) from None
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
        sockets = listen(options.port, options.address)
        server.add_sockets(sockets)
        announce(
            "talkserver listening on %s (store %s, open-files limit %d)",
            _where(sockets), _store_name(options.db), raise_open_files_limit(),
        )
    else:
        loop.add_reader(worker.stop_fd, stop.set)
        # Other workers' scrapes read this one's gauges as last published.
        tornado.ioloop.PeriodicCallback(app.board.metrics.publish, 1000).start()
        server.add_sockets(worker.sockets)
        announce("talkserver worker %d serving %s (store %s)",
                 worker.number, _where(worker.sockets), _store_name(options.db))
        # From now on the parent replaces this worker if these stop.
        worker.beat()
        tornado.ioloop.PeriodicCallback(worker.beat, HEARTBEAT_EVERY * 1000).start()
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


def announce(message: str, *args) -> None:
    """Log where the server listens, at INFO, or at the level --logging lets through.

    Scripts and tests that start it with ``--port=0`` read the port from
    this line, so it is written whatever ``--logging`` says (but ``none``).
    """
    log.log(max(logging.INFO, log.getEffectiveLevel()), message, *args)


def _where(sockets) -> str:
    """The URL the server answers on, with the port it bound (``--port=0`` picks a free one)."""
    port = sockets[0].getsockname()[1]
    host = f"[{options.address}]" if ":" in (options.address or "") else (options.address or "0.0.0.0")
    return f"http://{host}:{port}/"


def _store_name(db: str) -> str:
    return registry.display(db)


def listen(port: int, address: str) -> list[socket.socket]:
    """Bind and listen on ``address:port``; ``Refused`` with the reason if the system says no."""
    try:
        return tornado.netutil.bind_sockets(port, address)
    except socket.gaierror as e:
        raise Refused(f"--address={address}: not an address or a name this machine can resolve ({e.strerror})") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise Refused(f"--port={port}: already in use on {address} (another server is listening there)") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise Refused(f"--address={address}: not an address of this machine") from None
        if e.errno == errno.EACCES:
            raise Refused(f"--port={port}: a port below 1024 needs root or CAP_NET_BIND_SERVICE") from None
        raise Refused(f"cannot listen on {address} port {port}: {e.strerror}") from None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver`` console script: exit 2 with one line if it cannot start."""
    tornado_check.refuse_unsupported()
    try:
        run(sys.argv[1:] if argv is None else argv[1:])
    except Refused as e:
        print(f"talkserver: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: list[str]) -> None:
    """Read the options, open the store, serve until stopped."""
    parse(args)
    ignored = metrics.ignore_inherited_directory()
    if ignored is not None:
        log.warning("ignoring PROMETHEUS_MULTIPROC_DIR=%s from the environment: talkserver keeps its "
                    "metrics in memory, or under --processes in a directory of its own", ignored)
    try:
        shared = store_class(options.db).shared
    except UnknownStore as e:  # checked with the options already; kept for callers of run()
        raise Refused(f"--db={registry.display(options.db)}: {e}") from None
    if options.processes != 1 and not shared:
        raise Refused(
            f"--processes={options.processes} needs a store the processes can share:"
            " use --db=postgresql://... (SQLite and :memory: serve one process)"
        )
    if options.protect_talks and shared and not options.cookie_secret:
        raise Refused("--protect-talks with PostgreSQL needs --cookie-secret, the same for every process and host")
    if options.password_file:
        # Read once here too, so a bad file stops the command before any
        # store is opened or worker forked (a worker would be restarted).
        try:
            read_password_file(options.password_file)
        except PasswordFileError as e:
            raise Refused(str(e)) from None
    if options.protect_talks and not options.cookie_secret:
        stored_cookie_secret()  # read or made now, so a bad file stops the command before the store opens
    if not shared:
        asyncio.run(serve())
        return
    if options.processes != 1:
        tag_log_lines("parent")  # every line until the workers start is the parent's
    # Checked (and the schema made or migrated) once, before any worker
    # starts, so a bad URL ends the command at once instead of every worker.
    try:
        asyncio.run(check_store())
    except KeyboardInterrupt:
        # Ctrl-C while waiting for the database: no traceback for it.
        raise Refused("stopped while waiting for the database") from None
    if options.processes == 1:
        asyncio.run(serve())
        return
    sockets = listen(options.port, options.address)
    announce("talkserver listening on %s (store %s, open-files limit %d), starting the workers",
             _where(sockets), _store_name(options.db), raise_open_files_limit())
    worker = fork_workers(options.processes, sockets)
    asyncio.run(serve(worker))
