"""An independent check that one or several servers serve one board exactly once.

Writers send PUTs, comments and DELETEs, each to the next server in turn;
followers (tests/follower.py) long poll the way a page does, each poll to
the next server in turn.  Each writer owns its titles and records every
write in a shared ``Ledger`` before sending it, so a follower knows which
write made each state it receives.  The run ends once the writers have
``writes`` acknowledged writes and every follower has caught up with the
board.

``check`` then fails, naming the broken promise, on: any write refused
(no write here has a reason to be refused), any poll answered with
anything but 200, any change received twice or after a newer one, any gap
(a follower holding a writer's write #k but not one acknowledged before
it), too few acknowledged writes, and any follower that does not end equal
to ``GET /talks`` on every server.

It speaks plain HTTP through Tornado's client and knows nothing of
talkserver's insides, so it checks servers exactly as clients see them:
``python -m tests.consistency URL [URL...]`` runs it against servers
already running.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient

from .follower import Follower, Ledger, Servers, Write
from .harness import WAIT, until

TITLES_PER_WRITER = 3


def talk_url(base: str, title: str) -> str:
    return f"{base}/talks/{quote(title, safe='')}"


class Writer:
    """Random PUT / comment / DELETE on titles of its own, each to the next server.

    Every write leaves a state no other leaves (its summary or comment
    names the write), and a deleted title is never used again (the next
    one of that slot gets a new name), so the ledger can name the write
    behind every state and every tombstone.
    """

    def __init__(self, number: int, servers: Servers, client: AsyncHTTPClient, ledger: Ledger) -> None:
        self.number = number
        self.servers = servers
        self.client = client
        self.ledger = ledger
        self.rng = random.Random(number)
        self.generation = [0] * TITLES_PER_WRITER
        self.state: dict[str, dict | None] = {}
        self.acknowledged = 0
        self.problems: list[str] = []

    def title(self, slot: int) -> str:
        return f"w{self.number} talk {slot}.{self.generation[slot]} ✓"

    async def write_once(self) -> bool:
        """Send one write and wait for its answer; False once a write was refused."""
        slot = self.rng.randrange(TITLES_PER_WRITER)
        title = self.title(slot)
        current = self.state.get(title)
        seq = len(self.ledger.by_writer.get(self.number, []))
        token = f"w{self.number} #{seq}"
        action = self.rng.random() if current else 0.0
        if action < 0.4:
            body = {"presenter": f"writer {self.number}", "summary": token}
            new, method, url = {"title": title, **body, "comments": []}, "PUT", talk_url(self.servers.next(), title)
        elif action < 0.85:
            body = {"author": f"writer {self.number}", "message": token}
            new = dict(current, comments=[*current["comments"], body])
            method, url = "POST", talk_url(self.servers.next(), title) + "/comments"
        else:
            body, new, method, url = None, None, "DELETE", talk_url(self.servers.next(), title)
        write = self.ledger.record(Write(self.number, seq, title, new))
        try:
            response = await self.client.fetch(url, method=method, body=None if body is None else json.dumps(body),
                                               raise_error=False, request_timeout=WAIT)
        except Exception as error:  # noqa: BLE001 - no write here may fail, whatever the reason
            self.problems.append(f"writer {self.number}: {method} {title!r} ({write}) got no answer: {error!r}")
            return False
        if response.code != 204:
            reason = (response.body or b"")[:200].decode("utf-8", "replace")
            self.problems.append(f"writer {self.number}: {method} {title!r} ({write}) refused {response.code}: {reason}")
            return False
        write.acknowledged = True
        self.acknowledged += 1
        self.state[title] = new
        if new is None:
            self.generation[slot] += 1
        return True

    async def run(self, enough) -> None:
        """Write until ``enough()`` or a write is refused."""
        while not enough() and await self.write_once():
            pass


@dataclass
class Report:
    """What a run saw: acknowledged writes, the board at the end, the followers, every problem."""

    writes: int
    wanted: int
    final: dict
    followers: list[Follower]
    problems: list[str]


async def run(bases: list[str], writes: int = 400, writers: int = 8, followers: int = 20,
              timeout: float = 2 * WAIT) -> Report:
    """Write ``writes`` acknowledged writes to ``bases`` while followers follow; bring them to the end state."""
    client = AsyncHTTPClient(force_instance=True, max_clients=followers + writers + 10)
    servers, ledger = Servers(bases), Ledger()
    readers = [Follower(servers, client, number, ledger) for number in range(followers)]
    storm = [Writer(number, servers, client, ledger) for number in range(writers)]
    polling = []
    try:
        for reader in readers:
            await reader.start()
        polling = [asyncio.ensure_future(r.run()) for r in readers]

        def enough() -> bool:
            return ledger.acknowledged() >= writes

        await asyncio.wait_for(asyncio.gather(*(w.run(enough) for w in storm)), timeout)
        # Every server must come to the same final state...
        final = await _settled(client, bases)
        # ...and every follower to that state, through any server.
        await until(lambda: all(r.server_time == final["serverTime"] for r in readers), WAIT, lambda: (
            f"followers still behind the board's serverTime {final['serverTime']}: "
            + ", ".join(f"{r.number} at {r.server_time}" for r in readers if r.server_time != final["serverTime"])
        ))
    finally:
        for task in polling:
            task.cancel()
        await asyncio.gather(*polling, return_exceptions=True)
        client.close()
    problems = [p for w in storm for p in w.problems] + [p for r in readers for p in r.problems]
    return Report(ledger.acknowledged(), writes, final, readers, problems)


async def _settled(client: AsyncHTTPClient, bases: list[str]) -> dict:
    """``GET /talks`` once every server answers the same."""
    answers: list[dict] = []

    async def agree() -> bool:
        answers[:] = [json.loads((await client.fetch(base + "/talks", request_timeout=WAIT)).body) for base in bases]
        return all(a == answers[0] for a in answers)

    def disagreement() -> str:
        boards = [{t["title"]: t for t in a["talks"]} for a in answers]
        differ = sorted({title for b in boards for title in b if any(b.get(title) != o.get(title) for o in boards)})
        return (f"the servers did not agree: serverTimes {[a['serverTime'] for a in answers]},"
                f" talks that differ: {differ[:10]}")

    await until(agree, WAIT, disagreement)
    return answers[0]


def check(report: Report) -> None:
    """Assert what the module docstring promises, naming each broken promise."""
    problems = list(report.problems)
    expected = {t["title"]: t for t in report.final["talks"]}
    for follower in report.followers:
        missing = sorted(expected.keys() - follower.talks.keys())
        extra = sorted(follower.talks.keys() - expected.keys())
        differ = sorted(t for t in expected.keys() & follower.talks.keys() if expected[t] != follower.talks[t])
        if missing or extra or differ:
            problems.append(f"follower {follower.number} ends unlike GET /talks: missing {missing[:5]},"
                            f" extra {extra[:5]}, different {differ[:5]}")
    if report.writes < report.wanted:
        problems.append(f"only {report.writes} writes acknowledged of the {report.wanted} wanted")
    assert not problems, f"{len(problems)} broken promises:\n" + "\n".join(problems[:30])


if __name__ == "__main__":
    # python -m tests.consistency http://127.0.0.1:8000 http://127.0.0.1:8001
    import sys

    outcome = asyncio.run(run(sys.argv[1:]))
    check(outcome)
    print(f"consistent: {outcome.writes} writes acknowledged; {len(outcome.followers)} followers"
          " equal to GET /talks, every change received exactly once")
