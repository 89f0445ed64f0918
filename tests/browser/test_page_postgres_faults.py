"""The page when PostgreSQL hangs: a write whose outcome is unknown is not called failed or done.

A real talkserver on a real PostgreSQL cluster (tests/postgres.py), frozen
with SIGSTOP while a person proposes a talk in real Chromium.
"""

from __future__ import annotations

import os
import signal

import pytest
from playwright.sync_api import expect

from talkserver.testing.cluster import Cluster

from ..postgres import processes, stopped
from .page import propose, sign_in, talk
from .server import Server


@pytest.fixture
def cluster():
    cluster = Cluster()
    yield cluster
    cluster.destroy()


@pytest.fixture
def server(tmp_path, cluster):
    server = Server(0, tmp_path / "talkserver.log", db=cluster.new_database(), args=("--db-timeout=1",))
    server.start()
    yield server
    server.stop()


def test_a_talk_proposed_while_postgresql_hangs_is_neither_called_failed_nor_done(open_page, cluster):
    ada = open_page()
    sign_in(ada, "Ada")
    propose(ada, "Before the freeze")
    statuses = []
    ada.on("response", lambda r: statuses.append(r.status) if r.request.method == "PUT" else None)

    frozen = processes(cluster)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        ada.get_by_label("Title", exact=True).fill("During the freeze")
        ada.get_by_label("Summary", exact=True).fill("Sent while nobody answers.")
        ada.get_by_role("button", name="Propose talk").click()
        error = ada.locator("#new-talk .form-error")
        expect(error).to_be_visible()
        still_frozen = all(stopped(pid) for pid in frozen)
        message = error.text_content()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)

    assert still_frozen
    assert statuses[-1] in (503, 504)
    if statuses[-1] == 504:
        assert message == "The server could not tell whether your talk was proposed; the list shows it if it was."
    else:
        assert message.startswith("Your talk was not proposed: the change could not be saved")
    # The typed talk stays, ready to be sent again if it does not appear.
    expect(ada.get_by_label("Title", exact=True)).to_have_value("During the freeze")
    expect(talk(ada, "Before the freeze")).to_be_visible()
    expect(ada.get_by_role("status")).to_have_text("Live")
