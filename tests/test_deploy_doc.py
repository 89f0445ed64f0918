"""Every command and configuration docs/deploy.md gives a user to copy is run by a test.

The configurations are the document's marked blocks (tests/deploy_doc.py),
the commands its indented code blocks.  ``RUN_BY`` names the test that runs
each command; ``NOT_RUN`` names the few that change the machine itself
(accounts, systemd, journald), with what is tested in their place.  A
command or block added to the document without a test fails here.  The
tests of this module run the install, the PostgreSQL set-up, the
recommended PostgreSQL settings and the PostgreSQL config files; the
others live beside the parts they deploy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .deploy_doc import DEPLOY, block, filled, indented_commands, markers
from .harness import WAIT, ServerProcess, refused_port, send, until
from talkserver.testing.cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
TALK = {"presenter": "Ann", "summary": "As documented"}

RUN_BY = {
    "python3 -m venv /opt/talkserver": "tests/test_deploy_doc.py::test_the_install_commands_give_a_working_talkserver",
    "/opt/talkserver/bin/pip install /path/to/talkserver":
        "tests/test_deploy_doc.py::test_the_install_commands_give_a_working_talkserver",
    "talkserver-passwd /etc/talkserver.access.passwords ada": "tests/test_deploy_nginx.py::documented_config",
    "nginx -t && systemctl reload nginx": "tests/test_deploy_nginx.py::site",
    "curl -si https://talks.example.org/talks | head -1":
        "tests/test_deploy_nginx.py::test_the_documents_checks_answer_as_it_says",
    "curl -si -u ada https://talks.example.org/talks | head -1":
        "tests/test_deploy_nginx.py::test_the_documents_checks_answer_as_it_says",
    "curl -sN -u ada -H 'Accept: text/event-stream' https://talks.example.org/talks":
        "tests/test_deploy_nginx.py::test_the_documents_checks_answer_as_it_says",
    "systemctl kill -s TERM talkserver; journalctl -u talkserver -n 3":
        "tests/test_shutdown.py::test_sigterm_answers_200_waiting_polls_at_once_with_no_changes_and_exits_0",
    "createuser --pwprompt talks": "tests/test_deploy_doc.py::test_createuser_and_createdb_give_a_database_talkserver_sets_up",
    "createdb --owner=talks talks": "tests/test_deploy_doc.py::test_createuser_and_createdb_give_a_database_talkserver_sets_up",
}
NOT_RUN = {
    "useradd --system --home /var/lib/talkserver --create-home talkserver":
        "adds an account to the machine that runs the tests",
    "chown talkserver /etc/talkserver.access.passwords": "needs that account",
    "systemctl daemon-reload": "needs systemd as init; the unit is verified (tests/test_deploy_systemd.py)",
    "systemctl enable --now talkserver": "needs systemd as init; the unit is verified (tests/test_deploy_systemd.py)",
    "journalctl -u talkserver -f": "needs journald; what talkserver logs is tested with each feature",
}
BLOCK_READ_BY = {
    "talkserver.conf": "tests/test_deploy_nginx.py",
    "talkserver.service": "tests/test_deploy_systemd.py",
    "nginx site": "tests/test_deploy_nginx.py",
    "postgresql talkserver.conf": "tests/test_deploy_doc.py",
    "nginx upstream of several hosts": "tests/test_deploy_nginx.py",
    "standby talkserver.conf": "tests/test_deploy_doc.py",
}


def test_every_command_of_the_document_is_run_by_a_test_or_says_why_not():
    commands = indented_commands()
    assert sorted(set(commands)) == sorted(set(RUN_BY) | set(NOT_RUN))
    for command, where in RUN_BY.items():
        path, name = where.split("::")
        assert re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.M), f"{command}: {where} is gone"


def test_every_configuration_of_the_document_is_marked_and_read_by_a_test():
    text = DEPLOY.read_text(encoding="utf-8")
    # Every fenced block a user would copy (a configuration: ```python, ```ini, ```nginx) carries a marker.
    fenced = re.findall(r"^```(\w+)$", text, re.M)
    assert len(fenced) == len(markers()), "a fenced block of docs/deploy.md has no <!-- copied: NAME --> marker"
    assert sorted(markers()) == sorted(BLOCK_READ_BY)
    for name, path in BLOCK_READ_BY.items():
        assert f'block("{name}")' in (ROOT / path).read_text(), f"{path} does not read the block {name!r}"


def test_the_install_commands_give_a_working_talkserver(tmp_path):
    # Section 1, into a directory of the test's own instead of /opt/talkserver,
    # and section 6's extra for PostgreSQL.
    python3 = shutil.which("python3")
    assert python3, "python3 is not on the PATH"
    venv = tmp_path / "opt-talkserver"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([python3, "-m", "venv", str(venv)], check=True, timeout=300, env=env)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)], check=True, timeout=600, env=env)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{ROOT}[postgres]"],
                   check=True, timeout=600, env=env)
    version = subprocess.run([str(venv / "bin" / "talkserver"), "--version"], capture_output=True, text=True,
                             timeout=WAIT, cwd=tmp_path)
    assert version.stdout.startswith("talkserver "), version.stderr
    # The installed command serves the page it ships.
    with ServerProcess(command=[str(venv / "bin" / "talkserver"), "--port=0"], cwd=tmp_path) as server:
        with urllib.request.urlopen(server.base + "/", timeout=WAIT) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    assert (venv / "bin" / "talkserver-passwd").exists()


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_createuser_and_createdb_give_a_database_talkserver_sets_up(postgres_cluster, tmp_path):
    # Section 6 as the postgres user would type it (here: connecting to the
    # tests' cluster); createuser reads the password from stdin, there being
    # no terminal in the test's session.
    connect = ["-h", "127.0.0.1", "-p", str(postgres_cluster.port), "-U", "postgres"]
    role, database = "talks", "talks"
    try:
        made = subprocess.run([str(postgres_cluster.bin / "createuser"), *connect, "--pwprompt", role],
                              input="secret\nsecret\n", capture_output=True, text=True, timeout=WAIT,
                              start_new_session=True)
        assert made.returncode == 0, made.stderr
        made = subprocess.run([str(postgres_cluster.bin / "createdb"), *connect, f"--owner={role}", database],
                              capture_output=True, text=True, timeout=WAIT)
        assert made.returncode == 0, made.stderr
        # The document's config file for PostgreSQL, its URL pointed at the cluster.
        config = tmp_path / "talkserver.conf"
        config.write_text(filled(block("postgresql talkserver.conf"),
                                 ("db.example.org:5432", f"127.0.0.1:{postgres_cluster.port}")))
        with ServerProcess(f"--config={config}", cwd=tmp_path) as server:
            assert (await send(server.port, "PUT", "/talks/Documented", TALK)).status == 204
            # processes = 0: one worker per core, every one of them serving.
            cores = os.cpu_count() or 1
            assert len(re.findall(r"talkserver worker \d+ serving", await logged(server, cores))) == cores
        # talkserver made its tables as the user of the URL, in the database made for it.
        owner = postgres_cluster.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'talks'", database=database)
        assert owner == role
        assert postgres_cluster.psql("SELECT presenter FROM talks", database=database) == "Ann"
    finally:
        postgres_cluster.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        postgres_cluster.psql(f"DROP ROLE IF EXISTS {role}")


async def logged(server: ServerProcess, workers: int) -> str:
    """The server's log once all ``workers`` have said they serve."""
    return await until(lambda: server.log() if server.log().count("serving") >= workers else None)


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_the_standby_url_takes_the_first_host_that_accepts_writes(postgres_cluster, tmp_path):
    # The document's multi-host URL: the first host is away (a port that
    # refuses), the second is the cluster; talkserver serves from the second.
    url = postgres_cluster.new_database()
    with refused_port() as away:
        config = tmp_path / "talkserver.conf"
        config.write_text(filled(
            block("standby talkserver.conf"),
            ("talks:secret@", "postgres@"),
            ("db1.example.org:5432", f"127.0.0.1:{away}"),
            ("db2.example.org:5432", f"127.0.0.1:{postgres_cluster.port}"),
            ("/talks?", f"/{url.rsplit('/', 1)[1]}?"),
        ))
        with ServerProcess(f"--config={config}", cwd=tmp_path) as server:
            assert (await send(server.port, "PUT", "/talks/Failover", TALK)).status == 204
            health = (await send(server.port, "GET", "/healthz")).json()
            assert health["database"]["primary"] == f"127.0.0.1:{postgres_cluster.port}"
    assert postgres_cluster.psql("SELECT title FROM talks", database=url.rsplit("/", 1)[1]) == "Failover"


