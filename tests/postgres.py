"""PostgreSQL for the tests: a store driven from synchronous code, and freezing a cluster.

The throwaway cluster itself (``Cluster``) lives in
talkserver.testing.cluster, where the benchmarks reach it too; the
``postgres_cluster`` fixture (conftest.py) starts one per session.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
from pathlib import Path


class BlockingStore:
    """A PostgresStore driven from plain (synchronous) test code, on an event loop of its own.

    Its coroutine methods run to completion when called, so the store
    contract tests read the same for every store.  Everything else (``head``,
    ``changes_since``, ``_log``...) is the real store's.
    """

    def __init__(self, url: str, clock=None) -> None:
        from talkserver.stores import Settings
        from talkserver.stores.postgres import PostgresStore

        self._loop = asyncio.new_event_loop()
        self._store = self._loop.run_until_complete(PostgresStore.open(url, Settings(follow=False), clock=clock))

    def __getattr__(self, name: str):
        value = getattr(self._store, name)
        if inspect.iscoroutinefunction(value):
            return lambda *args, **kwargs: self._loop.run_until_complete(value(*args, **kwargs))
        return value

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._store.close())
            self._loop.close()


# -- freezing a cluster (SIGSTOP) --------------------------------------------------


def processes(cluster):
    """The pids of a cluster: the postmaster and all of its children."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True).stdout
    return [postmaster, *(int(p) for p in out.split())]


def stopped(pid):
    """Whether ``pid`` is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"
