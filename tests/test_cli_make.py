"""``make run-postgres DB=...``: the server on PostgreSQL in one command.

The real target runs against the session's throwaway PostgreSQL, with this
Python's own bin directory; installing the postgres extra (``pip``) is
left out with ``make -o``: the tests already have it.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).parent)
MAKE = shutil.which("make") or "make"


def test_run_postgres_without_db_is_refused_in_one_line_before_installing_anything():
    done = subprocess.run([MAKE, "-C", str(ROOT), "--no-print-directory", "run-postgres", "BIN=/nonexistent/bin"],
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "make run-postgres needs the database: make run-postgres DB=postgresql://" in done.stderr


def test_run_postgres_serves_the_board_from_the_database(postgres_cluster):
    database = postgres_cluster.new_database()
    # PORT=0: the server binds a free port and its first log line names it.
    make = subprocess.Popen(
        [MAKE, "-C", str(ROOT), "--no-print-directory", "-o", ".venv/.installed-postgres", f"BIN={BIN}",
         "run-postgres", f"DB={database}", "PORT=0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines = []
    try:
        for line in make.stdout:
            lines.append(line)
            listening = re.search(r"talkserver listening on http://127\.0\.0\.1:(\d+)/", line)
            if listening:
                port = int(listening.group(1))
                break
        else:
            raise AssertionError("the server did not start:\n" + "".join(lines))
        deadline = time.monotonic() + 60
        while True:
            try:
                put = urllib.request.Request(f"http://127.0.0.1:{port}/talks/Unicycling", method="PUT",
                                             data=b'{"presenter": "Ann", "summary": "One wheel"}')
                with urllib.request.urlopen(put, timeout=10) as answer:
                    assert answer.status == 204
                break
            except OSError:
                assert make.poll() is None and time.monotonic() < deadline, make.stdout.read()
                time.sleep(0.1)
        stored = postgres_cluster.psql("SELECT title FROM talks", database=database.rsplit("/", 1)[1])
        assert stored == "Unicycling"
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=30)
    output = "".join(lines) + make.stdout.read()
    assert f"talkserver listening on http://127.0.0.1:{port}/ (store {database}" in output
