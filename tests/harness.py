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
  play several clients on one machine.  ``split_answer`` is the one way
  the tests take an answer's head apart; ``parse_answer`` and
  ``read_answer`` (the next answer on a kept-alive connection) use it.

  These, and ``WAIT``, come from talkserver.testing, which the benchmarks
  use too; tests import them from here like the rest.
- ``metric``: one sample from a Prometheus text page; ``basic`` and
  ``write_passwords`` for the group password; ``FrozenClock`` for stores
  whose stamps the test controls.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import re
import socket
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Awaitable, Callable

import tornado.netutil

from talkserver.access.auth import hash_password, write_password_file
from talkserver.operation.collector import HTTPServer
from talkserver.testing import WAIT
from talkserver.testing.rawhttp import Answer, Headers, exchange, parse_answer, read_answer, send, split_answer
from talkserver.testing.servers import ServerProcess, running_servers, stop_leftovers

__all__ = [
    "PASSWORD", "POLL_TIMEOUT", "WAIT", "Answer", "FrozenClock", "Headers", "ServerProcess", "basic",
    "exchange", "load", "load_json", "load_server", "metric", "metric_of", "metric_reaches", "metrics_page",
    "parse_answer", "read_answer", "refused_port", "reset_connection", "rss_bytes", "run_talkserver",
    "running", "running_servers", "send", "serve_app", "split_answer", "stop_leftovers", "until",
    "write_passwords",
]

# The poll timeout of the ``app`` fixture's server (conftest.py): short, so
# the timeout path is tested without waiting 90 seconds.
POLL_TIMEOUT = 1.0
# The group password of the ``password_file`` fixture (not ASCII, to check the decoding too).
PASSWORD = "s3cret ünïcode"


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


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
