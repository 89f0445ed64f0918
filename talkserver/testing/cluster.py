"""A throwaway PostgreSQL cluster, and fresh databases in it, for the tests and the benchmarks.

The cluster lives in a temporary directory, listens on a free port of
127.0.0.1 and is removed by ``destroy()``.  PostgreSQL cannot bind port 0,
so the cluster asks the kernel for a port that is free now and, should
another process take it before PostgreSQL binds it, starts again on
another one.  The server binaries are Debian's
(``/usr/lib/postgresql/*/bin``, which ``make test`` installs when
missing).  PostgreSQL refuses to run as root, so under root the cluster
runs as the ``postgres`` system user (or ``nobody`` when there is none).

By default it is tuned for tests, not for keeping data: ``fsync=off``
makes start-up and every commit fast, and a crash of the machine would
lose the cluster, which nobody needs afterwards anyway.  A clean stop or
restart (``pg_ctl restart``) still loses nothing, so the tests that
restart PostgreSQL under load check real guarantees.  ``durable=True``
keeps PostgreSQL's own durability defaults, for the benchmarks.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("PostgreSQL is not installed: run `make test` (it installs it) or apt-get install postgresql")


def port_free_now() -> int:
    """A port of 127.0.0.1 nothing listens on at this moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unprivileged() -> tuple[int, int] | None:
    """(uid, gid) to run the cluster as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam("postgres")
        return user.pw_uid, user.pw_gid
    except KeyError:
        return 65534, 65534


class Cluster:
    """A running PostgreSQL cluster owned by the test session."""

    def __init__(self, durable: bool = False) -> None:
        # ``durable``: PostgreSQL's own defaults (fsync on), for benchmarks.
        self.durable = durable
        self.bin = _bin_dir()
        self.owner = _unprivileged()
        self.dir = Path(tempfile.mkdtemp(prefix="talkserver-pg-"))
        self.data = self.dir / "data"
        self.port = 0
        self._names = itertools.count()
        if self.owner is not None:
            os.chown(self.dir, *self.owner)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        for attempt in range(5):
            self.port = port_free_now()
            try:
                self.start()
                break
            except subprocess.CalledProcessError:
                if attempt == 4 or "could not bind" not in self.server_log():
                    raise

    def server_log(self) -> str:
        """What the PostgreSQL server has logged so far."""
        try:
            return (self.dir / "log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _run(self, program: str, *args: str) -> None:
        prefix = []
        if self.owner is not None:
            uid, gid = self.owner
            prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        subprocess.run([*prefix, str(self.bin / program), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> None:
        """Start (or start again) the cluster and wait until it accepts connections."""
        settings = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
            " -c max_connections=300"
        )
        if not self.durable:
            settings += " -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", settings, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``fast``: roll back open transactions, then shut down cleanly)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new, empty database; returns its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql as the superuser; returns its unaligned output."""
        psql = self.bin / "psql"
        if not psql.exists():
            psql = Path(shutil.which("psql") or "psql")
        done = subprocess.run(
            [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )
        return done.stdout.strip()

    def dump(self, url: str, path) -> None:
        """``pg_dump`` the database of ``url`` to ``path`` (custom format)."""
        subprocess.run(
            [str(self.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-Fc", "-f", str(path), url.rsplit("/", 1)[1]],
            check=True, capture_output=True, timeout=60,
        )

    def restore(self, url: str, path) -> None:
        """Put a dump back under whatever runs on it, in one transaction, as docs/storage.md tells operators to."""
        subprocess.run(
            [str(self.bin / "pg_restore"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "--clean", "--if-exists", "--single-transaction", "-d", url.rsplit("/", 1)[1], str(path)],
            check=True, capture_output=True, timeout=60,
        )

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m talkserver.testing.cluster URL_FILE``: a durable throwaway
    cluster for a benchmark script; its URL goes to URL_FILE, and SIGTERM
    removes it."""
    import signal
    import sys
    import time

    [url_file] = sys.argv[1:] if argv is None else argv
    cluster = Cluster(durable=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        Path(url_file).write_text(cluster.url())
        while True:
            time.sleep(1)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
