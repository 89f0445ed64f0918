"""``python -m talkserver`` in a subprocess, on the port it bound itself.

``ServerProcess`` starts the server with ``--port=0`` and reads the port
back from its first log line, so no port is picked and released before
the server binds it; it is a context manager, and ``stop_leftovers``
kills whatever a failed test or run left running.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from talkserver.testing import WAIT
from talkserver.testing.rawhttp import exchange

# The first line a server logs names the port it bound; with --processes,
# each worker logs one.
_BOUND = re.compile(r"talkserver (?:listening on|worker \d+ serving) http://\S+?:(\d+)/")
_running: set["ServerProcess"] = set()


class ServerProcess:
    """``python -m talkserver --port=0`` with ``options``, started at once.

    The port is the one the server bound and logged (with ``--processes=N``,
    once all N workers have logged theirs), so no other process can take
    it in between.  It runs in ``cwd``, by default a fresh temporary
    directory, so the default store (talks.db in the working directory) is
    the server's own.  ``stop()`` sends SIGTERM and returns the exit code;
    ``kill()`` sends SIGKILL, as a crash would.  ``open_files`` sets the
    process's open-files limit, soft and hard, so the server cannot raise
    it.  ``command`` replaces ``python -m talkserver`` with another server
    program, and ``bound`` the pattern of the log line that names the port
    it bound (see ``running``).

    Use it as a context manager: the process is killed when the block
    ends, however it ends.
    """

    def __init__(self, *options: str, cwd: Path | None = None, open_files: int | None = None,
                 command: list[str] | None = None, bound: re.Pattern = None) -> None:
        self._own_dir = tempfile.TemporaryDirectory() if cwd is None else None
        self.cwd = Path(self._own_dir.name) if cwd is None else cwd
        # A file, not a pipe: a pipe nobody reads fills up with the access
        # log and then blocks the server.
        self._log = tempfile.TemporaryFile()
        self._terminated = False
        argv = command or [sys.executable, "-m", "talkserver", "--port=0", "--address=127.0.0.1", *options]
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd,
            preexec_fn=None if open_files is None else lambda: resource.setrlimit(
                resource.RLIMIT_NOFILE, (open_files, open_files)
            ),
        )
        _running.add(self)
        try:
            self.port = self._bound_port(bound or _BOUND, _workers(options), time.monotonic() + WAIT)
        except BaseException:
            self.close()
            raise
        self.base = f"http://127.0.0.1:{self.port}"

    def _bound_port(self, bound: re.Pattern, workers: int, deadline: float) -> int:
        while True:
            ports = bound.findall(self.log())
            if len(ports) >= workers:
                return int(ports[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode} before serving:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not log the port it bound within {WAIT:g} s:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        """Everything the server has printed so far."""
        # pread, never seek: the server writes through the same open file,
        # so moving its offset back would make the server's next line
        # overwrite the log's beginning.
        fd = self._log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def terminate(self) -> None:
        """Send SIGTERM once (a second one, once the drain is over, would kill)."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM (unless sent already), then wait for the exit code (kill if it hangs)."""
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    async def stopped(self, timeout: float = WAIT) -> int:
        """``stop()`` without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.stop, timeout)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def close(self) -> None:
        """Kill the process if it still runs and remove what it left behind."""
        self.kill()
        _running.discard(self)
        self._log.close()
        if self._own_dir is not None:
            self._own_dir.cleanup()

    def connection(self, timeout: float = WAIT) -> http.client.HTTPConnection:
        """A new keep-alive connection to the server."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        """One request on a fresh connection: (status, decoded JSON or None)."""
        conn = self.connection()
        try:
            return exchange(conn, method, path, body)
        finally:
            conn.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _workers(options) -> int:
    """How many "serving" lines to wait for: one per worker of --processes."""
    count = 1
    for option in options:
        if option.startswith("--processes="):
            count = int(option.split("=", 1)[1]) or os.cpu_count() or 1
    return count


def running_servers() -> set["ServerProcess"]:
    """The ServerProcesses started and not yet closed."""
    return set(_running)


def stop_leftovers(kept: set["ServerProcess"] = frozenset()) -> int:
    """Kill every ServerProcess but ``kept`` that is still open (a test that failed early); returns how many ran."""
    left = [server for server in _running - kept if server.process.poll() is None]
    for server in _running - kept:
        server.close()
    return len(left)
