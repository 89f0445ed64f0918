"""Checking passwords without stalling the server, leaking names or locking anyone out.

A scrypt check costs some tens of milliseconds of CPU.  On the event loop,
ten wrong guesses at once would hold every other client for half a second,
so ``PasswordChecks.verify`` runs them in a small thread pool (hashlib's
scrypt releases the GIL) and the loop goes on serving.

- **Bounded**: ``WORKERS`` threads in all, and at most ``PER_ADDRESS``
  checks of one client address in the pool at a time; the rest of that
  address's checks wait their turn on the loop (a coroutine, no thread), so
  a flood from one address delays that address, not everyone else.
- **Same time for every name**: an unknown name is checked against a dummy
  hash of the same cost, so timing does not tell which names exist.
- **Slowed, never refused**: each wrong password for a (name, address) pair
  spends a token of a bucket (a burst of ``GUESS_BURST``, refilled at
  ``GUESS_RATE`` per second).  With the bucket empty, the next check for
  that pair waits until a token is back (at most ``MAX_GUESS_DELAY``) and
  then runs.  Guessing one name is slowed to about one try a second, while
  the right password, from any address, still gets in; a guesser behind a
  shared address (a NAT) only slows down checks of the names it guesses.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

WORKERS = 2
PER_ADDRESS = 2
GUESS_RATE, GUESS_BURST = 1.0, 10
MAX_GUESS_DELAY = 10.0
_MAX_PAIRS = 10_000


class PasswordChecks:
    """Verifies passwords off the loop, bounded and throttled as described above."""

    def __init__(self, check: Callable[[str, str], bool], make_hash: Callable[[str], str]) -> None:
        self._check = check
        self._make_hash = make_hash
        self._dummy: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="password-check")
        self._turns: dict[str, _Turn] = {}
        # (name, address) -> [tokens, time of the last refill]
        self._guesses: dict[tuple[str, str], list[float]] = {}

    async def verify(self, address: str, name: str, password: str, hashed: str | None) -> bool:
        """Whether ``password`` matches ``hashed`` (None: an unknown name, always False)."""
        pair = (name, address)
        delay = self.delay(pair)
        if delay:
            await asyncio.sleep(delay)
        turn = self._turns.get(address)
        if turn is None:
            turn = self._turns[address] = _Turn()
        turn.users += 1
        try:
            async with turn.semaphore:
                loop = asyncio.get_running_loop()
                matched = await loop.run_in_executor(self._pool, self._matches, password, hashed)
        finally:
            turn.users -= 1
            if not turn.users:  # the last one out forgets the address
                del self._turns[address]
        if not matched:
            self._count_wrong(pair)
        return matched

    def delay(self, pair: tuple[str, str]) -> float:
        """Seconds the next check for (name, address) waits: 0 unless it guessed wrong too often."""
        state = self._guesses.get(pair)
        if state is None:
            return 0.0
        tokens = self._refill(state)
        return 0.0 if tokens >= 1 else min(MAX_GUESS_DELAY, (1 - tokens) / GUESS_RATE)

    def _count_wrong(self, pair: tuple[str, str]) -> None:
        state = self._guesses.get(pair)
        if state is None:
            if len(self._guesses) >= _MAX_PAIRS:
                self._forget_refilled()
            state = self._guesses[pair] = [float(GUESS_BURST), time.monotonic()]
        # Down to one burst below empty: concurrent guesses queue up behind
        # each other, but never for more than MAX_GUESS_DELAY.
        state[0] = max(-GUESS_BURST, self._refill(state) - 1)

    @staticmethod
    def _refill(state: list[float]) -> float:
        now = time.monotonic()
        state[0] = min(GUESS_BURST, state[0] + max(0.0, now - state[1]) * GUESS_RATE)
        state[1] = now
        return state[0]

    def _forget_refilled(self) -> None:
        # A full bucket is the same as none, so dropping it changes nothing.
        self._guesses = {p: s for p, s in self._guesses.items() if self._refill(s) < GUESS_BURST}
        if len(self._guesses) >= _MAX_PAIRS:
            # Guessing at 10,000 pairs at once: the memory bound wins over
            # the slow-down (each guess still costs the guesser a check).
            self._guesses = {}

    def _matches(self, password: str, hashed: str | None) -> bool:
        # In a pool thread.  Two threads may both make the dummy; either will do.
        if hashed is None:
            if self._dummy is None:
                self._dummy = self._make_hash(secrets.token_urlsafe(16))
            self._check(password, self._dummy)
            return False
        return self._check(password, hashed)


class _Turn:
    """The checks of one address: who may be in the pool, and how many are waiting."""

    __slots__ = ("semaphore", "users")

    def __init__(self) -> None:
        self.semaphore = asyncio.Semaphore(PER_ADDRESS)
        self.users = 0
