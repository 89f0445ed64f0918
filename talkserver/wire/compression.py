"""Gzip for board answers: who accepts it, how it is made, how it is labelled.

A full board answer can be megabytes of JSON, sent to every page that
opens; compressed it is a half to a third of that.  Tornado's own
``GZipContentEncoding`` transform would compress it again for every
request; here talkserver.follow.feed compresses each answer once per state
(``Feed.gzipped``) and every client that accepts gzip shares the bytes,
on the handlers' path and on the fast path alike.

Answers under ``GZIP_MIN`` bytes are sent as they are: the empty answers
and small diffs that most polls get would gain a few bytes for the CPU.
Answers at or over it carry ``Vary: Accept-Encoding`` whether compressed
or not, since which one a client gets depends on that header.

Nothing here knows Tornado's handlers: header blocks are bytes, as
talkserver.follow.wakeup renders them.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

GZIP_MIN = 1024
# Level 1: it runs on the event loop, once per state.  A full board of
# 20 MB takes 0.2 s and comes out 25 % larger than at zlib's default level
# 6, which takes five times as long (docs/benchmarks.md).
LEVEL = 1

_VARY = b"Vary: Accept-Encoding\r\n"
_GZIP = b"Content-Encoding: gzip\r\n"
# Header blocks with the lines above, by (block, gzip): few distinct blocks
# exist at once, and woken polls then share them (and their framed answers).
_blocks: dict[tuple[bytes, bool], bytes] = {}
_MAX_BLOCKS = 256


# Clients send few distinct values: each is read once.
@lru_cache(maxsize=256)
def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value (RFC 9110) accepts gzip: ``gzip``,
    ``x-gzip`` or ``*`` listed without ``q=0``, and gzip not refused by name."""
    value = (accept_encoding or "").lower()
    if "gzip" not in value and "*" not in value:
        return False
    named = star = None
    for item in value.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip()
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        accepted = _weight(params) > 0
        if coding == "*":
            star = accepted
        else:
            named = accepted if named is None else named or accepted
    return named if named is not None else bool(star)


def _weight(params: str) -> float:
    """The q value among ``params`` (1 when absent; 0 when unreadable, to be safe)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0


def compress(body: bytes) -> bytes:
    """``body`` as a gzip stream (no file name, mtime 0: the same bytes every time)."""
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(body) + packer.flush()


def labelled(block: bytes, gzip: bool) -> bytes:
    """A header block (status line and headers, without Content-Length) for
    an answer of at least GZIP_MIN bytes: with ``Vary``, and
    ``Content-Encoding: gzip`` when ``gzip``."""
    key = (block, gzip)
    found = _blocks.get(key)
    if found is None:
        if len(_blocks) >= _MAX_BLOCKS:
            _blocks.clear()
        found = _blocks[key] = block + _VARY + (_GZIP if gzip else b"")
    return found
