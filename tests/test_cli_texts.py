"""What the commands print: the same exit status for a mistake, help without markup, counts in good English.

Every command (``talkserver``, ``talkserver-passwd``, ``talkserver-import``,
``talkserver-load``) is run for real, as a user runs it.
"""

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from talkserver.words import counted

from .harness import ServerProcess, metric_reaches, send

BIN = Path(sys.executable).parent
COMMANDS = ["talkserver", "talkserver-passwd", "talkserver-import", "talkserver-load"]


def run(command: str, *args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), *args], cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=60)


MISTAKES = {
    "talkserver: an unknown option": ("talkserver", ["--prot=1"], "talkserver: --prot: no such option"),
    "talkserver-passwd: an empty password": ("talkserver-passwd", ["passwords", "ada"],
                                             "talkserver-passwd: the password must not be empty"),
    "talkserver-passwd: deleting a name not there": ("talkserver-passwd", ["--delete", "passwords", "zed"],
                                                     "talkserver-passwd: zed is not in passwords"),
    "talkserver-import: a missing file": ("talkserver-import", ["nothing.db", "postgresql://127.0.0.1:1/talks"],
                                          "talkserver-import: nothing.db: no such file"),
    "talkserver-import: not a postgresql url": ("talkserver-import", ["talks.db", "sqlite://talks.db"],
                                                "talkserver-import: the second argument must be a postgresql:// URL"),
    "talkserver-import: a missing argument": ("talkserver-import", ["talks.db"], "talkserver-import: error:"),
}


@pytest.mark.parametrize("case", MISTAKES)
def test_every_command_refuses_a_mistake_with_exit_status_2(tmp_path, case):
    command, args, expected = MISTAKES[case]

    done = run(command, *args, cwd=tmp_path, stdin="\n")

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert expected in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_text_shows_no_markup(tmp_path, command):
    done = run(command, "--help", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()
    assert "`" not in done.stdout  # reStructuredText's ``literal`` belongs in docstrings, not in help


@pytest.mark.parametrize("count, noun, plural, expected", [
    (0, "waiting poll", None, "0 waiting polls"),
    (1, "waiting poll", None, "1 waiting poll"),
    (2, "waiting poll", None, "2 waiting polls"),
    (1, "talk or tombstone", "talks and tombstones", "1 talk or tombstone"),
    (3, "talk or tombstone", "talks and tombstones", "3 talks and tombstones"),
    (1.0, "day", None, "1 day"),
    (0.5, "day", None, "0.5 days"),
])
def test_a_count_takes_the_singular_only_for_one(count, noun, plural, expected):
    assert counted(count, noun, plural) == expected


@pytest.mark.gen_test(timeout=120)
async def test_the_drain_counts_one_waiting_poll_and_one_talk_in_the_singular():
    with ServerProcess("--db=:memory:", "--poll-timeout=120", "--max-comments=1") as server:
        await send(server.port, "PUT", "/talks/Only", {"presenter": "Ann", "summary": "one"})
        await send(server.port, "POST", "/talks/Only/comments", {"author": "Bob", "message": "the one"})
        too_many = await send(server.port, "POST", "/talks/Only/comments", {"author": "Bob", "message": "again"})
        cursor = (await send(server.port, "GET", "/talks")).json()["serverTime"]
        poll = asyncio.ensure_future(send(server.port, "GET", f"/talks?changesSince={cursor}"))
        await metric_reaches(server.port, "talkserver_waiting_clients", 1)

        server.terminate()
        assert (await poll).status == 200
        assert await server.stopped() == 0
        log = server.log()

    assert too_many.status == 409
    assert too_many.json()["error"] == "this talk already has 1 comment, the most allowed"
    assert "stopped: answered 1 waiting poll; 1 talk in the store" in log


ROOT = Path(__file__).resolve().parent.parent
# docs/benchmarks.md keeps a dated history of measurements, which may say what each round was for.
USER_DOCS = [ROOT / "README.md", *(p for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "benchmarks.md")]


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_user_docs_cite_no_issue_numbers(path):
    text = path.read_text(encoding="utf-8")

    assert not re.findall(r"(?i)\bissues?\s*#?\d+", text)
