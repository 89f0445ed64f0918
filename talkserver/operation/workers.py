"""``--processes``: several worker processes on one listening socket, the Tornado way.

The parent binds the socket (``tornado.netutil.bind_sockets``, in cli.py) and forks
the workers with ``tornado.process.fork_processes``, which stays in the
parent to restart any worker that dies (a crash, SIGKILL); that worker's
clients simply poll again and reach a sibling or the new worker.  Each
worker then serves the inherited socket with ``HTTPServer.add_sockets``.

Stopping: the parent holds the write end of a pipe whose read end every
worker watches.  SIGTERM or SIGINT to the parent closes it; each worker sees
end-of-file and drains as on its own SIGTERM, exits 0, and once every
worker has exited cleanly ``fork_processes`` ends the parent with 0.  A
parent that is killed outright closes the pipe too, so no worker outlives it.

A worker that stops answering (its event loop stuck: a deadlock, a
SIGSTOP, an endless loop) does not die, so ``fork_processes`` alone would
wait for it forever while its share of the clients hang.  So each worker
sends a heartbeat from its event loop every ``HEARTBEAT_EVERY`` seconds
(its number and pid, a few bytes written at once down a pipe all workers
share), and the parent, woken by ``SIGALRM`` at the same pace while it
waits in ``fork_processes``, reads them.  A worker silent for
``HANG_AFTER`` seconds is killed (SIGKILL, logged in one line), and
``fork_processes`` restarts it as it restarts any worker that dies: the
supervision stays Tornado's, with a timer beside it.  A worker is watched
from its first heartbeat on, once it serves, so a slow start (a database
still coming up) is never taken for a hang; the watch ends when the
parent is told to stop.  It is killed through a pidfd (Linux) taken at its
first heartbeat, so a pid that a dead worker left and another process
took can never be hit.

Every log line says which process wrote it: ``[parent]`` for the parent
(starting, restarting and stopping workers), ``[w0]``, ``[w1]``... for the
workers, numbered from 0 as Tornado numbers them (``task_id()``).  The
prefix goes in front of whatever format the log has (``tag_log_lines``).

The workers share one more thing: a directory, new for each start, where
each keeps its metrics (prometheus_client's multiprocess mode), so a scrape
of ``/metrics`` describes the whole server (talkserver.operation.metrics).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tornado.process

from talkserver.operation import metrics


METRICS_PREFIX = "talkserver-metrics-"
# Seconds between a worker's heartbeats, and without one before the parent
# replaces it: far above the longest pause a healthy worker makes (a full
# collection of a large heap, under a second).
HEARTBEAT_EVERY = 1.0
HANG_AFTER = 10.0
_BEAT = struct.Struct("!HI")  # worker number, pid: one write, well under PIPE_BUF, so never torn

log = logging.getLogger("talkserver")


def _remove_orphaned_metrics() -> None:
    """Remove metrics directories whose parent process is gone (it was killed, so its atexit never ran)."""
    for path in Path(tempfile.gettempdir()).glob(f"{METRICS_PREFIX}*-*"):
        pid = path.name[len(METRICS_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@dataclass
class Worker:
    """What a forked worker receives from the parent."""

    number: int
    sockets: list[socket.socket]
    stop_fd: int  # readable (end-of-file) once the parent wants every worker to stop
    metrics_dir: str
    heartbeat_fd: int = -1  # where beat() tells the parent this worker still answers

    def beat(self) -> None:
        """Tell the parent this worker's event loop still turns (call it from the loop)."""
        try:
            os.write(self.heartbeat_fd, _BEAT.pack(self.number, os.getpid()))
        except BlockingIOError:
            pass  # the parent has not read for a while; the next beat will do
        except OSError:
            pass  # the parent is gone; the stop pipe ends this worker


