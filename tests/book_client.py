"""A client that polls ``GET /talks`` as the book's current edition does.

Eloquent JavaScript's 3rd and 4th editions (chapter 21) keep the list
fresh like this: a plain ``GET /talks`` first, then, with the ETag it got,
``If-None-Match`` and ``Prefer: wait=90`` in a loop.  A 304 means "poll
again at once", any other status under 400 brings the whole array and a
new ETag, and an error (a status of 400 or more, or no answer) means "wait
half a second, then try again".  This is that loop in Python, for tests.
"""

from __future__ import annotations

import asyncio
import json

from tornado.httpclient import AsyncHTTPClient

RETRY_SECONDS = 0.5


class BookClient:
    """Keeps ``talks`` equal to the server's list by conditional polling."""

    def __init__(self, base_url: str, client: AsyncHTTPClient, wait: int = 90) -> None:
        self.base_url = base_url
        self.client = client
        self.wait = wait
        self.talks: list[dict] | None = None
        self.tag: str | None = None
        self.requests = 0
        self.not_modified = 0
        self.errors = 0
        self._task: asyncio.Task | None = None

    def titles(self) -> list[str] | None:
        return None if self.talks is None else [talk["title"] for talk in self.talks]

    def start(self) -> "BookClient":
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            headers = {}
            if self.tag is not None:
                headers = {"If-None-Match": self.tag, "Prefer": f"wait={self.wait}"}
            self.requests += 1
            response = await self.client.fetch(
                self.base_url + "/talks", headers=headers, request_timeout=self.wait + 30, raise_error=False
            )
            if response.code >= 400 or response.code < 200:  # 599: no answer at all
                self.errors += 1
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if response.code == 304:
                self.not_modified += 1
                continue
            self.tag = response.headers["ETag"]
            self.talks = json.loads(response.body)
