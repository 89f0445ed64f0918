"""A client that follows the changesSince protocol the way a browser page does.

Used by the tests to check that pollers end with exactly the server's talks.
"""

import json

from tornado.httpclient import AsyncHTTPClient


class Follower:
    """Keeps a copy of the talks up to date by long polling."""

    def __init__(self, base_url: str, client: AsyncHTTPClient) -> None:
        self.base_url = base_url
        self.client = client
        self.talks: dict[str, dict] = {}
        self.server_time: int | None = None
        self.seen: list[tuple[int, str]] = []  # (serverTime, title) of each delivered change
        self.stopped = False

    async def start(self) -> None:
        """Load the whole list, as a page does when it opens."""
        answer = await self._get("/talks")
        self.talks = {t["title"]: t for t in answer["talks"]}
        self.server_time = answer["serverTime"]

    async def poll_once(self, timeout: float = 30) -> dict:
        """One long poll; apply what it brings."""
        answer = await self._get(f"/talks?changesSince={self.server_time}", timeout)
        if answer.get("reset"):
            self.talks = {}
        for talk in answer["talks"]:
            self.seen.append((answer["serverTime"], talk["title"]))
            if talk.get("deleted"):
                self.talks.pop(talk["title"], None)
            else:
                self.talks[talk["title"]] = talk
        assert answer["serverTime"] >= self.server_time
        self.server_time = answer["serverTime"]
        return answer

    async def run(self) -> None:
        """Poll until stopped."""
        while not self.stopped:
            await self.poll_once()

    async def _get(self, path: str, timeout: float = 30) -> dict:
        response = await self.client.fetch(self.base_url + path, request_timeout=timeout)
        return json.loads(response.body)
