"""A real talkserver in a subprocess, and a tiny HTTP client over raw sockets.

The client can pick its source address (any of 127.0.0.0/8 reaches a server
on 127.0.0.1), which is how the tests play several clients on one machine.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    """``python -m talkserver`` on a free port, started at once.

    It runs in ``cwd``, by default a fresh temporary directory, so the
    default store (talks.db in the working directory) is the server's own.
    ``stop()`` sends SIGTERM and returns the exit code; ``kill()`` sends
    SIGKILL, as a crash would.  ``open_files`` sets the process's open-files
    limit, soft and hard, so the server cannot raise it.
    """

    def __init__(self, *options: str, cwd: Path | None = None, open_files: int | None = None) -> None:
        self._own_dir = tempfile.TemporaryDirectory() if cwd is None else None
        self.cwd = Path(self._own_dir.name) if cwd is None else cwd
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # A file, not a pipe: a pipe nobody reads fills up with the access
        # log and then blocks the server.
        self._log = tempfile.TemporaryFile()
        self._terminated = False
        self.process = subprocess.Popen(
            [sys.executable, "-m", "talkserver", f"--port={self.port}", "--address=127.0.0.1", *options],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.cwd,
            preexec_fn=None if open_files is None else lambda: resource.setrlimit(
                resource.RLIMIT_NOFILE, (open_files, open_files)
            ),
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        """Everything the server has printed so far."""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def terminate(self) -> None:
        """Send SIGTERM once (a second one, once the drain is over, would kill)."""
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (unless sent already), then wait for the exit code (kill if it hangs)."""
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
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
        self.kill()
        self._log.close()
        if self._own_dir is not None:
            self._own_dir.cleanup()


def exchange(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    """One request on a kept-alive ``conn``: (status, decoded JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data)
    response = conn.getresponse()
    raw = response.read()
    return response.status, (json.loads(raw) if raw else None)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


async def send(
    port: int,
    method: str,
    path: str,
    body: bytes | str | dict | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    timeout: float = 30,
) -> Answer:
    """One request on its own connection (``Connection: close``) and its answer."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b""))
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return parse_answer(raw)


def parse_answer(raw: bytes) -> Answer:
    """An HTTP/1.1 answer with a Content-Length (or none, for 204) from its bytes."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return Answer(int(status_line.split()[1]), headers, rest[:length])