class _Watchdog:
    """In the parent: the workers' last heartbeats, and the killing of one gone silent."""

    def __init__(self, beats_fd: int) -> None:
        self.fd = beats_fd
        self.on = True
        # worker number -> (pid, a pidfd or None, monotonic time of its last beat)
        self.seen: dict[int, tuple[int, int | None, float]] = {}
        self._partial = b""

    def check(self, signum=None, frame=None) -> None:
        """Read the heartbeats that came, then replace any worker silent for ``HANG_AFTER``."""
        if not self.on:
            return
        now = time.monotonic()
        data = self._partial
        while True:
            try:
                chunk = os.read(self.fd, _BEAT.size * 4096)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            data += chunk
        whole = len(data) - len(data) % _BEAT.size
        self._partial = data[whole:]
        for number, pid in _BEAT.iter_unpack(data[:whole]):
            known = self.seen.get(number)
            if known is not None and known[0] == pid:
                self.seen[number] = (pid, known[1], now)
                continue
            if known is not None:
                _close(known[1])  # the worker it replaced
                del self.seen[number]
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # it beat and died since: Tornado restarts it, nothing to watch
            except (AttributeError, OSError):
                pidfd = None  # no pidfds on this system: killed by pid
            self.seen[number] = (pid, pidfd, now)
        for number, (pid, pidfd, last) in list(self.seen.items()):
            if now - last < HANG_AFTER:
                continue
            del self.seen[number]
            if _kill(pid, pidfd):
                log.warning("worker %d (pid %d) has not answered for %.0f s: killed, to be replaced",
                            number, pid, now - last)
            _close(pidfd)

    def stop(self) -> None:
        """Watch no more (the workers are draining, and none is to be replaced)."""
        self.on = False
        signal.setitimer(signal.ITIMER_REAL, 0, 0)

    def forget(self) -> None:
        """In a worker: drop the parent's watch (its pidfds) and its timer's handler."""
        for _, pidfd, _ in self.seen.values():
            _close(pidfd)
        self.seen.clear()
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.close(self.fd)


def _kill(pid: int, pidfd: int | None) -> bool:
    """SIGKILL the worker; False if it is gone already (it died, and Tornado restarts it)."""
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


class _Tagged(logging.Formatter):
    """A log format with ``[tag] `` in front of every record."""

    def __init__(self, inner: logging.Formatter, tag: str) -> None:
        super().__init__()
        self.inner, self.prefix = inner, f"[{tag}] "

    def format(self, record: logging.LogRecord) -> str:
        return self.prefix + self.inner.format(record)


def tag_log_lines(tag: str) -> None:
    """Start every log line this process writes with ``[tag]`` (replacing an earlier tag)."""
    for handler in logging.getLogger().handlers:
        inner = handler.formatter or logging.Formatter()
        if isinstance(inner, _Tagged):
            inner = inner.inner
        handler.setFormatter(_Tagged(inner, tag))


def fork_workers(count: int, sockets: list[socket.socket]) -> Worker:
    """Fork ``count`` workers (0: one per core) serving ``sockets``, and return in each.

    Each worker tags its log lines ``[wN]``; the caller tags the parent's.
    The parent never returns: it restarts workers that die, and exits once
    all of them have stopped cleanly.
    """
    _remove_orphaned_metrics()
    metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
    stop_read, stop_write = os.pipe()
    beats_read, beats_write = os.pipe()
    os.set_blocking(beats_read, False)
    os.set_blocking(beats_write, False)  # a worker never waits for the parent to read
    watchdog = _Watchdog(beats_read)
    parent = os.getpid()
    stopping = False

    def stop_all(signum, frame) -> None:
        nonlocal stopping
        if os.getpid() == parent and not stopping:
            stopping = True
            watchdog.stop()
            os.close(stop_write)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGALRM, watchdog.check)
    signal.setitimer(signal.ITIMER_REAL, HEARTBEAT_EVERY, HEARTBEAT_EVERY)
    atexit.register(lambda: os.getpid() == parent and shutil.rmtree(metrics_dir, ignore_errors=True))

    number = tornado.process.fork_processes(count)
    tag_log_lines(f"w{number}")
    # In a worker from here on: only the parent may close the pipe, and the
    # worker's own event loop handles its signals.
    os.close(stop_write)
    watchdog.forget()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Before the worker makes its server, and so its metrics.
    metrics.share_between_workers(metrics_dir, number)
    return Worker(number, sockets, stop_read, metrics_dir, beats_write)
