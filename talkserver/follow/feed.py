"""Answers to ``GET /talks``, encoded to JSON bytes once per state.

Thousands of long polls woken by one change all hold the same cursor, so
they all get the same answer: it is built and encoded once and the bytes are
shared.  The cache is keyed by the store's ``head``, which every change
moves, so a stale answer is never served.

Large answers are also kept gzip-compressed (``gzipped``), made the first
time a client that accepts gzip needs them and dropped with the state like
the rest (talkserver.wire.compression).

With ``--protect-talks`` each talk is shown with its owner's public tag
(``owner_tag``, see talkserver.access.auth): the same for every reader, so the
answers stay shared.
"""

from __future__ import annotations

import json

from typing import Callable

from talkserver.stores import Changes, Store
from talkserver.wire import compression

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_answer(server_time: int, talks: list[dict], reset: bool = False) -> bytes:
    """The JSON body of a ``/talks`` answer."""
    answer: dict = {"serverTime": server_time, "talks": talks}
    if reset:
        answer["reset"] = True
    return _encode(answer).encode("utf-8")


class Feed:
    """Encoded answers for the current state of one store."""

    def __init__(self, store: Store, owner_tag: Callable[[str], str] | None = None) -> None:
        self.store = store
        # owner -> public tag (talkserver.access.auth.Access.owner_tag), or None
        # when talks are not owned (no --protect-talks).
        self.owner_tag = owner_tag
        self._head = None
        self._cache: dict = {}

    def shown(self, talks: list[dict]) -> list[dict]:
        """``talks`` as answers show them: with their owner's tag, when talks are owned."""
        if self.owner_tag is None:
            return talks
        owner, tag = self.store.owner, self.owner_tag
        shown = []
        for talk in talks:
            who = None if talk.get("deleted") else owner(talk["title"])
            shown.append(talk if who is None else dict(talk, owner=tag(who)))
        return shown

    def _fresh(self) -> dict:
        if self._head != self.store.head:
            self._head = self.store.head
            self._cache = {}
        return self._cache

    def everything(self) -> bytes:
        """Every talk, with the current server time."""
        cache = self._fresh()
        body = cache.get(None)
        if body is None:
            body = cache[None] = encode_answer(self.store.head, self.shown(self.store.all_talks()))
        return body

    def talk_array(self) -> bytes:
        """Every talk as a bare JSON array: the ``--api=etag`` answer, whose
        version travels in the ETag header instead of the body."""
        cache = self._fresh()
        body = cache.get("array")
        if body is None:
            body = cache["array"] = _encode(self.shown(self.store.all_talks())).encode("utf-8")
        return body

    def since(self, cursor: int) -> bytes | None:
        """The answer for ``changesSince=cursor``, or None when there is nothing new."""
        cache = self._fresh()
        if cursor in cache:
            return cache[cursor]
        changes: Changes = self.store.changes_since(cursor)
        body = None
        if changes.talks or changes.reset:
            body = encode_answer(changes.server_time, self.shown(changes.talks), changes.reset)
        # Bound the cache: cursors are client-chosen, so one per request
        # could otherwise grow it without limit between two changes.
        if len(cache) < 64:
            cache[cursor] = body
        return body

    def gzipped(self, body: bytes) -> bytes:
        """``body``, an answer of the current state, gzip-compressed: once per
        state and answer, then shared by every client that accepts gzip."""
        cache = self._fresh()
        # Keyed by the answer itself (the bytes object the keys above hold),
        # which the entry keeps alive so that its id is not reused.
        key = ("gzip", id(body))
        found = cache.get(key)
        if found is not None and found[0] is body:
            return found[1]
        packed = compression.compress(body)
        if len(cache) < 128:
            cache[key] = (body, packed)
        return packed

    def timeout_answer(self) -> bytes:
        """The empty answer a poll gets when nothing changed in time."""
        cache = self._fresh()
        body = cache.get("timeout")
        if body is None:
            body = cache["timeout"] = encode_answer(self.store.head, [])
        return body
