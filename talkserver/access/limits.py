"""Abuse limits: they answer with a status and a message, never a crash.

Per client address (``request.remote_ip``, which ``--xheaders`` takes from
the reverse proxy's X-Real-Ip / X-Forwarded-For):

- at most ``max_polls_per_ip`` long polls wait for a change at once; the
  polls past that go to the slow lane (talkserver.follow.slowlane), answered every
  few seconds, up to ``SLOW_LANE_FACTOR`` times the cap; past that, 429
  with Retry-After, while the ones already waiting keep waiting;
- writes (PUT, DELETE, POST) refill at ``write_rate`` per second with bursts
  of ``write_burst`` (a token bucket); past that, 429 with Retry-After.
  Clients on this machine (loopback addresses) are not write-limited unless
  ``limit_local_writes`` is set: the limit keeps remote clients from
  flooding the board, and a local process has the database file anyway
  (operator scripts, tests, load tests).  The poll cap, which protects the
  server's own sockets and memory, applies to every address.

Per talk, at most ``max_comments`` comments; one more gets 409.

A limit of 0 or None is off.  make_app() leaves every limit off unless asked,
so embedding code and tests get the open server of the book; the
``talkserver`` command turns them on with the defaults below.

Limits also counts the writes in flight, so a shutdown can wait for them.
"""

from __future__ import annotations

import ipaddress
import math
import time
from typing import Callable, Hashable

from tornado.web import HTTPError

from talkserver.access.refusal import Refusal

from talkserver.words import counted

DEFAULT_MAX_POLLS_PER_IP = 200
DEFAULT_WRITE_RATE = 20.0
DEFAULT_WRITE_BURST = 40
DEFAULT_MAX_COMMENTS = 500
# Polls past the cap wait in the slow lane, up to this many times the cap.
SLOW_LANE_FACTOR = 4

WRITE_METHODS = frozenset({"PUT", "DELETE", "POST", "PATCH"})



class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one per write."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now

    def take(self, rate: float, burst: float, now: float) -> float:
        """Take a token; returns 0, or the seconds until one is available."""
        # max(): a clock that went back must not drain the bucket.
        self.tokens = min(burst, self.tokens + max(0.0, now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate


class Limits:
    """The limits of one server and the counts they are checked against."""

    def __init__(
        self,
        max_polls_per_ip: int | None = None,
        write_rate: float | None = None,
        write_burst: int | None = None,
        max_comments: int | None = None,
        limit_local_writes: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_polls_per_ip = max_polls_per_ip or 0
        self.write_rate = write_rate or 0.0
        # Without a burst, a rate alone still allows one write at a time.
        self.write_burst = max(1, write_burst or math.ceil(self.write_rate))
        self.max_comments = max_comments or 0
        self.limit_local_writes = limit_local_writes
        self._clock = clock
        self._polls: dict[str, int] = {}
        self._poll_address: dict[Hashable, str] = {}
        self._writing: set[Hashable] = set()
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def writes_in_flight(self) -> int:
        """Writes that have started and not yet been answered."""
        return len(self._writing)

    @classmethod
    def from_settings(cls, settings: dict) -> "Limits":
        """The limits named in an Application's settings (absent = off)."""
        return cls(
            settings.get("max_polls_per_ip"),
            settings.get("write_rate"),
            settings.get("write_burst"),
            settings.get("max_comments"),
            bool(settings.get("limit_local_writes")),
        )

    # -- the rules (asked through access.admission) ----------------------

    def check_write(self, write: Hashable, address: str) -> None:
        """Refusal (429) for a write over the address's rate; else count
        ``write`` as in flight until ``release``."""
        wait = self.write_wait(address)
        if wait:
            raise Refusal(429, f"too many writes from your address; try again in {wait} s", Retry_After=str(wait))
        self._writing.add(write)

    def hold_poll(self, poll: Hashable, address: str) -> bool:
        """Count a follower against its address; True if it is over the cap
        (it goes to the slow lane), Refusal (429) if even the slow lane is full."""
        held = self._polls.get(address, 0)
        over_cap = self._at_cap(held)
        if over_cap and held >= self.max_polls_per_ip * (1 + SLOW_LANE_FACTOR):
            raise Refusal(429, f"{held} long polls are already waiting for your address; try again in 5 s",
                          Retry_After="5")
        self._count_poll(poll, address, held)
        return over_cap

    def hold_poll_under_cap(self, poll: Hashable, address: str) -> bool:
        """Count ``poll`` against ``address`` if the address is under the cap;
        False, counting nothing, if it is not (the caller then takes the
        handlers' way, which has the slow lane and the 429)."""
        held = self._polls.get(address, 0)
        if self._at_cap(held):
            return False
        self._count_poll(poll, address, held)
        return True

    def _at_cap(self, held: int) -> bool:
        return bool(self.max_polls_per_ip) and held >= self.max_polls_per_ip

    def _count_poll(self, poll: Hashable, address: str, held: int) -> None:
        self._polls[address] = held + 1
        self._poll_address[poll] = address

    def release(self, handler: Hashable) -> None:
        """Give back what the request held (called once it has finished);
        calling it again changes nothing."""
        self._writing.discard(handler)
        address = self._poll_address.pop(handler, None)
        if address is not None:
            left = self._polls[address] - 1
            if left:
                self._polls[address] = left
            else:
                del self._polls[address]

    def check_comment_room(self, talk: dict | None) -> None:
        """409 when ``talk`` already has the most comments allowed."""
        if talk is not None and self.max_comments and len(talk["comments"]) >= self.max_comments:
            raise HTTPError(409, "this talk already has %s, the most allowed", counted(self.max_comments, "comment"))

    # -- the rate limit itself -------------------------------------------

    def write_wait(self, address: str) -> int:
        """0 if ``address`` may write now, else whole seconds to wait (>= 1)."""
        if not self.write_rate or (not self.limit_local_writes and _is_loopback(address)):
            return 0
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= 10_000:
                self._forget_full_buckets(now)
            bucket = self._buckets[address] = TokenBucket(self.write_burst, now)
        wait = bucket.take(self.write_rate, self.write_burst, now)
        return math.ceil(wait) if wait else 0

    def _forget_full_buckets(self, now: float) -> None:
        # A bucket that has refilled is the same as a new one, so dropping
        # it changes nothing for its address and bounds the memory used.
        refill = self.write_burst / self.write_rate
        self._buckets = {a: b for a, b in self._buckets.items() if now - b.stamp < refill}

    def polls_held(self, address: str) -> int:
        """How many long polls ``address`` has waiting."""
        return self._polls.get(address, 0)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
