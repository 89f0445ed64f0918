"""Refusal: how every access rule says no, whichever path asked it."""

from __future__ import annotations


class Refusal(Exception):
    """A request refused by a rule: its status, a message for the client,
    and headers the answer must carry (Retry-After, WWW-Authenticate).

    The HTTP edge answers it as ``{"error": message}`` (web/handlers.py).
    """

    def __init__(self, status: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = {name.replace("_", "-"): value for name, value in headers.items()}
