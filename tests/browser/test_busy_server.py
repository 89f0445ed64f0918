"""The page against a server that asks it to wait: Retry-After is honoured, the reason shown.

Many browsers behind one address are normally served by the slow lane; only
past five times the per-address cap does a poll get 429 with Retry-After.
Here the cap is 1 and a few raw clients from the page's own address (the
hogs) keep the cap and the lane full, so the page's polls get that 429.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from playwright.sync_api import expect

from ..harness import send
from .page import refuse_event_streams

BUSY = "long polls are already waiting for your address"


class Hogs:
    """Raw clients that keep ``count`` polls waiting from 127.0.0.1, re-polling at once."""

    def __init__(self, port: int, count: int = 6) -> None:
        self.port, self.count = port, count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> "Hogs":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _run(self) -> None:
        cursor = (await send(self.port, "GET", "/talks")).json()["serverTime"]
        await asyncio.gather(*(self._hog(cursor) for _ in range(self.count)))

    async def _hog(self, cursor: int) -> None:
        while not self._stop.is_set():
            try:
                answer = await send(self.port, "GET", f"/talks?changesSince={cursor}", timeout=2)
                if answer.status == 429:
                    await asyncio.sleep(0.005)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)


@pytest.mark.parametrize("server_args", [("--max-polls-per-ip=1",)])
def test_a_refused_poll_shows_the_servers_reason_and_waits_as_retry_after_says(open_page, server, server_args):
    # Polls are what a busy address refuses; a page on an event stream
    # would never meet the 429.
    page = open_page(before_load=refuse_event_streams)
    refusals: list[float] = []
    page.on(
        "response",
        lambda r: refusals.append(time.monotonic()) if r.status == 429 and "changesSince" in r.url else None,
    )
    status = page.get_by_role("status")

    with Hogs(server.port):
        # The server's own words, and when it asked to be tried again
        expect(status).to_contain_text(BUSY, timeout=40_000)
        expect(status).to_contain_text("Reconnecting: next try in 5 s")
        deadline = time.monotonic() + 30
        while len(refusals) < 3 and time.monotonic() < deadline:
            page.wait_for_timeout(200)

    gaps = [b - a for a, b in zip(refusals, refusals[1:])]
    assert len(gaps) >= 2, refusals
    # Retry-After: 5. Without it the page would come back after 0.25-2 s.
    assert min(gaps) >= 4.5, gaps
    expect(status).to_have_text("Live", timeout=30_000)
