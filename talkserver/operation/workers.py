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
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tornado.process

from talkserver.operation import metrics


METRICS_PREFIX = "talkserver-metrics-"


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
    parent = os.getpid()
    stopping = False

    def stop_all(signum, frame) -> None:
        nonlocal stopping
        if os.getpid() == parent and not stopping:
            stopping = True
            os.close(stop_write)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    atexit.register(lambda: os.getpid() == parent and shutil.rmtree(metrics_dir, ignore_errors=True))

    number = tornado.process.fork_processes(count)
    tag_log_lines(f"w{number}")
    # In a worker from here on: only the parent may close the pipe, and the
    # worker's own event loop handles its signals.
    os.close(stop_write)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Before the worker makes its server, and so its metrics.
    metrics.share_between_workers(metrics_dir, number)
    return Worker(number, sockets, stop_read, metrics_dir)
