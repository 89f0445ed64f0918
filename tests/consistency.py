"""An independent check that several servers serve one board consistently.

Followers poll the way a page does, but send each poll to the next server
in turn; writers send each write to the next server in turn.  At the end
every follower's copy must equal ``GET /talks`` (on every server), no
follower may have been told to reset, and no change may have reached a
follower twice.

It speaks plain HTTP through Tornado's client and knows nothing of
talkserver's insides, so it checks servers exactly as clients see them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

TITLES = [f"talk {n} ✓" for n in range(12)]


def talk_url(base: str, title: str) -> str:
    return f"{base}/talks/{quote(title, safe='')}"


class Servers:
    """The servers' base URLs, handed out in turn (a round-robin balancer)."""

    def __init__(self, bases: list[str]) -> None:
        self.bases = bases
        self._turn = itertools.cycle(bases)
        self.dead: set[str] = set()

    def next(self) -> str:
        for base in self._turn:
            if base not in self.dead:
                return base
        raise AssertionError("no server left")


@dataclass
class RoundRobinFollower:
    """Keeps a copy of the talks by long polling, each poll to the next server."""

    servers: Servers
    client: AsyncHTTPClient
    talks: dict = field(default_factory=dict)
    server_time: int | None = None
    resets: int = 0
    deliveries: Counter = field(default_factory=Counter)  # title -> changes received
    stopped: bool = False

    async def start(self) -> None:
        answer = await self._get("/talks")
        self.talks = {t["title"]: t for t in answer["talks"]}
        self.server_time = answer["serverTime"]

    async def run(self) -> None:
        while not self.stopped:
            try:
                answer = await self._get(f"/talks?changesSince={self.server_time}")
            except (HTTPClientError, OSError):
                # A server that was just killed: the page polls again, elsewhere.
                await asyncio.sleep(0.05)
                continue
            if answer.get("reset"):
                self.resets += 1
                self.talks = {}
            for talk in answer["talks"]:
                self.deliveries[talk["title"]] += 1
                if talk.get("deleted"):
                    self.talks.pop(talk["title"], None)
                else:
                    self.talks[talk["title"]] = talk
            assert answer["serverTime"] >= self.server_time, "serverTime went back"
            self.server_time = answer["serverTime"]

    async def _get(self, path: str) -> dict:
        response = await self.client.fetch(self.servers.next() + path, request_timeout=60)
        return json.loads(response.body)


@dataclass
class Writer:
    """Random PUT / comment / DELETE on a shared set of titles, each to the next server."""

    servers: Servers
    client: AsyncHTTPClient
    number: int
    attempts: Counter = field(default_factory=Counter)  # title -> writes sent (answered or not)
    acknowledged: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        rng = random.Random(self.number)
        step = 0
        while not stop.is_set():
            step += 1
            title = rng.choice(TITLES)
            url = talk_url(self.servers.next(), title)
            action = rng.random()
            self.attempts[title] += 1
            if action < 0.5:
                request = dict(method="PUT", body=json.dumps({"presenter": f"w{self.number}", "summary": str(step)}))
            elif action < 0.8:
                url += "/comments"
                request = dict(method="POST", body=json.dumps({"author": f"w{self.number}", "message": str(step)}))
            else:
                request = dict(method="DELETE")
            try:
                response = await self.client.fetch(url, raise_error=False, request_timeout=30, **request)
            except OSError:
                continue
            if response.code == 204:
                self.acknowledged += 1


@dataclass
class Report:
    writes: int
    final: dict
    followers: list[RoundRobinFollower]
    attempts: Counter


async def run(bases: list[str], seconds: float = 3.0, writers: int = 8, followers: int = 20) -> Report:
    """Storm ``bases`` for ``seconds`` and bring every follower to the end state."""
    client = AsyncHTTPClient(force_instance=True, max_clients=followers + writers + 10)
    try:
        servers = Servers(bases)
        readers = [RoundRobinFollower(servers, client) for _ in range(followers)]
        for reader in readers:
            await reader.start()
        polling = [asyncio.ensure_future(r.run()) for r in readers]
        stop = asyncio.Event()
        storm = [Writer(servers, client, n) for n in range(writers)]
        writing = [asyncio.ensure_future(w.run(stop)) for w in storm]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*writing)

        # Every server must come to the same final state...
        final = await _settled(client, bases)
        # ...and every follower to that state, through either server.
        await _until(lambda: all(r.server_time == final["serverTime"] for r in readers), 30)
        for reader in readers:
            reader.stopped = True
        # One last change ends the polls still waiting.
        await client.fetch(talk_url(bases[0], "the end"), method="PUT",
                           body=json.dumps({"presenter": "check", "summary": "ends the last polls"}))
        await asyncio.wait_for(asyncio.gather(*polling), 60)
        attempts = sum((w.attempts for w in storm), Counter())
        return Report(sum(w.acknowledged for w in storm), final, readers, attempts)
    finally:
        client.close()


async def _settled(client: AsyncHTTPClient, bases: list[str]) -> dict:
    """``GET /talks`` once every server answers with the same serverTime."""
    for _ in range(300):
        answers = [json.loads((await client.fetch(base + "/talks")).body) for base in bases]
        if all(a == answers[0] for a in answers):
            return answers[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the servers did not agree: {[a['serverTime'] for a in answers]}")


async def _until(condition, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def check(report: Report) -> None:
    """Assert what the module docstring promises."""
    # "the end" is the check's own last change (from this run or a previous one).
    expected = {t["title"]: t for t in report.final["talks"] if t["title"] != "the end"}
    for follower in report.followers:
        assert follower.resets == 0
        assert {t: v for t, v in follower.talks.items() if t != "the end"} == expected
        # Each change reaches a follower at most once (changes to one title
        # may coalesce), so a title can never arrive more often than it was
        # written.
        for title, count in follower.deliveries.items():
            if title != "the end":
                assert count <= report.attempts[title], f"{title!r} delivered {count} times, written {report.attempts[title]}"


if __name__ == "__main__":
    # python -m tests.consistency http://127.0.0.1:8000 http://127.0.0.1:8001
    import sys

    outcome = asyncio.run(run(sys.argv[1:], seconds=5.0))
    check(outcome)
    print(f"consistent: {outcome.writes} writes acknowledged; {len(outcome.followers)} followers"
          " equal to GET /talks, no reset, no duplicate")
