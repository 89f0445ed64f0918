"""A real server killed and restarted on the same file keeps what it acknowledged.

Each test runs ``python -m talkserver`` in a subprocess and talks to it over
real sockets; the crash test kills it with SIGKILL in the middle of a storm
of writes.
"""

import asyncio
import http.client
import random
import threading
import time
from urllib.parse import quote

from talkserver.stores.sqlite import SQLiteStore

from .follower import Follower, Servers
from .harness import WAIT, ServerProcess, exchange

WRITERS = 8
TITLES_PER_WRITER = 3
ACKED_BEFORE_KILL = 1000


def talk_path(title):
    return "/talks/" + quote(title, safe="")


class Writer(threading.Thread):
    """Hammers its own titles with PUT, comment and DELETE until the server dies.

    Only this writer touches its titles, so the state after its last
    acknowledged (204) write is what the server must have; the one write
    still unanswered at the crash may or may not have been committed.
    """

    def __init__(self, server: ServerProcess, number: int) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.rng = random.Random(number)
        self.titles = [f"writer {number} talk {k} ✓" for k in range(TITLES_PER_WRITER)]
        self.acknowledged: dict[str, dict | None] = dict.fromkeys(self.titles)
        self.unanswered: tuple[str, dict | None] | None = None
        self.acked = 0
        self.wrong_answers: list[int] = []

    def run(self) -> None:
        conn = self.server.connection()
        for step in range(100_000):
            title = self.rng.choice(self.titles)
            current = self.acknowledged[title]
            op = self.rng.choice(["put", "comment", "comment", "delete"] if current else ["put"])
            if op == "put":
                body = {"presenter": self.name, "summary": f"version {step}"}
                new = {"title": title, **body, "comments": []}
                request = ("PUT", talk_path(title), body)
            elif op == "comment":
                comment = {"author": self.name, "message": f"comment {step}"}
                new = dict(current, comments=current["comments"] + [comment])
                request = ("POST", talk_path(title) + "/comments", comment)
            else:
                new = None
                request = ("DELETE", talk_path(title), None)
            self.unanswered = (title, new)
            try:
                status, _ = exchange(conn, *request)
            except (OSError, http.client.HTTPException):
                return  # the server is gone
            if status != 204:
                self.wrong_answers.append(status)
                return
            self.acknowledged[title] = new
            self.unanswered = None
            self.acked += 1


