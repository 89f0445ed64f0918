"""A PostgreSQL board whose history was cut: restored from an older dump while its servers run.

Real ``python -m talkserver`` processes on the session's throwaway cluster,
real ``pg_dump`` and ``pg_restore``, real sockets.  Given two servers and
clients following them (long polls, an event stream, a waiting ETag poll),
a dump, and more writes the clients have seen; when the dump is restored
under the running servers; then every server, and one started afterwards,
serves the restored board, every client whose copy held lost talks is told
with ``reset`` and ends equal to the board, and cursors from before the cut
and after it work as usual.
"""

import asyncio
import json
from urllib.parse import quote

import pytest
from tornado.websocket import websocket_connect
from tornado.httpclient import AsyncHTTPClient

from .follower import Follower, Servers
from .harness import WAIT, ServerProcess, send, until
from .sse import StreamClient


@pytest.fixture
def database(postgres_cluster):
    return postgres_cluster.new_database()


def started(*options):
    return ServerProcess("--poll-timeout=10", "--logging=warning", *options)




async def board(port):
    return (await send(port, "GET", "/talks")).json()


async def put(port, title, presenter="Ann", summary="A talk"):
    answer = await send(port, "PUT", "/talks/" + quote(title), {"presenter": presenter, "summary": summary})
    assert answer.status == 204, answer.body


class Poller(Follower):
    """A Follower that keeps polling in the background and remembers every reset it got.

    Resets are the point here, so its ``problems`` (where a plain follower
    records a reset as a broken promise) are not checked; its copy is.
    """

    def __init__(self, server):
        super().__init__(Servers(server.base), AsyncHTTPClient(force_instance=True))
        self.resets = []
        self.task = None
        self.stopped = False

    async def begin(self):
        await self.start()
        self.task = asyncio.ensure_future(self._loop())

    async def _loop(self):
        while not self.stopped:
            answer = await self.poll_once()
            if answer is None:
                await asyncio.sleep(0.1)  # a 503 while the database is mid-restore: poll again
            elif answer.get("reset"):
                self.resets.append(answer)

    async def end(self):
        self.stopped = True
        self.task.cancel()  # its last poll waits for a change that will not come
        self.client.close()


def dump(cluster, url, path):
    cluster.dump(url, path)


def restore(cluster, url, path):
    cluster.restore(url, path)


def titles(answer):
    return [t["title"] for t in answer["talks"]]


def cut_lines(server):
    return [line for line in server.log().splitlines() if "history cut" in line]


