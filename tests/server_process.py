"""A real talkserver in a subprocess, for tests that restart or kill it.

Ports come from 18300-18399, the range set aside for these tests.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PORTS = range(18300, 18400)


def free_port() -> int:
    """A port in PORTS that nothing listens on right now."""
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS}")


def run_talkserver(*args: str, cwd: Path, as_ordinary_user: bool = False) -> subprocess.CompletedProcess:
    """Run the talkserver command to its end (for starts that must fail).

    ``as_ordinary_user`` takes away root's power to write whatever the file
    permissions say (CAP_DAC_OVERRIDE), so a read-only file is read-only
    even when the tests run as root.
    """
    prefix = []
    if as_ordinary_user and os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    return subprocess.run(
        [*prefix, sys.executable, "-m", "talkserver", *args],
        cwd=cwd, capture_output=True, text=True, timeout=20,
    )


class ServerProcess:
    """``python -m talkserver`` on a port of its own, in ``cwd``."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.cwd = cwd
        self.args = args
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        # A file, not a pipe: a pipe nobody reads fills up with the access
        # log and then blocks the server.
        self.log = tempfile.TemporaryFile()

    def start(self) -> "ServerProcess":
        """Start the server and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "talkserver", f"--port={self.port}", *self.args],
            cwd=self.cwd, stdout=subprocess.DEVNULL, stderr=self.log,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"talkserver exited at start: {self.log.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError("talkserver did not start listening within 20 s")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: the ordinary shutdown."""
        self._stop(signal.SIGTERM)

    def _stop(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.log.close()

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        """A new keep-alive connection to the server."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        """One request on a fresh connection: (status, decoded JSON or None)."""
        conn = self.connection()
        try:
            return send(conn, method, path, body)
        finally:
            conn.close()


def send(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    """One request on ``conn``: (status, decoded JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data)
    response = conn.getresponse()
    raw = response.read()
    return response.status, (json.loads(raw) if raw else None)
