"""The in-repo Node.js peer (benchmarks/peers/node/server.js) answers the
protocol the benchmarks compare talkserver on, and talkserver-load runs clean
against it.  ``make test`` installs Debian's nodejs when it is missing, and
the peer's one npm package (ws, for its WebSocket endpoint) with ``npm ci``."""

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from .harness import load_json, split_answer

PEER = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "node" / "server.js"


@contextmanager
def node_peer(poll_timeout_ms=1000, heartbeat_ms=15000):
    """The peer on a free port; yields its URL."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: `make test` installs Debian's nodejs package (as root)")
    if not (PEER.parent / "node_modules" / "ws").is_dir():
        pytest.fail("the Node peer's ws package is missing: `make test` installs it (npm ci in benchmarks/peers/node)")
    env = dict(os.environ, POLL_TIMEOUT_MS=str(poll_timeout_ms), HEARTBEAT_MS=str(heartbeat_ms))
    # Port 0: the peer binds a free port and names it in its first line.
    process = subprocess.Popen([node, str(PEER), "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        started = re.match(r"node peer on (http://127\.0\.0\.1:\d+)/", first)
        assert started, f"the peer did not start: {first!r} {process.stderr.read() if process.poll() is not None else ''}"
        yield started.group(1)
    finally:
        process.terminate()
        process.wait(timeout=10)


def call(url, method="GET", body=None):
    """(status, parsed JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


TALK = {"presenter": "Ada", "summary": "Engines"}


def test_the_peer_answers_reads_writes_and_errors_as_the_protocol_says():
    with node_peer() as url:
        status, empty = call(url + "/talks")
        assert status == 200 and empty["talks"] == [] and isinstance(empty["serverTime"], int)

        assert call(url + "/talks/Two%20words", "PUT", TALK) == (204, None)
        assert call(url + "/talks/Two%20words/comments", "POST", {"author": "Bob", "message": "Nice"}) == (204, None)
        talk = {"title": "Two words", **TALK, "comments": [{"author": "Bob", "message": "Nice"}]}
        assert call(url + "/talks/Two%20words") == (200, talk)
        status, board = call(url + "/talks")
        assert board["talks"] == [talk] and board["serverTime"] > empty["serverTime"]

        assert call(url + "/talks/Two%20words", "DELETE") == (204, None)
        status, since = call(f"{url}/talks?changesSince={board['serverTime']}")
        assert since["talks"] == [{"title": "Two words", "deleted": True}]
        status, future = call(f"{url}/talks?changesSince={since['serverTime'] + 10**6}")
        assert future == {"serverTime": since["serverTime"], "talks": [], "reset": True}

        for request, code in [
            (("/talks?changesSince=yesterday",), 400),
            (("/talks/T", "PUT", {"presenter": "Ada"}), 400),
            (("/talks/Gone/comments", "POST", {"author": "Bob", "message": "?"}), 404),
            (("/talks/Gone",), 404),
            (("/nowhere",), 404),
        ]:
            status, answer = call(url + request[0], *request[1:])
            assert status == code and answer["error"]


def test_a_long_poll_waits_for_the_next_change_or_answers_empty_at_its_timeout():
    with node_peer(poll_timeout_ms=1000) as url:
        _, board = call(url + "/talks")
        cursor = board["serverTime"]
        answers = []
        waiting = threading.Thread(target=lambda: answers.append(call(f"{url}/talks?changesSince={cursor}")))
        waiting.start()
        time.sleep(0.2)  # (not a timing assert: the poll is answered by the change either way)
        call(url + "/talks/Woken", "PUT", TALK)
        waiting.join(timeout=30)

        status, woken = answers[0]
        assert status == 200 and [t["title"] for t in woken["talks"]] == ["Woken"]
        status, quiet = call(f"{url}/talks?changesSince={woken['serverTime']}")
        assert (status, quiet) == (200, {"serverTime": woken["serverTime"], "talks": []})


def test_an_event_stream_starts_with_the_board_and_sends_each_change():
    with node_peer(heartbeat_ms=200) as url:
        call(url + "/talks/First", "PUT", TALK)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"GET /talks HTTP/1.1\r\nHost: peer\r\nAccept: text/event-stream\r\n\r\n")
            received = b""

            def read_until(marker: bytes) -> None:
                nonlocal received
                while marker not in received:
                    chunk = sock.recv(65536)
                    assert chunk, "the stream ended"
                    received += chunk

            read_until(b'"title":"First"')
            call(url + "/talks/Second", "PUT", TALK)
            read_until(b'"title":"Second"')
            read_until(b": heartbeat")

    status_line, headers, body = split_answer(received)
    assert " 200 " in status_line and "text/event-stream" in headers["content-type"]
    events = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert [t["title"] for t in events[0]["talks"]] == ["First"]
    assert [t["title"] for t in events[1]["talks"]] == ["Second"]
    assert events[1]["serverTime"] > events[0]["serverTime"]


