"""Clients that come and go: random hang-ups during a run (``--churn``).

Browsers close tabs, lose their network and come back.  For a server that
means parked polls whose connection ends (it must forget them at once and
keep nothing of them) and new connections that poll with an old cursor (they
must get every change they missed, exactly once).  ``hang_ups`` closes the
connections of randomly chosen clients at a steady average rate; each
client then reconnects as it does after any lost connection, with the
cursor it had, so the run's verdict still counts every change.
"""

from __future__ import annotations

import asyncio
import random

from talkserver.loadtest.clients import Poller

# How often the hang-ups are handed out (seconds): often enough that they
# come spread out rather than in bursts.
TICK = 0.1


async def hang_ups(pollers: list[Poller], every: float, rng: random.Random | None = None) -> None:
    """Until cancelled, hang up each client about once every ``every`` seconds.

    Each tick every connected client hangs up with probability
    ``TICK / every``, so hang-ups follow a Poisson process per client.
    Returns never; the caller cancels it when the churn should stop.
    """
    rng = rng or random.Random()
    chance = min(1.0, TICK / every)
    expected = len(pollers) * chance
    while True:
        await asyncio.sleep(TICK)
        # Sampling a count then that many clients costs little even with
        # 10,000 clients at 10 ticks a second.
        count = _poisson(rng, expected)
        for poller in rng.sample(pollers, min(count, len(pollers))):
            poller.hang_up()


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count with the given mean (mean is small here)."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, mean**0.5)))
    count, product, limit = 0, rng.random(), pow(2.718281828459045, -mean)
    while product > limit:
        count += 1
        product *= rng.random()
    return count
