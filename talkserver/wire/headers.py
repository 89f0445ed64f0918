"""The headers every API answer carries, in one place below both HTTP paths.

The handlers (web/handlers.py) set them through Tornado; the fast path
(follow/fastpolls.py) sends a poll's 200 as a header block rendered here
once a second, the same lines in the same order, so the two paths cannot
drift apart (tests/test_fastpolls.py compares them byte for byte).
"""

from __future__ import annotations

import time
from email.utils import formatdate

import tornado

JSON_TYPE = "application/json; charset=UTF-8"
API_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)
SERVER = f"TornadoServer/{tornado.version}"

# Only the Date changes, so the block is rendered once a second and shared.
_head_second = -1
_head = b""


def poll_answer_head() -> bytes:
    """The status line and headers of a poll's 200 answer as ``ApiHandler``
    sends them, without Content-Length."""
    global _head_second, _head
    now = int(time.time())
    if now != _head_second:
        # As Tornado writes it (never the locale's day and month names).
        lines = ["HTTP/1.1 200 OK", f"Server: {SERVER}", f"Content-Type: {JSON_TYPE}",
                 f"Date: {formatdate(now, usegmt=True)}"]
        lines += [f"{name}: {value}" for name, value in API_HEADERS]
        _head = ("\r\n".join(lines) + "\r\n").encode("latin1")
        _head_second = now
    return _head