@pytest.mark.gen_test(timeout=180)
async def test_a_restore_under_running_servers_gives_every_server_and_client_the_restored_board(
    postgres_cluster, database, tmp_path
):
    with started(f"--db={database}") as a, started(f"--db={database}") as b:
        await put(a.port, "Kept", "Ann", "Survives the restore")
        await put(b.port, "Replaced later", "Bo", "The dump has this version")
        before_cut = (await board(a.port))["serverTime"]
        dumped = tmp_path / "board.dump"
        dump(postgres_cluster, database, dumped)
        restored_board = await board(a.port)

        # Given: changes after the dump, seen by clients of both servers.
        pollers = [Poller(a), Poller(b), Poller(a), Poller(b)]
        for poller in pollers:
            await poller.begin()
        await put(a.port, "Lost", "Cy", "Only after the dump")
        await put(b.port, "Replaced later", "Bo", "A version the restore loses")
        await send(a.port, "POST", "/talks/Kept/comments", {"author": "Di", "message": "Lost too"})

        async def everyone_saw_the_lost_changes():
            return all("Lost" in p.talks and p.talks["Kept"]["comments"] for p in pollers)

        await until(everyone_saw_the_lost_changes)
        lost_board = await board(b.port)
        lost_cursor = lost_board["serverTime"]
        stream = await StreamClient.open(a.port, f"/talks?changesSince={lost_cursor}")
        socket = await websocket_connect(f"ws://127.0.0.1:{b.port}/talks?changesSince={lost_cursor}")
        assert json.loads(await socket.read_message())["serverTime"] == lost_cursor
        tagged = await send(b.port, "GET", "/talks")
        old_tag = tagged.headers["etag"]
        waiting_tag_poll = asyncio.ensure_future(
            send(b.port, "GET", "/talks", headers={"If-None-Match": old_tag, "Prefer": "wait=60"}, timeout=90)
        )
        await asyncio.sleep(0.2)  # parked on b

        # When: the dump is restored while both servers run.
        restore(postgres_cluster, database, dumped)

        # Then: both servers serve the restored board, and so does one started afterwards.
        async def restored_on(port):
            now = await board(port)
            return now["talks"] == restored_board["talks"]

        await until(lambda: restored_on(a.port))
        await until(lambda: restored_on(b.port))
        with started(f"--db={database}") as c:
            servers = (a, b, c)

            async def all_agree():
                answers = [await board(s.port) for s in servers]
                return all(x == answers[0] for x in answers)

            await until(all_agree)
            final = await board(c.port)
            assert final["talks"] == restored_board["talks"]
            assert "Lost" not in titles(final)

            # Every poller held lost talks: each got a reset and now holds exactly the board.
            async def pollers_equal_the_board():
                return all(p.talks == {t["title"]: t for t in final["talks"]} for p in pollers)

            await until(pollers_equal_the_board)
            for poller in pollers:
                assert poller.resets, "a poller whose copy held lost talks was never told"
                assert poller.resets[-1]["talks"] == final["talks"]

            # The event stream was sent the reset, and so was the WebSocket.
            event = (await stream.event()).json()
            stream.close()
            assert event.get("reset") is True
            assert event["talks"] == final["talks"]
            pushed = json.loads(await asyncio.wait_for(socket.read_message(), WAIT))
            socket.close()
            assert pushed.get("reset") is True
            assert pushed["talks"] == final["talks"]

            # The ETag poll waiting on the old tag got the restored list and a tag of the new epoch.
            woken = await waiting_tag_poll
            assert woken.status == 200
            assert woken.json()["talks"] == final["talks"]
            assert woken.headers["etag"] != old_tag
            again = await send(c.port, "GET", "/talks", headers={"If-None-Match": old_tag})
            assert again.status == 200 and again.headers["etag"] != old_tag
            assert again.headers["etag"] == f'"{final["serverTime"]}.1"'  # the new epoch is in the tag

            # Every server reports the same cut on /healthz, and it names the lost stretch.
            health = [(await send(s.port, "GET", "/healthz")).json() for s in servers]
            assert all(h == health[0] for h in health)
            cut = health[0]["historyCut"]
            assert cut["survived"] < lost_cursor <= cut["cutThrough"]
            assert before_cut <= cut["survived"]

            # A cursor from the lost stretch gets the whole board with reset on every server,
            # also after new writes; one from before the cut gets just what changed since.
            await put(c.port, "After the cut", "Eve", "New")
            after = await board(c.port)
            assert after["serverTime"] > lost_cursor
            for server in servers:
                async def has_new_write():
                    return "After the cut" in titles(await board(server.port))

                await until(has_new_write)
                from_lost = (await send(server.port, "GET", f"/talks?changesSince={lost_cursor}")).json()
                assert from_lost.get("reset") is True
                assert from_lost["talks"] == after["talks"]
                from_before = (await send(server.port, "GET", f"/talks?changesSince={cut['survived']}")).json()
                assert "reset" not in from_before
                assert titles(from_before) == ["After the cut"]

            for poller in pollers:
                await poller.end()

        # The operator sees one warning line per server that had applied lost changes, naming the cut.
        for server in (a, b):
            lines = cut_lines(server)
            assert len(lines) == 1, server.log()
            assert f"history cut {cut['epoch']}" in lines[0] and str(cut["survived"]) in lines[0]
