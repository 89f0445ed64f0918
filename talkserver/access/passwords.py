"""Checking passwords without stalling the server, leaking names or locking anyone out.

A scrypt check costs some tens of milliseconds of CPU.  On the event loop,
ten wrong guesses at once would hold every other client for half a second,
so ``PasswordChecks.verify`` runs them in a small thread pool (hashlib's
scrypt releases the GIL) and the loop goes on serving.

- **Per client**: a client is an IPv4 address, or an IPv6 address's /64
  network (``client_of``): a host given a /64 holds its every address, so
  counting single IPv6 addresses would give it a fresh bucket per request.
- **Bounded**: ``WORKERS`` threads in all, and at most ``PER_CLIENT``
  checks of one client in the pool at a time; the rest of that client's
  checks wait their turn on the loop (a coroutine, no thread), so a flood
  from one client delays that client, not everyone else.
- **Same time for every name**: an unknown name is checked against a dummy
  hash of the same cost, so timing does not tell which names exist.
- **Slowed as guesses arrive**: each check for a (name, client) pair
  takes a token of that pair's bucket (a burst of ``GUESS_BURST``, refilled
  at ``GUESS_RATE`` per second) the moment it arrives, and waits until its
  token would have been there: checks sent together are spaced out exactly
  as if each had been sent after the last one's answer.  A right password
  gives its token back, so only wrong ones count.  A check that would wait
  more than ``MAX_GUESS_DELAY`` is refused at once (``TooManyGuesses``, a
  429 with Retry-After) and costs nothing, which bounds the checks a pair
  can have waiting.  Guessing one name is slowed to one try a second, while
  the right password from another client, or any other name, is not
  slowed at all; a guesser behind a shared address (a NAT) only slows down
  the names it guesses.
- **Memory bounded, nobody's bucket evicted** (``_Buckets``): a full
  bucket is the same as none, so only full ones are ever forgotten.  One
  client has buckets of its own for at most ``NAMES_PER_CLIENT`` names;
  its further names, and every new pair while ``MAX_BUCKETS`` pairs are
  held, share one bucket per client, so spraying names is throttled like
  guessing one.  While ``MAX_BUCKETS`` clients also hold a shared bucket
  that is not full (guessing from that many networks at once), a new
  client's check is refused with 429 instead of forgetting anyone's
  guesses; a client whose password matched before is let in without a
  check (talkserver.access.auth) and never meets this.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

WORKERS = 2
PER_CLIENT = 2
GUESS_RATE, GUESS_BURST = 1.0, 10
MAX_GUESS_DELAY = 10.0
MAX_BUCKETS = 10_000
NAMES_PER_CLIENT = 100
# The least time between two sweeps of full buckets: a sweep reads every
# bucket, so a flood of new names must not cause one per request.
SWEEP_EVERY = 1.0


def client_of(address: str) -> str:
    """What the guess throttle counts as one client: an IPv4 address, or an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # no IP address (a Unix socket): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"
    return str(ip)


class TooManyGuesses(Exception):
    """A check refused before it waits: ``scope`` says whose guesses ran out, ``str()`` when to retry."""

    def __init__(self, retry_after: float, scope: str = "for this name from this address") -> None:
        self.retry_after = max(1, math.ceil(retry_after))  # whole seconds, as Retry-After says
        self.scope = scope
        super().__init__(f"try again in {self.retry_after} s")