def postgresql_settings() -> dict[str, str]:
    """The PostgreSQL settings the document recommends (``name = value`` in its list of "the settings that matter")."""
    text = DEPLOY.read_text(encoding="utf-8")
    start = text.index("settings that matter:")
    listed = text[start:text.index("\n\n", text.index("\n- ", start))]
    return dict(re.findall(r"`([a-z_]+) = ([^`]+)`", listed))


@pytest.mark.gen_test(timeout=3 * WAIT)
async def test_the_recommended_postgresql_settings_are_accepted_and_talkserver_runs_on_them(tmp_path):
    settings = postgresql_settings()
    assert {"synchronous_commit", "fsync", "idle_in_transaction_session_timeout", "tcp_keepalives_idle"} <= set(settings)
    cluster = Cluster(durable=True)  # the tests' own fsync=off would override the document's fsync = on
    try:
        # ALTER SYSTEM refuses a name or a value PostgreSQL does not take; then
        # the cluster starts again on them, as after editing postgresql.conf.
        for name, value in settings.items():
            cluster.psql(f"ALTER SYSTEM SET {name} = '{value}'")
        cluster.stop()
        cluster.start()
        for name in settings:
            assert cluster.psql(f"SELECT source FROM pg_settings WHERE name = '{name}'") == "configuration file"
        url = cluster.new_database()
        with ServerProcess(f"--db={url}", cwd=tmp_path) as server:
            assert (await send(server.port, "PUT", "/talks/Tuned", TALK)).status == 204
    finally:
        cluster.destroy()
