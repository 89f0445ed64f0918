"""The talkserver command as an operator runs it: a real process on a real port."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A talkserver subprocess; its stderr is kept for the log assertions."""

    def __init__(self, *args, cwd=None):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "talkserver", f"--port={self.port}", *args],
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start: " + self.proc.stderr.read())
                time.sleep(0.05)

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.status, response.read()

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=10)
        return code, self.proc.stderr.read()


@pytest.fixture
def server_factory():
    servers = []

    def start(*args, **kwargs):
        server = Server(*args, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_python_m_talkserver_serves_the_page_and_the_api(server_factory):
    server = server_factory()
    status, page = server.get("/")
    assert status == 200 and b"<html" in page.lower()
    status, body = server.get("/talks")
    assert status == 200 and json.loads(body)["talks"] == []


def test_sigterm_stops_cleanly_and_each_request_has_an_access_log_line(server_factory):
    server = server_factory()
    server.get("/talks")
    with pytest.raises(urllib.error.HTTPError):
        server.get("/talks/ghost")
    code, log = server.stop(signal.SIGTERM)
    assert code == 0
    assert "200 GET /talks (127.0.0.1)" in log
    assert "404 GET /talks/ghost (127.0.0.1)" in log
    assert "Traceback" not in log


def test_ctrl_c_stops_cleanly(server_factory):
    server = server_factory()
    code, log = server.stop(signal.SIGINT)
    assert code == 0
    assert "Traceback" not in log


def test_options_come_from_a_config_file(server_factory, tmp_path):
    static = tmp_path / "site"
    static.mkdir()
    (static / "index.html").write_text("<html>from the config file</html>")
    config = tmp_path / "talkserver.conf"
    config.write_text(f"static_path = {str(static)!r}\npoll_timeout = 0.2\n")
    server = server_factory(f"--config={config}")
    assert server.get("/")[1] == b"<html>from the config file</html>"
    started = time.monotonic()
    head = json.loads(server.get("/talks")[1])["serverTime"]
    answer = json.loads(server.get(f"/talks?changesSince={head}")[1])
    assert answer == {"serverTime": head, "talks": []}
    assert time.monotonic() - started < 5


def test_the_open_files_limit_is_raised_to_the_hard_limit(server_factory):
    server = server_factory()
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
    line = next(l for l in limits.splitlines() if l.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard


def test_help_lists_the_options():
    out = subprocess.run(
        [sys.executable, "-m", "talkserver", "--help"], capture_output=True, text=True, timeout=30
    )
    text = out.stdout + out.stderr
    for option in ["--port", "--address", "--db", "--poll-timeout", "--static-path", "--max-body-size", "--config", "--logging"]:
        assert option in text


def test_an_unknown_option_is_refused_with_a_message():
    out = subprocess.run(
        [sys.executable, "-m", "talkserver", "--no-such-option=1"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode != 0
    assert "no-such-option" in out.stderr.replace("_", "-")


def test_a_plain_install_ships_the_page(tmp_path):
    """A non-editable ``pip install .`` must carry www/ inside the package."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(ROOT)],
        check=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    shipped = target / "talkserver" / "www" / "index.html"
    assert shipped.read_bytes() == (ROOT / "www" / "index.html").read_bytes()
    out = subprocess.run(
        [sys.executable, "-c", "from talkserver.app import default_static_path as d; print(d())"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
        timeout=30,
    )
    assert Path(out.stdout.strip()) == shipped.parent