class PasswordChecks:
    """Verifies passwords off the loop, bounded and throttled as described above.

    ``delayed`` counts the checks that had to wait their turn, ``waiting``
    those waiting now: the server's own account of the slow-down.
    ``held`` is how many buckets of guesses it keeps.
    """

    def __init__(
        self,
        check: Callable[[str, str], bool],
        make_hash: Callable[[str], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._make_hash = make_hash
        self.clock = clock  # what the buckets refill by
        self.delayed = 0
        self.waiting = 0
        self._dummy: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="password-check")
        self._turns: dict[str, _Turn] = {}
        self._buckets = _Buckets(lambda: self.clock())

    @property
    def held(self) -> int:
        """The buckets of guesses kept now (at most twice ``MAX_BUCKETS``)."""
        return len(self._buckets)

    async def verify(self, address: str, name: str, password: str, hashed: str | None) -> bool:
        """Whether ``password`` matches ``hashed`` (None: an unknown name, always False).

        Raises TooManyGuesses, before any waiting, when the name from that
        client (or the client's shared bucket) has guessed too much.
        """
        client = client_of(address)
        bucket = self._buckets.bucket(name, client)
        delay = bucket.take()
        if delay:
            self.delayed += 1
            self.waiting += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self.waiting -= 1
        turn = self._turns.get(client)
        if turn is None:
            turn = self._turns[client] = _Turn()
        turn.users += 1
        try:
            async with turn.semaphore:
                loop = asyncio.get_running_loop()
                matched = await loop.run_in_executor(self._pool, self._matches, password, hashed)
        finally:
            turn.users -= 1
            if not turn.users:  # the last one out forgets the client
                del self._turns[client]
        if matched:
            bucket.give_back()  # a right password is not a guess
        return matched

    def _matches(self, password: str, hashed: str | None) -> bool:
        # In a pool thread.  Two threads may both make the dummy; either will do.
        if hashed is None:
            if self._dummy is None:
                self._dummy = self._make_hash(secrets.token_urlsafe(16))
            self._check(password, self._dummy)
            return False
        return self._check(password, hashed)


class _Turn:
    """The checks of one client: who may be in the pool, and how many are waiting."""

    __slots__ = ("semaphore", "users")

    def __init__(self) -> None:
        self.semaphore = asyncio.Semaphore(PER_CLIENT)
        self.users = 0


class _Bucket:
    """A token bucket of guesses; tokens below zero are checks that arrived and wait their turn."""

    __slots__ = ("tokens", "refilled", "clock", "scope")

    def __init__(self, clock: Callable[[], float], scope: str) -> None:
        self.tokens, self.refilled, self.clock, self.scope = float(GUESS_BURST), clock(), clock, scope

    def take(self) -> float:
        """Take the next token now; the seconds until it is due (0: at once).

        Raises TooManyGuesses, and takes nothing, past ``MAX_GUESS_DELAY``.
        """
        tokens = self.refill() - 1
        delay = max(0.0, -tokens / GUESS_RATE)
        if delay > MAX_GUESS_DELAY:
            raise TooManyGuesses(delay - MAX_GUESS_DELAY, self.scope)
        self.tokens = tokens
        return delay

    def give_back(self) -> None:
        self.tokens = min(GUESS_BURST, self.tokens + 1)

    def refill(self) -> float:
        now = self.clock()
        self.tokens = min(GUESS_BURST, self.tokens + max(0.0, now - self.refilled) * GUESS_RATE)
        self.refilled = now
        return self.tokens

    def full(self) -> bool:
        return self.refill() >= GUESS_BURST


class _Buckets:
    """Every (name, client) pair's bucket, and one shared bucket per client, within bounds (see above)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._pairs: dict[tuple[str, str], _Bucket] = {}
        self._names: dict[str, int] = {}  # client -> how many pairs it holds
        self._shared: dict[str, _Bucket] = {}
        self._swept = -math.inf

    def bucket(self, name: str, client: str) -> _Bucket:
        """The bucket a guess of ``name`` from ``client`` takes its token from."""
        bucket = self._pairs.get((name, client))
        if bucket is not None:
            return bucket
        if len(self._pairs) >= MAX_BUCKETS or self._names.get(client, 0) >= NAMES_PER_CLIENT:
            self._sweep()
        if len(self._pairs) < MAX_BUCKETS and self._names.get(client, 0) < NAMES_PER_CLIENT:
            bucket = self._pairs[(name, client)] = _Bucket(self._clock, "for this name from this address")
            self._names[client] = self._names.get(client, 0) + 1
            return bucket
        shared = self._shared.get(client)
        if shared is None:
            if len(self._shared) >= MAX_BUCKETS:
                self._sweep()
            if len(self._shared) >= MAX_BUCKETS:
                # Guessing from more networks than the server keeps count of:
                # newcomers wait rather than anyone's count being forgotten.
                raise TooManyGuesses(SWEEP_EVERY + MAX_GUESS_DELAY, "on this server from many addresses at once")
            shared = self._shared[client] = _Bucket(self._clock, "for these names from this address")
        return shared

    def _sweep(self) -> None:
        """Forget the full buckets (a full bucket is the same as none), at most once every ``SWEEP_EVERY``."""
        now = self._clock()
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        self._pairs = {pair: bucket for pair, bucket in self._pairs.items() if not bucket.full()}
        self._names = {}
        for _, client in self._pairs:
            self._names[client] = self._names.get(client, 0) + 1
        self._shared = {client: bucket for client, bucket in self._shared.items() if not bucket.full()}

    def __len__(self) -> int:
        return len(self._pairs) + len(self._shared)
