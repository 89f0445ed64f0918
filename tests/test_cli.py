"""The talkserver command as an operator runs it: a real process on a real port."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from .harness import WAIT, ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def get(server, path):
    """(status, body) of a GET to a server process; HTTPError for 4xx/5xx."""
    with urllib.request.urlopen(server.base + path, timeout=WAIT) as response:
        return response.status, response.read()


def stop(server, sig):
    """Send ``sig`` and return (exit code, everything the server printed)."""
    server.process.send_signal(sig)
    return server.process.wait(timeout=WAIT), server.log()


@pytest.fixture
def server_factory():
    """Start server processes; each is killed at the end of the test if still running."""
    with ExitStack() as stack:
        yield lambda *args: stack.enter_context(ServerProcess(*args))


def test_python_m_talkserver_serves_the_page_and_the_api(server_factory):
    server = server_factory()
    status, page = get(server, "/")
    assert status == 200 and b"<html" in page.lower()
    status, body = get(server, "/talks")
    assert status == 200 and json.loads(body)["talks"] == []


def test_sigterm_stops_cleanly_and_each_request_has_an_access_log_line(server_factory):
    server = server_factory()
    get(server, "/talks")
    with pytest.raises(urllib.error.HTTPError):
        get(server, "/talks/ghost")
    code, log = stop(server, signal.SIGTERM)
    assert code == 0
    assert "200 GET /talks (127.0.0.1)" in log
    assert "404 GET /talks/ghost (127.0.0.1)" in log
    assert "Traceback" not in log


def test_ctrl_c_stops_cleanly(server_factory):
    server = server_factory()
    code, log = stop(server, signal.SIGINT)
    assert code == 0
    assert "Traceback" not in log


def test_options_come_from_a_config_file(server_factory, tmp_path):
    static = tmp_path / "site"
    static.mkdir()
    (static / "index.html").write_text("<html>from the config file</html>")
    config = tmp_path / "talkserver.conf"
    config.write_text(f"static_path = {str(static)!r}\npoll_timeout = 0.2\n")
    server = server_factory(f"--config={config}")
    assert get(server, "/")[1] == b"<html>from the config file</html>"
    started = time.monotonic()
    head = json.loads(get(server, "/talks")[1])["serverTime"]
    answer = json.loads(get(server, f"/talks?changesSince={head}")[1])
    assert answer == {"serverTime": head, "talks": []}
    assert time.monotonic() - started < 5


def test_the_open_files_limit_is_raised_to_the_hard_limit(server_factory):
    server = server_factory()
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
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


def test_a_plain_install_ships_the_page_and_the_postgresql_migrations(tmp_path):
    """A non-editable ``pip install .`` must carry www/ and the SQL files inside the package."""
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
        [sys.executable, "-c", "from talkserver.web.app import default_static_path as d; print(d())"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
        timeout=30,
    )
    assert Path(out.stdout.strip()) == shipped.parent

    # The PostgreSQL schema's versioned SQL files, found where the package is installed.
    sql = sorted((ROOT / "talkserver" / "stores" / "postgres" / "sql").glob("v*.sql"),
                 key=lambda path: int(path.name[1:].split("_")[0]))
    out = subprocess.run(
        [sys.executable, "-c", "from talkserver.stores.postgres import schema as s; import json;"
         " print(json.dumps([s.__file__, s.MIGRATIONS]))"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
        timeout=30,
    )
    where, migrations = json.loads(out.stdout)
    assert Path(where).is_relative_to(target)
    assert len(sql) >= 3 and migrations == [path.read_text(encoding="utf-8") for path in sql]


def test_an_unknown_collector_policy_is_refused_with_a_message():
    out = subprocess.run(
        [sys.executable, "-m", "talkserver", "--gc=sometimes"], capture_output=True, text=True, timeout=30
    )

    assert out.returncode != 0
    assert "--gc=sometimes: use one of tuned, python" in out.stderr


def test_the_server_reports_its_garbage_collections_in_the_metrics(server_factory):
    server = server_factory()

    status, body = get(server, "/metrics")

    assert status == 200
    # The tuned collector's one full collection, just before it freezes start-up objects.
    assert b'talkserver_gc_collections_total{generation="2"} 1' in body
    assert b'talkserver_gc_seconds_total{generation="2"}' in body
