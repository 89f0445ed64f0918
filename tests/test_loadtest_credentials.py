"""talkserver-load against a password-protected talkserver (HTTP Basic).

The password comes from a file, an environment variable or a terminal
prompt, never from the command line, and is never shown: not echoed, not in
an error, not in the summary or the JSON.
"""

import json
import os
import pty
import select
import subprocess
import sys
from contextlib import contextmanager

from .harness import running

PASSWORD = "Correct-Horse-7431"


@contextmanager
def protected_talkserver(tmp_path):
    """talkserver with --password-file holding the user ada; yields its URL."""
    users = tmp_path / "users"
    subprocess.run(
        [sys.executable, "-m", "talkserver.command.passwd", str(users), "ada"],
        input=PASSWORD + "\n", text=True, check=True, capture_output=True, timeout=60,
    )
    with running(sys.executable, "-m", "talkserver", "--port=PORT", "--db=:memory:", f"--password-file={users}") as (url, _):
        yield url


def load(*args, env=None):
    """talkserver-load with stdin not a terminal, so it never prompts."""
    environment = {k: v for k, v in os.environ.items() if k != "TALKSERVER_PASSWORD"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "talkserver.loadtest", *map(str, args)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=environment,
    )


RUN = ["--clients", 30, "--duration", 1, "--rate", 10]


def test_the_password_from_the_environment_or_a_file_follows_a_protected_server(tmp_path):
    (tmp_path / "password").write_text(PASSWORD + "\n")
    with protected_talkserver(tmp_path) as url:
        from_env = load("--url", url, "--user", "ada", *RUN, "--json", tmp_path / "env.json",
                        env={"TALKSERVER_PASSWORD": PASSWORD})
        from_file = load("--url", url, "--user", "ada", "--password-file", tmp_path / "password", *RUN,
                         "--json", tmp_path / "file.json")

    for done, name in ((from_env, "env.json"), (from_file, "file.json")):
        result = json.loads((tmp_path / name).read_text())
        assert done.returncode == 0, done.stdout + done.stderr
        assert result["deliveries"] == result["changes"] * 30 > 0
        assert result["user"] == "ada"
        assert "as user ada" in done.stdout
        assert PASSWORD not in done.stdout + done.stderr + (tmp_path / name).read_text()


def test_a_wrong_password_ends_the_run_with_the_servers_reason_and_not_the_password(tmp_path):
    with protected_talkserver(tmp_path) as url:
        done = load("--url", url, "--user", "ada", *RUN, env={"TALKSERVER_PASSWORD": "Wrong-" + PASSWORD})

    assert done.returncode == 2
    assert "GET /talks answered HTTP 401: wrong name or password (check --user and its password)" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_protected_server_without_credentials_asks_for_a_user(tmp_path):
    with protected_talkserver(tmp_path) as url:
        done = load("--url", url, *RUN)

    assert done.returncode == 2
    assert "answered HTTP 401" in done.stderr and "(give --user NAME)" in done.stderr


def test_a_password_in_the_url_is_refused_and_not_shown():
    done = load("--url", f"http://ada:{PASSWORD}@127.0.0.1:8000", *RUN)

    assert done.returncode == 2
    assert "--url http://ada:***@127.0.0.1:8000: do not put the password in the URL" in done.stderr
    assert PASSWORD not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_user_without_a_password_and_no_terminal_is_told_where_to_put_it():
    done = load("--user", "ada", *RUN)

    assert done.returncode == 2
    assert "--user ada needs a password: give --password-file FILE, set TALKSERVER_PASSWORD" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_password_file_that_cannot_be_read_or_is_empty_exits_2(tmp_path):
    (tmp_path / "empty").write_text("\n")

    missing = load("--user", "ada", "--password-file", tmp_path / "missing", *RUN)
    empty = load("--user", "ada", "--password-file", tmp_path / "empty", *RUN)
    alone = load("--password-file", tmp_path / "empty", *RUN)

    assert missing.returncode == empty.returncode == alone.returncode == 2
    assert "missing: cannot read it (No such file or directory)" in missing.stderr
    assert "its first line is empty" in empty.stderr
    assert "--password-file needs --user NAME" in alone.stderr


def test_the_password_asked_on_a_terminal_is_not_echoed(tmp_path):
    with protected_talkserver(tmp_path) as url:
        # A terminal of its own, as a person at a shell gives it.
        pid, terminal = pty.fork()
        if pid == 0:
            os.environ.pop("TALKSERVER_PASSWORD", None)
            os.execv(sys.executable, [sys.executable, "-m", "talkserver.loadtest", "--url", url, "--user", "ada",
                                      *map(str, RUN)])
        output = b""
        answered = False
        while True:
            ready, _, _ = select.select([terminal], [], [], 60)
            try:
                chunk = os.read(terminal, 4096) if ready else b""
            except OSError:  # the terminal closes when the process ends
                chunk = b""
            if not chunk:
                break
            output += chunk
            if not answered and b"password for ada: " in output:
                os.write(terminal, PASSWORD.encode() + b"\n")
                answered = True
        os.close(terminal)
        _, status = os.waitpid(pid, 0)

    text = output.decode()
    assert answered
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "talkserver-load: clean" in text
    assert PASSWORD not in text
