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
- **Slowed as guesses arrive**: each check for a (name, address) pair
  takes a token of that pair's bucket (a burst of ``GUESS_BURST``, refilled
  at ``GUESS_RATE`` per second) the moment it arrives, and waits until its
  token would have been there: checks sent together are spaced out exactly
  as if each had been sent after the last one's answer.  A right password
  gives its token back, so only wrong ones count.  A check that would wait
  more than ``MAX_GUESS_DELAY`` is refused at once (``TooManyGuesses``, a
  429 with Retry-After) and costs nothing, which bounds the checks a pair
  can have waiting.  Guessing one name is slowed to one try a second, while
  the right password from another address, or any other name, is not
  slowed at all; a guesser behind a shared address (a NAT) only slows down
  the names it guesses.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

WORKERS = 2
PER_ADDRESS = 2
GUESS_RATE, GUESS_BURST = 1.0, 10
MAX_GUESS_DELAY = 10.0
_MAX_PAIRS = 10_000


class TooManyGuesses(Exception):
    """A check refused: that name from that address already has ``MAX_GUESS_DELAY`` of checks waiting."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = math.ceil(retry_after)  # whole seconds, as Retry-After says
        super().__init__(f"try again in {self.retry_after} s")


class PasswordChecks:
    """Verifies passwords off the loop, bounded and throttled as described above.

    ``delayed`` counts the checks that had to wait their turn, ``waiting``
    those waiting now: the server's own account of the slow-down.
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
        # (name, address) -> [tokens, time of the last refill]; tokens below
        # zero are checks that have arrived and wait for their turn.
        self._guesses: dict[tuple[str, str], list[float]] = {}

    async def verify(self, address: str, name: str, password: str, hashed: str | None) -> bool:
        """Whether ``password`` matches ``hashed`` (None: an unknown name, always False).

        Raises TooManyGuesses, before any waiting, when the pair has guessed too much.
        """
        pair = (name, address)
        delay = self._take_turn(pair)
        if delay:
            self.delayed += 1
            self.waiting += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self.waiting -= 1
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
        if matched:
            self._give_back(pair)
        return matched

    def _take_turn(self, pair: tuple[str, str]) -> float:
        """Take the pair's next token now; the seconds until it is due (0: at once)."""
        state = self._guesses.get(pair)
        if state is None:
            if len(self._guesses) >= _MAX_PAIRS:
                self._forget_refilled()
            state = self._guesses[pair] = [float(GUESS_BURST), self.clock()]
        tokens = self._refill(state) - 1
        delay = max(0.0, -tokens / GUESS_RATE)
        if delay > MAX_GUESS_DELAY:
            raise TooManyGuesses(delay - MAX_GUESS_DELAY)
        state[0] = tokens
        return delay

    def _give_back(self, pair: tuple[str, str]) -> None:
        # A right password is not a guess.  (The pair may have been
        # forgotten meanwhile, under a flood of names: nothing to give back.)
        state = self._guesses.get(pair)
        if state is not None:
            state[0] = min(GUESS_BURST, state[0] + 1)

    def _refill(self, state: list[float]) -> float:
        now = self.clock()
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
