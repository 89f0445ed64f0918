"""An operator's mistakes on the command line or in a config file: one line, exit 2.

Each test runs the real ``talkserver`` command (the console script in this
Python's bin directory) and checks that it refused to start with exactly
one line on stderr, ``talkserver: ...``, that names the mistake, and never
a traceback.
"""

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .harness import ServerProcess, refused_port

TALKSERVER = str(Path(sys.executable).with_name("talkserver"))


def talkserver(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the command to its end (a command that starts would be stopped by the timeout)."""
    return subprocess.run([TALKSERVER, *args], cwd=cwd, capture_output=True, text=True, timeout=30)


def assert_refused(done: subprocess.CompletedProcess, *expected: str) -> str:
    """The command exited 2 with one line naming the mistake; returns that line."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("talkserver: ")
    for text in expected:
        assert text in lines[0]
    return lines[0]


COMMAND_LINE_MISTAKES = {
    "unknown option": (["--prot=1"], ["--prot: no such option", "did you mean --port?"]),
    "misspelled access option": (["--pasword-file=x"], ["--pasword-file: no such option", "did you mean --password-file?"]),
    "port not a number": (["--port=abc"], ["--port=abc: must be a whole number"]),
    "port too high": (["--port=99999"], ["--port=99999: not a TCP port", "1 to 65535"]),
    "port negative": (["--port=-1"], ["--port=-1: not a TCP port"]),
    "port without a value": (["--port"], ["--port: needs a value"]),
    "stray word": (["--port=0", "8000"], ["'8000' is not an option"]),
    "double dash": (["--"], ["'--' is not an option"]),
    "mysql url": (["--db=mysql://ann:secret@db.example/talks"], ["--db=mysql://ann:***@db.example/talks", "mysql:// is not a store"]),
    "sqlalchemy style url": (["--db=postgres+asyncpg://db.example/talks"], ["postgres+asyncpg:// is not a store", "postgresql://"]),
    "unknown api": (["--api=rest"], ["--api=rest: use one of changes, etag"]),
    "retention zero": (["--retention=0"], ["--retention=0: must be a positive number of days"]),
    "unknown gc": (["--gc=sometimes"], ["--gc=sometimes: use one of tuned, python"]),
    "negative processes": (["--processes=-1"], ["--processes=-1: must be 0 or more"]),
    "negative max talks": (["--max-talks=-1"], ["--max-talks=-1: must be 0 or more"]),
    "max board bytes not whole": (["--max-board-bytes=1e9"], ["--max-board-bytes=1e9: must be a whole number"]),
    "processes without postgresql": (["--processes=2"], ["--processes=2 needs a store the processes can share"]),
    "unknown sync": (["--sync=always"], ["--sync=always: use one of normal, full"]),
    "boolean not a boolean": (["--xheaders=nope"], ["--xheaders=nope: use true or false"]),
    "empty password file": (["--password-file="], ["--password-file=: must not be empty"]),
    "negative poll timeout": (["--poll-timeout=-5"], ["--poll-timeout=-5: use 0.1 to 86400 seconds"]),
    "empty allowed hosts": (["--allowed-hosts=,"], ["--allowed-hosts=,: name at least one host"]),
    "missing static path": (["--static-path=no/such/dir"], ["--static-path=no/such/dir: no such directory"]),
    "unknown log level": (["--logging=loud"], ["--logging=loud: use one of debug, info"]),
    "missing config file": (["--config=nowhere.conf"], ["--config=nowhere.conf: cannot read it (No such file or directory)"]),
    "missing password file": (["--password-file=nowhere.passwords"], ["cannot read the password file nowhere.passwords"]),
    "protect talks on postgresql without a secret": (
        ["--db=postgresql://talks@127.0.0.1:1/talks", "--protect-talks"], ["--protect-talks with PostgreSQL needs --cookie-secret"]),
    "unresolvable address": (["--address=no-such-host.invalid", "--port=0"], ["--address=no-such-host.invalid: not an address"]),
    "address of another machine": (["--address=192.0.2.1", "--port=0"], ["--address=192.0.2.1: not an address of this machine"]),
}


@pytest.mark.parametrize("case", COMMAND_LINE_MISTAKES)
def test_a_command_line_mistake_is_refused_in_one_line(tmp_path, case):
    args, expected = COMMAND_LINE_MISTAKES[case]

    done = talkserver("--db=:memory:", *args, cwd=tmp_path)

    assert_refused(done, *expected)
    assert list(tmp_path.iterdir()) == []  # nothing was created


CONFIG_MISTAKES = {
    "misspelled password_file": ('port = 8000\npasword_file = "/etc/talkserver.access.passwords"\n',
                                 ["line 2: pasword_file: no such option", "did you mean password_file?"]),
    "misspelled protect_talks": ("protect_talk = True\n", ["line 1: protect_talk: no such option", "did you mean protect_talks?"]),
    "syntax error": ("port = 8000\nport 9000\n", ["line 2: not valid Python"]),
    "lower-case true": ("protect_talks = true\n", ["line 1: NameError", "'true'", "True, False"]),
    "text for a number": ('port = "abc"\n', ["line 1: port = 'abc': must be a whole number"]),
    "fraction for a whole number": ("port = 8.5\n", ["line 1: port = 8.5: must be a whole number"]),
    "boolean for a number": ("port = True\n", ["line 1: port = True: must be a whole number"]),
    "number for a boolean": ("xheaders = 1\n", ["line 1: xheaders = 1: use true or false"]),
    "list for text": ('allowed_hosts = ["a.example", "b.example"]\n', ["allowed_hosts = ['a.example', 'b.example']: must be text"]),
    "port out of range": ("port = 99999\n", ["line 1: port = 99999: not a TCP port"]),
    "unknown scheme": ('db = "mysql://ann:secret@db.example/talks"\n', ["db = 'mysql://ann:***@db.example/talks'", "mysql:// is not a store"]),
    "unknown api": ('api = "rest"\n', ["api = 'rest': use one of changes, etag"]),
    "nested config": ('config = "other.conf"\n', ["config can only be given on the command line"]),
}


@pytest.mark.parametrize("case", CONFIG_MISTAKES)
def test_a_config_file_mistake_is_refused_in_one_line_naming_the_file(tmp_path, case):
    text, expected = CONFIG_MISTAKES[case]
    (tmp_path / "talkserver.conf").write_text(text)

    done = talkserver("--db=:memory:", "--config=talkserver.conf", cwd=tmp_path)

    line = assert_refused(done, "talkserver.conf", *expected)
    assert "secret" not in line


def test_a_config_file_with_imports_and_helpers_is_read(tmp_path):
    # Only misspelled options are refused, not the file's own Python.
    (tmp_path / "talkserver.conf").write_text(
        "import os\n_folder = os.getcwd()\ndef days(n):\n    return n\nretention = days(3)\nport = -1\n"
    )

    done = talkserver("--config=talkserver.conf", cwd=tmp_path)

    assert_refused(done, "line 6: port = -1: not a TCP port")


def test_a_port_in_use_is_refused_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        done = talkserver("--db=:memory:", f"--port={port}", cwd=tmp_path)

    assert_refused(done, f"--port={port}: already in use on 127.0.0.1")


def test_the_command_line_overrides_a_config_file_given_after_it(tmp_path):
    # The file names another port; the harness's --port comes first on the
    # command line and still wins, since config files are read first.
    with refused_port() as taken:  # were the file's port used, the start would fail: it is taken
        (tmp_path / "talkserver.conf").write_text(f"port = {taken}\npoll_timeout = 0.2\ndb = ':memory:'\n")
        server = ServerProcess("--config=talkserver.conf", cwd=tmp_path)
    try:
        with urllib.request.urlopen(f"{server.base}/talks?changesSince=1", timeout=10) as answer:
            assert answer.status == 200  # answered after the file's 0.2 s, not the default 90 s
        assert list(tmp_path.iterdir()) == [tmp_path / "talkserver.conf"]  # the file's :memory: store
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("logging", ["info", "warning", "error"])
def test_port_0_binds_a_free_port_and_the_first_log_line_names_it(tmp_path, logging):
    process = subprocess.Popen([TALKSERVER, "--port=0", "--db=:memory:", f"--logging={logging}"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = first_line(process.stderr, timeout=30)
        assert "talkserver listening on http://127.0.0.1:" in line
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
        assert port != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/talks", timeout=10) as answer:
            assert answer.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def first_line(stream, timeout: float) -> str:
    """The first line written to ``stream``, waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise AssertionError("the server wrote no line in time")
    return stream.readline()


def test_python_m_talkserver_refuses_the_same_way(tmp_path):
    done = subprocess.run([sys.executable, "-m", "talkserver", "--prot=1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, env={**os.environ})

    assert_refused(done, "--prot: no such option (did you mean --port?)")


# Inputs that once got past the checks: a traceback, or a server that started
# and did something else than asked.  Each case: the command line, the files
# to put in its working directory first (text, or None for a directory), and
# what the one line must say.
LONG_SUM = "port = " + "+".join(["1"] * 200_000) + "\n"
SLIPPED_THROUGH = {
    "infinite retention": (["--retention=inf"], {}, ["--retention=inf: must be a finite number"]),
    "retention past any date": (["--retention=1e300"], {}, ["--retention=1e300: must be a positive number of days, at most 36500"]),
    "config number too large for a float": (["--config=c.conf"], {"c.conf": "retention = 10**400\n"},
                                            ["c.conf, line 1: retention = a 401-digit number: must be a finite number"]),
    "config port too large to print": (["--config=c.conf"], {"c.conf": "port = 10**5000\n"},
                                       ["c.conf, line 1: port = a 5001-digit number: too large"]),
    "config expression too long to compile": (["--config=c.conf"], {"c.conf": LONG_SUM},
                                              ["c.conf: an expression too long or too deeply nested"]),
    "bracket in a url password": (["--db=postgresql://u:pa[ss@h/db"], {},
                                  ["--db=postgresql://u:***@h/db: the user name or password holds [ or ]", "%5B"]),
    "unclosed ipv6 bracket": (["--db=postgresql://[::1/db"], {}, ["--db=postgresql://[::1/db: an IPv6 address needs its closing bracket"]),
    "url port out of range": (["--db=postgresql://h:99999/x"], {}, ["--db=postgresql://h:99999/x: port 99999 is not a TCP port"]),
    "cookie secret that cannot be written": (["--db=/proc/talks.db", "--protect-talks"], {},
                                             ["--protect-talks: cannot write a new cookie secret file /proc/talks.db.cookie-secret",
                                              "--cookie-secret"]),
    "empty cookie secret": (["--db=talks.db", "--protect-talks"], {"talks.db.cookie-secret": ""},
                            ["--protect-talks: the cookie secret file talks.db.cookie-secret is empty"]),
    "unreadable cookie secret": (["--db=talks.db", "--protect-talks"], {"talks.db.cookie-secret": None},
                                 ["--protect-talks: cannot read the cookie secret file talks.db.cookie-secret (Is a directory)"]),
    "idle timeout that would spin": (["--idle-timeout=1e-9"], {}, ["--idle-timeout=1e-9: use 0.5 to 86400 seconds"]),
    "heartbeat that would spin": (["--heartbeat=1e-9"], {}, ["--heartbeat=1e-9: use 0.5 to 86400 seconds (0: none)"]),
    "poll timeout past the event loop's clock": (["--poll-timeout=1e400"], {}, ["--poll-timeout=1e400: must be a finite number"]),
}


@pytest.mark.parametrize("case", SLIPPED_THROUGH)
def test_an_input_that_once_slipped_through_is_refused_in_one_line(tmp_path, case):
    args, files, expected = SLIPPED_THROUGH[case]
    for name, text in files.items():
        if text is None:
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text(text)
    before = sorted(tmp_path.iterdir())

    done = talkserver("--db=:memory:", *args, cwd=tmp_path)

    line = assert_refused(done, *expected)
    assert "pa[ss" not in line
    assert sorted(tmp_path.iterdir()) == before  # no store, no new secret


def test_an_inherited_prometheus_directory_is_ignored_and_left_empty(tmp_path, monkeypatch):
    # Missing, it crashed the first metric; present, it filled with files nobody removed.
    present = tmp_path / "metrics"
    present.mkdir()
    for directory in (tmp_path / "nowhere", present):
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
        with ServerProcess("--db=:memory:") as server:
            with urllib.request.urlopen(f"{server.base}/metrics", timeout=10) as answer:
                assert answer.status == 200 and b"talkserver_changes_total" in answer.read()
            assert server.stop() == 0
            assert f"ignoring PROMETHEUS_MULTIPROC_DIR={directory}" in server.log()
    assert list(present.iterdir()) == []
    assert not (tmp_path / "nowhere").exists()
