"""Counts in the server's messages, in English: "1 waiting poll", "2 waiting polls".

Every message that prints a count with its noun says it through
``counted``, so none reads "1 waiting polls".  Nothing here knows the
server; any module may use it.
"""

from __future__ import annotations


def counted(count: float, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun`` for it: ``counted(1, "waiting poll")`` is "1 waiting poll".

    The plural is ``noun`` + "s" unless ``plural`` says otherwise
    (``counted(n, "talk and tombstone", "talks and tombstones")``).  A
    fraction is written shortest (``counted(0.5, "day")`` is "0.5 days").
    """
    shown = f"{count:g}" if isinstance(count, float) else str(count)
    return f"{shown} {noun if count == 1 else plural or noun + 's'}"
