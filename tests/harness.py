"""The tests' one harness: waiting, real servers, raw HTTP, metrics, passwords, clocks.

- ``until``: the one way a test waits for something; it checks a condition
  until it holds, under one generous timeout (``WAIT``), so no assertion
  depends on how fast the machine is.
- ``ServerProcess``: ``python -m talkserver`` in a subprocess on the port
  it bound itself (``--port=0``, read back from its first log line), always
  killed at the end of its ``with`` block and, failing that, at the end of
  the test (conftest.py calls ``stop_leftovers``).
- ``send`` / ``exchange``: one request over raw sockets or a kept-alive
  ``http.client`` connection.  ``send`` can pick its source address (any
  of 127.0.0.0/8 reaches a server on 127.0.0.1), which is how the tests
  play several clients on one machine.
- ``metric``: one sample from a Prometheus text page; ``basic`` and
  ``write_passwords`` for the group password; ``FrozenClock`` for stores
  whose stamps the test controls.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import inspect
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import tornado.netutil

from talkserver.access.auth import hash_password, write_password_file
from talkserver.operation.collector import HTTPServer

# The one overall timeout a test waits for a condition.  Generous: the
# suite must pass on a machine whose cores other processes keep busy.
WAIT = 60.0


async def until(condition: Callable[[], object | Awaitable[object]], timeout: float = WAIT,
                message: str | Callable[[], str] | None = None):
    """Wait on the event loop until ``condition()`` is true; return its value.

    ``condition`` may be a plain function or a coroutine function (then each
    check is awaited, e.g. a request for /metrics).  After ``timeout``
    seconds the test fails with ``message`` (a string, or a function giving
    one, to report the state at that moment).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        awaited = inspect.isawaitable(value)
        if awaited:
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(text or f"not reached within {timeout:g} s: {_describe(condition)}")
        await asyncio.sleep(0.05 if awaited else 0.005)


def _describe(condition) -> str:
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


# -- clocks ------------------------------------------------------------------------


class FrozenClock:
    """A wall clock in milliseconds that moves only when the test sets ``now``.

    Every change on a store with this clock lands in the same millisecond
    unless the test moves it (forward, or back).
    """

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


# -- passwords ---------------------------------------------------------------------


def basic(name: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP Basic for ``name`` and ``password`` (UTF-8)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


def write_passwords(path: Path, users: dict[str, str]) -> str:
    """Write a password file for ``users`` (name -> password); returns its path."""
    write_password_file(path, {name: hash_password(password) for name, password in users.items()})
    return str(path)


# -- metrics -----------------------------------------------------------------------

_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` in a Prometheus text page.

    Absent, it is ``default`` when one is given, else the test fails.
    """
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found and found.group(1) == name and dict(_LABEL.findall(found.group(2) or "")) == labels:
            return float(found.group(3))
    if default is not None:
        return default
    raise AssertionError(f"{name}{labels or ''} is not in /metrics")


async def metrics_page(port: int) -> str:
    """GET /metrics (from an address of its own, so no per-address limit is touched)."""
    answer = await send(port, "GET", "/metrics", source="127.0.0.9", timeout=WAIT)
    assert answer.status == 200, f"/metrics answered {answer.status}"
    return answer.body.decode()


async def metric_of(port: int, name: str, default: float | None = None, **labels: str) -> float:
    """``metric`` read from the server on ``port`` now."""
    return metric(await metrics_page(port), name, default, **labels)


async def metric_reaches(port: int, name: str, wanted: float, timeout: float = WAIT, **labels: str) -> None:
    """Wait until the server on ``port`` reports ``name`` (absent counts as 0) equal to ``wanted``."""
    seen = []

    async def reached():
        seen[:] = [await metric_of(port, name, 0.0, **labels)]
        return seen[0] == wanted

    await until(reached, timeout, lambda: f"{name} is {seen[0] if seen else '?'}, not {wanted}")


# -- a real server in this process -----------------------------------------------


def serve_app(app, **http_options) -> tuple[HTTPServer, int]:
    """Serve ``app`` in this process as the talkserver command does (its HTTPServer), on a
    port of 127.0.0.1 the kernel picks; returns (server, port).  ``server.stop()`` ends it.

    Tests whose server is the ``app`` fixture get it from pytest-tornado
    (``http_server``, ``port``) instead.
    """
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app, **http_options)
    server.add_sockets([sock])
    return server, sock.getsockname()[1]


# -- a real server in a subprocess ------------------------------------------------

# The first line a server logs names the port it bound; with --processes,
# each worker logs one.
_BOUND = re.compile(r"talkserver (?:listening on|worker \d+ serving) http://\S+?:(\d+)/")
_running: set["ServerProcess"] = set()


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
        cwd=cwd, capture_output=True, text=True, timeout=WAIT,
    )


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
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

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


@contextmanager
def running(*command: str):
    """Run another server program on a port it picks (``PORT`` in ``command`` becomes 0); yield (url, pid).

    The program must print a URL with the port it bound (``http://HOST:PORT/``)
    on its standard output or error, as tests/load_server.py and
    ``python -u -m http.server`` do.
    """
    argv = [part.replace("PORT", "0") for part in command]
    with ServerProcess(command=argv, bound=_ANY_URL) as server:
        yield server.base, server.process.pid


_ANY_URL = re.compile(r"http://[^\s/]+:(\d+)/")


@contextmanager
def refused_port():
    """A port of 127.0.0.1 that refuses connections for as long as the block runs.

    The socket is bound but not listening: nothing else can take the port,
    and a connection to it is refused.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def load_server(mode: str = "plain"):
    """tests/load_server.py: a server as it is, or breaking the protocol (``mode``); see ``running``."""
    return running(sys.executable, str(Path(__file__).with_name("load_server.py")), "PORT", mode)


def load(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run talkserver-load with ``args``; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "talkserver.loadtest", *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )


def load_json(tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, dict]:
    """Run talkserver-load with ``args`` and ``--json``; returns (CompletedProcess, its JSON result)."""
    out = tmp_path / "out.json"
    done = load(*args, "--json", out)
    return done, json.loads(out.read_text())


# -- raw HTTP --------------------------------------------------------------------


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Hang up with a TCP reset (SO_LINGER 0), as a crashed browser or a vanished network does."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


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
    timeout: float = WAIT,
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


def split_answer(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """An HTTP answer's bytes as (status line, headers by lower-case name, the bytes after the head)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers, rest


def parse_answer(raw: bytes) -> Answer:
    """An HTTP/1.1 answer with a Content-Length (or none, for 204) from its bytes."""
    status_line, headers, rest = split_answer(raw)
    length = int(headers.get("content-length", "0"))
    return Answer(int(status_line.split()[1]), headers, rest[:length])


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
