"""The HTTP handlers: parse and check a request, call the board, shape the answer.

The route table in app.py shows which handler serves which path.  Client
errors are raised as ``HTTPError(status, message)`` and answered as
``{"error": message}``; a client can never cause a 500.
"""

from __future__ import annotations

import json
from asyncio import Future
from urllib.parse import urlsplit

from tornado.web import HTTPError, RequestHandler, StaticFileHandler, stream_request_body

from . import wakeup
from .board import Board
from .store import TalkNotFound
from .validation import BadInput, check_title, parse_comment, parse_cursor, parse_talk

JSON_TYPE = "application/json; charset=UTF-8"


class ApiHandler(RequestHandler):
    """What every /talks and /metrics handler shares."""

    board: Board

    def initialize(self, board: Board) -> None:
        self.board = board

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

    def compute_etag(self) -> None:
        # API answers change with every write; hashing each one (thousands
        # per change for long polls) would buy nothing.
        return None

    def prepare(self) -> None:
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            self._check_same_origin()

    def _check_same_origin(self) -> None:
        """Refuse writes that a page of another origin makes a browser send.

        A request without Origin comes from a script or curl and is allowed;
        the book's client sends text/plain bodies, so the content type
        cannot be what tells a cross-site form from our own page.
        """
        origin = self.request.headers.get("Origin")
        if origin is None:
            return
        own = f"{self.request.protocol}://{self.request.host}".lower()
        try:
            parts = urlsplit(origin)
            theirs = f"{parts.scheme}://{parts.netloc}".lower()
        except ValueError:
            theirs = None
        if theirs != own:
            raise HTTPError(403, "writes from another origin (%s) are not allowed", origin)

    def title(self, raw: str) -> str:
        """The talk title from a decoded path segment, checked."""
        try:
            return check_title(raw)
        except BadInput as e:
            raise HTTPError(400, "%s", e) from None

    def send_json(self, body: bytes) -> None:
        """Finish with an already encoded JSON answer."""
        self.set_header("Content-Type", JSON_TYPE)
        head = wakeup.answer_head(self)
        if head is None:
            self.finish(body)
        else:
            wakeup.write_answer(self, head, body)
            wakeup.finish_written(self)

    def write_error(self, status_code: int, **kwargs) -> None:
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(json.dumps({"error": message}))

    def log_exception(self, typ, value, tb) -> None:
        # A client's mistake is not the server's problem: the access log
        # already has its line, so only real failures are logged here.
        if isinstance(value, HTTPError) and value.status_code < 500:
            return
        super().log_exception(typ, value, tb)


@stream_request_body
class BodyHandler(ApiHandler):
    """A write whose body is read in chunks, so an oversized one is refused early."""

    def prepare(self) -> None:
        super().prepare()
        self._chunks: list[bytes] = []
        self._size = 0
        limit = self.settings["max_body_size"]
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HTTPError(413, "the body is larger than %d bytes", limit)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.settings["max_body_size"]:
            self._chunks.append(chunk)

    def body(self) -> bytes:
        """The whole request body, or 413 when it was too large."""
        limit = self.settings["max_body_size"]
        if self._size > limit:
            raise HTTPError(413, "the body is larger than %d bytes", limit)
        return b"".join(self._chunks)


class TalksHandler(ApiHandler):
    """``GET /talks``: every talk, or the changes since a cursor (long poll)."""

    cursor: int
    _wait: Future | None = None
    _head: bytes | None = None

    async def get(self) -> None:
        since = self.get_query_argument("changesSince", None)
        if since is None:
            self.send_json(self.board.feed.everything())
            return
        try:
            self.cursor = parse_cursor(since)
        except BadInput as e:
            raise HTTPError(400, "%s", e) from None
        body = self.board.feed.since(self.cursor)
        if body is not None:
            self.send_json(body)
            return
        self.set_header("Content-Type", JSON_TYPE)
        self._head = wakeup.answer_head(self)
        self._wait = Future()
        self.board.waiters.park(self)
        body = await self._wait
        if body is None:
            return  # the client went away
        if self._head is None:
            self.finish(body)
        else:
            wakeup.finish_written(self)

    def deliver(self, body: bytes) -> None:
        """Answer this parked poll (called by Waiters, for thousands at once).

        The answer's bytes go out now; the rest of finishing the request
        waits until this coroutine resumes, after the whole wake loop (see
        wakeup.py).
        """
        if self._head is not None:
            wakeup.write_answer(self, self._head, body)
        wakeup.later(self._wait, body)

    def on_connection_close(self) -> None:
        if self._wait is not None and not self._wait.done():
            self.board.waiters.forget(self)
            self._wait.set_result(None)


class TalkHandler(BodyHandler):
    """``/talks/{title}``: read, create or replace, delete one talk."""

    def get(self, title: str) -> None:
        talk = self.board.store.get(self.title(title))
        if talk is None:
            raise HTTPError(404, "there is no talk titled %r", title)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(json.dumps(talk, ensure_ascii=False))

    def put(self, title: str) -> None:
        title = self.title(title)
        try:
            presenter, summary = parse_talk(self.body())
        except BadInput as e:
            raise HTTPError(400, "%s", e) from None
        self.board.put(title, presenter, summary)
        self.set_status(204)

    def delete(self, title: str) -> None:
        self.board.delete(self.title(title))
        self.set_status(204)


class CommentsHandler(BodyHandler):
    """``POST /talks/{title}/comments``: add a comment to a talk."""

    def post(self, title: str) -> None:
        title = self.title(title)
        try:
            author, message = parse_comment(self.body())
        except BadInput as e:
            raise HTTPError(400, "%s", e) from None
        try:
            self.board.add_comment(title, author, message)
        except TalkNotFound:
            raise HTTPError(404, "there is no talk titled %r", title) from None
        self.set_status(204)


class MetricsHandler(ApiHandler):
    """``GET /metrics``: counters and gauges in the Prometheus text format."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.board.metrics.render())


class PageHandler(StaticFileHandler):
    """The browser client's files from www/; ``/`` is index.html."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")

    def set_extra_headers(self, path: str) -> None:
        # Revalidate every time (cheap, thanks to ETag / 304), so a new
        # release reaches browsers at once.
        self.set_header("Cache-Control", "no-cache")