class Poller(threading.Thread):
    """A client keeping its copy of the talks up to date by long polling (the harness's follower model)."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.model = Follower(Servers(server.base), client=None)
        status, answer = server.request("GET", "/talks")
        assert status == 200
        self.model.apply(answer)
        self.newest_server_time = self.cursor

    @property
    def cursor(self) -> int:
        return self.model.server_time

    @property
    def talks(self) -> dict[str, dict]:
        return self.model.talks

    def apply(self, answer: dict) -> None:
        """Bring the copy up to date with one /talks answer, as the browser does."""
        self.model.apply(answer)
        self.newest_server_time = max(self.newest_server_time, self.cursor)

    def run(self) -> None:
        conn = self.server.connection()
        while True:
            try:
                status, answer = exchange(conn, "GET", f"/talks?changesSince={self.cursor}")
            except (OSError, http.client.HTTPException):
                return
            if status != 200:
                self.model.problems.append(f"a poll answered {status}: {answer}")
                return
            self.apply(answer)


def test_sigkill_mid_storm_loses_no_acknowledged_write_and_cursors_carry_on(tmp_path):
    server = ServerProcess("--db=talks.db", "--poll_timeout=5", "--write-rate=0", cwd=tmp_path)
    poller = Poller(server)
    writers = [Writer(server, n) for n in range(WRITERS)]
    poller.start()
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + WAIT
    while sum(w.acked for w in writers) < ACKED_BEFORE_KILL and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()
    for thread in [poller, *writers]:
        thread.join(timeout=WAIT)
    assert sum(w.acked for w in writers) >= ACKED_BEFORE_KILL
    assert [w.wrong_answers for w in writers] == [[]] * WRITERS
    # Written by the storm while it ran, so the kill hit writes in flight.
    assert any(w.unanswered for w in writers)

    server = ServerProcess("--db=talks.db", "--poll_timeout=5", cwd=tmp_path)
    try:
        status, everything = server.request("GET", "/talks")
        on_server = {t["title"]: t for t in everything["talks"]}
        for writer in writers:
            for title, acknowledged in writer.acknowledged.items():
                possible = [acknowledged]
                if writer.unanswered and writer.unanswered[0] == title:
                    possible.append(writer.unanswered[1])
                assert on_server.get(title) in possible, title
        assert everything["serverTime"] >= poller.newest_server_time

        status, _ = server.request("PUT", talk_path("after the restart"), {"presenter": "Ann", "summary": "s"})
        assert status == 204
        status, answer = server.request("GET", f"/talks?changesSince={poller.cursor}")
        assert status == 200 and not answer.get("reset")
        changed = [t["title"] for t in answer["talks"]]
        assert "after the restart" in changed
        assert len(changed) == len(set(changed))
        assert answer["serverTime"] > poller.cursor
        poller.apply(answer)
        status, everything = server.request("GET", "/talks")
        assert poller.talks == {t["title"]: t for t in everything["talks"]}
        assert poller.model.problems == []
    finally:
        server.stop()


def test_a_restarted_server_has_the_talks_of_the_first_run_in_talks_db(tmp_path):
    """What ``make run`` twice does: the default --db is talks.db in the working directory."""
    server = ServerProcess(cwd=tmp_path)
    status, _ = server.request("PUT", talk_path("Unicycling"), {"presenter": "Ann", "summary": "One wheel"})
    assert status == 204
    status, _ = server.request("POST", talk_path("Unicycling") + "/comments", {"author": "Bob", "message": "Hi"})
    assert status == 204
    server_time = server.request("GET", "/talks")[1]["serverTime"]
    server.stop()
    assert (tmp_path / "talks.db").is_file()

    server = ServerProcess(cwd=tmp_path)
    try:
        status, answer = server.request("GET", "/talks")
        assert answer == {
            "serverTime": server_time,
            "talks": [{
                "title": "Unicycling", "presenter": "Ann", "summary": "One wheel",
                "comments": [{"author": "Bob", "message": "Hi"}],
            }],
        }
    finally:
        server.stop()


def test_tombstones_older_than_the_retention_are_pruned_at_start(tmp_path):
    day = 86_400_000
    now = int(time.time() * 1000)
    wall = {"now": now - 10 * day}

    async def write():
        store = SQLiteStore(str(tmp_path / "talks.db"), clock=lambda: wall["now"])
        before_delete = await store.put("Knitting", "Dee", "Two needles")
        await store.delete("Knitting")
        deleted_at = store.head
        wall["now"] = now - day
        await store.put("Unicycling", "Ann", "One wheel")
        await store.close()
        return before_delete, deleted_at

    before_delete, deleted_at = asyncio.run(write())

    server = ServerProcess("--db=talks.db", "--retention=30", cwd=tmp_path)
    try:
        status, answer = server.request("GET", f"/talks?changesSince={before_delete}")
        assert not answer.get("reset")
        assert {"title": "Knitting", "deleted": True} in answer["talks"]
    finally:
        server.stop()

    server = ServerProcess("--db=talks.db", "--retention=7", cwd=tmp_path)
    try:
        status, answer = server.request("GET", f"/talks?changesSince={before_delete}")
        assert answer["reset"] is True
        assert [t["title"] for t in answer["talks"]] == ["Unicycling"]
        status, answer = server.request("GET", f"/talks?changesSince={deleted_at}")
        assert "reset" not in answer
        assert [t["title"] for t in answer["talks"]] == ["Unicycling"]
    finally:
        server.stop()
