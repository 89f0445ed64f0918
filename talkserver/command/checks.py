"""The checks of the ``talkserver`` command's option values (talkserver.command.options).

Each check takes a value of the option's type and returns what is wrong
with it, in a few words, or None; options.py adds where the value came
from.  ``out_of_bounds`` applies to every number, whatever the option: it
must be finite (no ``inf`` or ``nan``), and a whole number must fit in 64
bits (what the stores keep).  Durations have a floor and a ceiling
(``SECONDS_RANGE``), so a timer can neither spin nor overflow the event
loop's clock, and ``--retention`` at most ``MAX_RETENTION_DAYS``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

from talkserver.access.guard import parse_allowed_hosts
from talkserver.command.dburl import url_problem
from talkserver.stores import registry

Check = Callable[[Any], "str | None"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# The largest whole number an option takes: what SQLite and PostgreSQL store.
MAX_WHOLE = 2**63 - 1
# (floor, ceiling) of each option in seconds; 0 may also mean "off" where
# its help says so.  Below the floor a timer would fire all the time
# (a heartbeat every nanosecond to every stream), above the ceiling it
# would never fire or overflow the event loop's clock.
SECONDS_RANGE = {
    "poll_timeout": (0.1, 86_400.0),
    "db_timeout": (0.1, 86_400.0),
    "idle_timeout": (0.5, 86_400.0),
    "send_timeout": (0.5, 86_400.0),
    "heartbeat": (0.5, 86_400.0),
}
MAX_RETENTION_DAYS = 36_500  # a hundred years: the tombstones' cut-off stays a representable time


def out_of_bounds(value: Any) -> str | None:
    """What every number must be: finite, and whole numbers within 64 bits."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_WHOLE:
        return f"too large: at most {MAX_WHOLE}"
    return None


def seconds(name: str, off: str = "") -> Check:
    """A check of a duration in seconds within ``SECONDS_RANGE[name]`` (``off``: what 0 means, if anything)."""
    low, high = SECONDS_RANGE[name]

    def check(value: float) -> str | None:
        if off and value == 0:
            return None
        if low <= value <= high:
            return None
        return f"use {low:g} to {high:g} seconds" + (f" (0: {off})" if off else "")

    return check


def check_retention(days: float) -> str | None:
    """Days to keep tombstones: more than 0, at most ``MAX_RETENTION_DAYS``."""
    if 0 < days <= MAX_RETENTION_DAYS:
        return None
    return f"must be a positive number of days, at most {MAX_RETENTION_DAYS}"


def one_of(choices: tuple[str, ...]) -> Check:
    """A check that the value is one of ``choices``."""
    return lambda value: None if value in choices else f"use one of {', '.join(choices)}"


def at_least(low: float, meaning: str = "") -> Check:
    """A check that the value is ``low`` or more (``meaning`` says what the lowest one means)."""
    return lambda value: None if value >= low else f"must be {low} or more{meaning}"


def above_zero(value: float) -> str | None:
    """A check for sizes and timeouts, where 0 would mean nothing works."""
    return None if value > 0 else "must be more than 0"


def check_port(port: int) -> str | None:
    """A TCP port, or 0 for any free one (Tornado would wrap a larger number silently)."""
    if 0 <= port <= 65535:
        return None
    return "not a TCP port: use 1 to 65535 (or 0 for any free port)"


def check_db(db: str) -> str | None:
    """A value some store of talkserver.stores.registry takes (any other scheme is refused by name),
    and, when it is a URL, one that can be read (talkserver.command.dburl)."""
    problem = registry.check(db)
    if problem is None and _SCHEME.match(db):
        problem = url_problem(db)
    return problem


def check_static_path(path: str) -> str | None:
    """The page's directory must exist, or every page request would be a 404."""
    return None if os.path.isdir(path) else "no such directory"


def check_allowed_hosts(text: str) -> str | None:
    """At least one name: an empty list would refuse every request."""
    return None if parse_allowed_hosts(text) else "name at least one host ('*' for any)"


def non_empty(text: str) -> str | None:
    """Text that is not empty: an empty value would quietly turn the option off."""
    return None if text.strip() else "must not be empty"
