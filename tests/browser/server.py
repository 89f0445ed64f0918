"""A real talkserver for the browser tests, in a subprocess that can be killed and started again.

The ``server`` fixture (conftest.py) gives each test one; tests that need
other options or another store make their own ``Server``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from ..harness import WAIT

ROOT = Path(__file__).resolve().parents[2]
# Short enough that pages see empty (timed-out) answers during a test too.
POLL_TIMEOUT = 4.0


class Server:
    """A talkserver subprocess that can be killed and started again on its port.

    Port 0 (the default) lets the first start pick a free port, read back
    from the server's first log line; later starts take that port again.
    """

    def __init__(
        self, port: int, log_path: Path, poll_timeout: float = POLL_TIMEOUT, db: str = ":memory:",
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.args = args  # more talkserver options, e.g. --api=etag
        self.poll_timeout = poll_timeout
        # Named, not left to the default, so no test sees another's talks.
        self.db = db
        # Seconds the server's wall clock runs ahead; see start().
        self.clock_ahead = 0
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # A clock set ahead is the one way to make a real server hand out
        # cursors that its successor sees as from the future (a reset).
        run = (
            "import runpy, time; ns = time.time_ns; "
            f"time.time_ns = lambda: ns() + {int(self.clock_ahead * 1e9)}; "
            "runpy.run_module('talkserver', run_name='__main__')"
        )
        log = open(self.log_path, "ab")
        logged_before = log.tell()
        self.process = subprocess.Popen(
            [
                sys.executable, "-c", run,
                f"--port={self.port}", f"--poll-timeout={self.poll_timeout}", f"--db={self.db}",
                *self.args,
            ],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"talkserver exited: {self.log_path.read_text()}")
            with open(self.log_path, "rb") as written:
                written.seek(logged_before)
                bound = re.search(rb"talkserver listening on http://\S+?:(\d+)/", written.read())
            if bound:
                self.port = int(bound.group(1))
                self.url = f"http://127.0.0.1:{self.port}/"
                return
            time.sleep(0.05)
        raise RuntimeError(f"talkserver did not log its port within {WAIT:g} s: {self.log_path.read_text()}")

    def kill(self) -> None:
        """End the process at once, as a crash would: no goodbye to the pages."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