def test_the_peer_without_its_ws_package_says_how_to_install_it_in_one_line(tmp_path):
    alone = tmp_path / "server.js"  # no node_modules beside it or above it
    alone.write_text(PEER.read_text())
    env = {k: v for k, v in os.environ.items() if k != "NODE_PATH"}
    done = subprocess.run([shutil.which("node"), str(alone), "0"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "node peer: the ws package is missing: make benchmarks/peers/node/node_modules/.installed (npm ci there)"
    ]


def put(url, title):
    """PUT a talk from a thread: the WebSocket tests' event loop keeps reading meanwhile."""
    return asyncio.get_running_loop().run_in_executor(None, call, f"{url}/talks/{title}", "PUT", TALK)


async def next_message(socket_):
    """The next text frame, parsed."""
    message = await asyncio.wait_for(socket_.read_message(), 30)
    assert isinstance(message, str), f"not a text frame: {message!r}"
    return json.loads(message)


@pytest.mark.gen_test(timeout=60)
async def test_a_websocket_gets_the_board_at_once_then_one_frame_per_change():
    with node_peer() as url:
        await put(url, "First")
        socket_ = await websocket_connect(url.replace("http://", "ws://") + "/talks")
        try:
            board = await next_message(socket_)
            assert [t["title"] for t in board["talks"]] == ["First"] and "reset" not in board

            await put(url, "Second")
            change = await next_message(socket_)
            assert [t["title"] for t in change["talks"]] == ["Second"]
            assert change["serverTime"] > board["serverTime"]
            # Exactly what a poll from the board's cursor answers.
            assert call(f"{url}/talks?changesSince={board['serverTime']}") == (200, change)
        finally:
            socket_.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_websocket_resumes_after_changes_since_and_says_at_once_when_there_are_none():
    with node_peer() as url:
        await put(url, "Seen")
        _, seen = call(url + "/talks")
        await put(url, "Missed")
        ws_url = url.replace("http://", "ws://") + "/talks?changesSince="

        behind = await websocket_connect(ws_url + str(seen["serverTime"]))
        caught_up = await next_message(behind)
        behind.close()
        assert [t["title"] for t in caught_up["talks"]] == ["Missed"]

        live = await websocket_connect(ws_url + str(caught_up["serverTime"]))
        try:
            assert await next_message(live) == {"serverTime": caught_up["serverTime"], "talks": []}
            await put(url, "Next")
            assert [t["title"] for t in (await next_message(live))["talks"]] == ["Next"]
        finally:
            live.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_websocket_handshake_elsewhere_or_with_a_bad_cursor_is_refused():
    with node_peer() as url:
        ws_url = url.replace("http://", "ws://")
        for path, status in (("/talks?changesSince=yesterday", 400), ("/nowhere", 404)):
            with pytest.raises(HTTPClientError) as refused:
                await websocket_connect(ws_url + path)
            assert refused.value.code == status


@pytest.mark.parametrize(
    "transport, pace",
    [("poll", ["--writers", "2"]), ("sse", ["--interval", "0.1"]), ("websocket", ["--writers", "2"])],
)
def test_talkserver_load_runs_clean_against_the_peer(tmp_path, transport, pace):
    with node_peer(poll_timeout_ms=5000) as url:
        done, result = load_json(
            tmp_path, "--url", url, "--transport", transport, "--clients", 50, "--duration", 2, *pace,
        )

    assert done.returncode == 0, done.stdout + done.stderr
    assert result["changes"] > 0 and result["deliveries"] == result["changes"] * 50
    assert (result["lost"], result["duplicates"], result["errors"]) == (0, 0, 0)
