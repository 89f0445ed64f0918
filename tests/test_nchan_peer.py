"""nchan, the C reference peer (benchmarks/peers/nchan), runs as its README
says with a real nginx: started by run.sh in a directory of its own, as an
ordinary user, a long poll on ``GET /talks`` gets what ``POST /publish``
published, resumes from its answer's headers, and event streams and
WebSockets on the same location get the same messages.  ``make test``
installs Debian's nginx and libnginx-mod-nchan when they are missing."""

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from tornado.websocket import websocket_connect

from .harness import split_answer

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "nchan" / "run.sh"
WAIT = 30.0


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on now (nginx cannot name one it picked)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_nobody() -> list[str]:
    """The command prefix that drops root to nobody (nothing when not root)."""
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"] if os.geteuid() == 0 else []


@contextmanager
def nchan_peer():
    """``sh run.sh DIR PORT`` as an ordinary user; yields (URL, DIR, process)."""
    if not (Path("/usr/lib/nginx/modules/ngx_nchan_module.so").exists() and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())):
        pytest.fail("nginx or nchan is missing: `make test` installs Debian's nginx and libnginx-mod-nchan (as root)")
    directory = Path(tempfile.mkdtemp(prefix="nchan-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    process = subprocess.Popen(
        [*_as_nobody(), "sh", str(RUN), str(directory), str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, f"nchan did not start: {process.stderr.read()}"
                assert time.monotonic() < deadline, "nchan did not start listening"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", directory, process
    finally:
        process.terminate()
        process.wait(timeout=WAIT)
        shutil.rmtree(directory, ignore_errors=True)


def publish(url: str, change: dict) -> int:
    """POST one change to the publisher; its HTTP status."""
    request = urllib.request.Request(
        url + "/publish", data=json.dumps(change).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=WAIT) as answer:
        return answer.status


def subscribers(url: str) -> int:
    """How many followers the channel has now, from the publisher's channel info."""
    try:
        with urllib.request.urlopen(url + "/publish", timeout=WAIT) as answer:
            info = answer.read().decode()
    except urllib.error.HTTPError as error:
        if error.code == 404:  # no follower and no message yet: no channel
            return 0
        raise
    return int(info.split("active subscribers:")[1].split()[0])


def wait_for_subscribers(url: str, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while subscribers(url) < count:
        assert time.monotonic() < deadline, f"never {count} subscribers"
        time.sleep(0.05)


def long_poll(url: str, headers: dict[str, str], into: list) -> threading.Thread:
    """Start ``GET /talks`` in a thread; its (status, headers, body) lands in ``into``."""

    def run():
        request = urllib.request.Request(url + "/talks", headers=headers)
        with urllib.request.urlopen(request, timeout=WAIT) as answer:
            into.append((answer.status, answer.headers, answer.read()))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


CHANGE = {"serverTime": 1, "talks": [{"title": "Ada", "presenter": "Ada", "summary": "Engines", "comments": []}]}


def test_run_sh_keeps_its_pid_file_and_log_in_its_directory_and_needs_no_root():
    with nchan_peer() as (url, directory, process):
        # nginx listens before it writes its pid file: the port can answer first.
        deadline = time.monotonic() + WAIT
        while not (directory / "nginx.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int((directory / "nginx.pid").read_text())
        with open(f"/proc/{pid}/status") as status:
            uid = next(line.split()[1] for line in status if line.startswith("Uid:"))
        # run.sh ends in exec: the master is the process started, as nobody when the tests run as root.
        assert pid == process.pid
        assert int(uid) == (pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid())
        assert (directory / "error.log").exists() and (directory / "nginx.conf").exists()
        assert f"listen 127.0.0.1:{url.rsplit(':', 1)[1]};" in (directory / "nginx.conf").read_text()


def test_a_waiting_long_poll_gets_the_published_change_then_resumes_after_it():
    with nchan_peer() as (url, _, _process):
        first = []
        waiting = long_poll(url, {}, first)
        wait_for_subscribers(url, 1)
        assert publish(url, CHANGE) == 201  # nchan: delivered to a follower (202: queued, none waiting)
        waiting.join(WAIT)
        status, headers, body = first[0]
        assert status == 200 and json.loads(body) == CHANGE
        assert headers["Content-Type"] == "application/json"

        # The next poll names the message it has; it waits for the next change.
        second = []
        resumed = {"If-Modified-Since": headers["Last-Modified"], "If-None-Match": headers["Etag"]}
        waiting = long_poll(url, resumed, second)
        wait_for_subscribers(url, 1)
        publish(url, {**CHANGE, "serverTime": 2})
        waiting.join(WAIT)
        assert json.loads(second[0][2])["serverTime"] == 2


def test_an_event_stream_on_the_same_location_gets_each_change():
    with nchan_peer() as (url, _, _process):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"GET /talks HTTP/1.1\r\nHost: peer\r\nAccept: text/event-stream\r\n\r\n")
            wait_for_subscribers(url, 1)
            publish(url, CHANGE)
            received = b""
            while b'"serverTime": 1' not in received:
                chunk = sock.recv(65536)
                assert chunk, "the stream ended"
                received += chunk
        status_line, headers, body = split_answer(received)
        assert " 200 " in status_line and "text/event-stream" in headers["content-type"]
        data = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
        assert json.loads(data[0][6:]) == CHANGE


@pytest.mark.gen_test(timeout=60)
async def test_a_websocket_on_the_same_location_gets_each_change_as_a_text_frame():
    with nchan_peer() as (url, _, _process):
        socket_ = await websocket_connect(url.replace("http://", "ws://") + "/talks")
        try:
            wait_for_subscribers(url, 1)
            publish(url, CHANGE)
            message = await socket_.read_message()
            assert isinstance(message, str) and json.loads(message) == CHANGE
        finally:
            socket_.close()


def test_run_sh_refuses_a_port_that_is_not_a_number_in_one_line():
    done = subprocess.run(["sh", str(RUN), tempfile.gettempdir(), "eighty"], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["run.sh: the port must be a number, not 'eighty'"]
