"""The HTTP handlers: parse and check a request, call the board, shape the answer.

The route table in app.py shows which handler serves which path.  Client
errors are raised as ``HTTPError(status, message)`` and answered as
``{"error": message}``; a client can never cause a 500.
"""

from __future__ import annotations

import errno
import json
from asyncio import Future
from urllib.parse import urlsplit

from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.httputil import responses
from tornado.log import app_log
from tornado.web import HTTPError, RequestHandler, StaticFileHandler, stream_request_body

from talkserver.follow import lifecycle, streams, wakeup
from talkserver.follow.board import Board
from talkserver.follow.bounds import BoardFull
from talkserver.wire import tornado_private
from talkserver.access.auth import NOT_THE_OWNER
from talkserver.stores import NotTheOwner, PostgresStore, StoreWriteFailed, WriteOutcomeUnknown
from talkserver.stores import TalkNotFound
from talkserver.wire.validation import BadInput, check_title, parse_comment, parse_cursor, parse_talk

JSON_TYPE = "application/json; charset=UTF-8"
# Every API answer carries these (fastpolls.py renders the same block).
API_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normal_origin(url: str) -> tuple | None:
    """(scheme, host, port) of an origin, with the scheme's default port filled in."""
    try:
        parts = urlsplit(url.lower())
        return parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None


def allow_methods(handler: RequestHandler) -> None:
    """Name the methods ``handler`` answers in ``Allow`` (a 405 must, says RFC 9110)."""
    cls = type(handler)
    allowed = [m for m in cls.SUPPORTED_METHODS if getattr(cls, m.lower()) is not getattr(RequestHandler, m.lower())]
    handler.set_header("Allow", ", ".join(allowed))


class ApiHandler(RequestHandler):
    """What every /talks and /metrics handler shares."""

    board: Board

    def initialize(self, board: Board) -> None:
        self.board = board

    def set_default_headers(self) -> None:
        for name, value in API_HEADERS:
            self.set_header(name, value)

    def compute_etag(self) -> None:
        # API answers change with every write; hashing each one (thousands
        # per change for long polls) would buy nothing.
        return None

    async def prepare(self) -> None:
        await self.application.access.check_password(self)
        self.application.limits.check_request(self)
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            self._check_same_origin()

    def on_finish(self) -> None:
        lifecycle.release(self.application, self, self.request.connection.stream)

    def _check_same_origin(self) -> None:
        """Refuse writes that a page of another origin makes a browser send.

        A request without Origin comes from a script or curl and is allowed;
        the book's client sends text/plain bodies, so the content type
        cannot be what tells a cross-site form from our own page.
        """
        origin = self.request.headers.get("Origin")
        if origin is None:
            return
        if _normal_origin(origin) != _normal_origin(f"{self.request.protocol}://{self.request.host}"):
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
            self.finish_with(body)
        else:
            wakeup.write_answer(self, head, body)
            wakeup.finish_written(self)

    def send_board(self, body: bytes) -> None:
        """Finish with one of the Feed's answers, gzip-compressed (once per
        state) when the client accepts it and it is large."""
        self.send_json(wakeup.encode_for(self, self.board.feed, body))

    def finish_with(self, body: bytes) -> None:
        """finish(body) the Tornado way, without copying a large body.

        Tornado sends the headers and a first chunk as one joined copy;
        sent apart, the body is queued as a view of the shared bytes.
        """
        if len(body) > wakeup.LARGE_BODY and not self.application.transforms:
            self.set_header("Content-Length", len(body))
            self.flush()
        self.finish(body)

    def write_error(self, status_code: int, **kwargs) -> None:
        if status_code == 405:
            allow_methods(self)
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = (exc.reason if isinstance(exc, HTTPError) else None) or responses.get(status_code, "Unknown")
        if isinstance(exc, HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif isinstance(exc, StoreWriteFailed):
            # The server's trouble (disk full, read-only), not the client's:
            # nothing was changed and the same write may succeed later.
            self.set_status(503)
            message = f"the change could not be saved: {exc}"
        elif isinstance(exc, WriteOutcomeUnknown):
            # Not 503: that would say "not saved", and it may have been.
            self.set_status(504)
            message = f"the change may or may not have been saved: {exc}; reload the talks to see whether it was"
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(json.dumps({"error": message}))

    def log_exception(self, typ, value, tb) -> None:
        # A client's mistake or departure is not the server's problem: the
        # access log already has its line, so only real failures are logged.
        if isinstance(value, HTTPError) and value.status_code < 500:
            return
        if isinstance(value, StreamClosedError):
            return
        if isinstance(value, StoreWriteFailed):
            # Known trouble with a known cause (the store says which): one line.
            request = self.request
            app_log.warning("%s %s (%s): the change could not be saved: %s",
                            request.method, request.uri, request.remote_ip, value)
            return
        if isinstance(value, WriteOutcomeUnknown):
            request = self.request
            app_log.warning("%s %s (%s): the change may or may not have been saved: %s",
                            request.method, request.uri, request.remote_ip, value)
            return
        super().log_exception(typ, value, tb)


@stream_request_body
class BodyHandler(ApiHandler):
    """A write whose body is read in chunks, so an oversized one is refused early."""

    _client_gone = False
    _too_large = False  # answered 413 already

    async def prepare(self) -> None:
        await super().prepare()
        if self._client_gone:
            # It left while its password was being checked: nothing follows.
            self.application.limits.release(self)
            return
        self._chunks: list[bytes] = []
        self._size = 0
        limit = self.settings["max_body_size"]
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise HTTPError(413, "the body is larger than %d bytes", limit)

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        limit = self.settings["max_body_size"]
        if self._size <= limit:
            self._chunks.append(chunk)
        elif not self._too_large:
            self._too_large = True
            # A chunked body has no Content-Length to check up front: answer
            # as soon as it crosses the limit; Tornado then closes the
            # connection instead of reading the rest.
            self._chunks = []
            error = HTTPError(413, "the body is larger than %d bytes", limit)
            self.send_error(413, exc_info=(HTTPError, error, None))

    def body(self) -> bytes:
        """The whole request body."""
        return b"".join(self._chunks)

    def on_connection_close(self) -> None:
        # The client left before its body was complete: Tornado ends the
        # request without finish(), so on_finish never gives back what it
        # held (it would stay "in flight", and a drain would wait for it).
        super().on_connection_close()
        self._client_gone = True
        self._chunks = []
        self.application.limits.release(self)
        # Tornado raises the departure in its own coroutine, just scheduled
        # to run; the cycles to break are there once it has.
        IOLoop.current().add_callback(self._forget_cycles)

    def _forget_cycles(self) -> None:
        """Break what ties a handler that never finishes into cycles, so
        that reference counting frees it (about 8 kB per aborted upload)."""
        tornado_private.drop_body_error(self.request)
        # What finish() does for every other handler: its ``ui`` namespace
        # refers back to it.
        self.ui = None  # type: ignore[assignment]


class TalksHandler(ApiHandler):
    """``GET /talks``: every talk, or the changes since a cursor (long poll),
    or an event stream of them (streams.py).

    Without ``changesSince`` it is a conditional request (ETag,
    If-None-Match, ``Prefer: wait``), answered by talkserver.follow.conditional.
    """

    cursor: int
    _wait: Future | None = None
    _head: bytes | None = None
    _lane = None  # where a poll waits: the board's Waiters, or its SlowLane past the cap
    _conditional = None  # a parked conditional.ConditionalPoll
    event_stream: streams.EventStream | None = None
    # How this request follows the board ("long_poll", "conditional",
    # "stream"), None for a plain read: polls are counted, not logged.
    following: str | None = None

    async def get(self) -> None:
        head_only = self.request.method == "HEAD"
        transport = lifecycle.transport(self.request)
        # A HEAD, or a GET /talks without a tag to match, follows nothing.
        if not head_only and (transport != lifecycle.CONDITIONAL or "If-None-Match" in self.request.headers):
            self.following = transport
        if transport == lifecycle.STREAM:
            await streams.follow(self, self.board.streams)
        elif transport == lifecycle.CONDITIONAL:
            await self.application.conditional.answer(self)
        else:
            await self._long_poll(head_only)

    async def _long_poll(self, head_only: bool) -> None:
        """``GET /talks?changesSince=T``: the changes after T, at once or
        after a wait (the transport's own part of the lifecycle)."""
        # strip=False: the grammar is digits only, padding included.
        try:
            self.cursor = parse_cursor(self.get_query_argument("changesSince", strip=False))
        except BadInput as e:
            raise HTTPError(400, "%s", e) from None
        # HEAD never waits (see head()), so it holds no poll slot.
        lane = None if head_only else lifecycle.admit(self)
        if self.cursor > self.board.store.head:
            await self._catch_up()
        body = self.board.feed.since(self.cursor)
        if body is None and head_only:
            body = self.board.feed.timeout_answer()
        if body is not None:
            self.send_board(body)
            return
        self.set_header("Content-Type", JSON_TYPE)
        self._head = wakeup.answer_head(self)
        self._wait = Future()
        self._lane = lane
        if not lifecycle.park(lane, self, self.request.connection.stream):
            return  # the client left while its password or cursor was checked
        body = await self._wait
        if body is None:
            return  # the client went away
        if self._head is None:
            self.finish_with(wakeup.encode_for(self, self.board.feed, body))
        else:
            wakeup.finish_written(self)

    async def head(self) -> None:
        """``HEAD /talks``: GET's status and headers, at once.

        A HEAD is answered with what GET would answer now and never waits:
        a poll with nothing new gets the headers of the empty answer, a
        conditional request those of its 200 or 304 as if it had not asked
        to wait, an event stream its headers alone.
        """
        await self.get()

    async def _catch_up(self) -> None:
        """A cursor ahead of this process may come from another that applied more: catch up first."""
        try:
            await self.board.caught_up()
        except StoreWriteFailed as e:
            raise HTTPError(503, "cannot check this cursor against the database now (%s); try again", e) from None

    def deliver(self, body: bytes) -> None:
        """Answer this parked poll (called by Waiters, for thousands at once).

        The answer's bytes go out now; the rest of finishing the request
        waits until this coroutine resumes, after the whole wake loop (see
        wakeup.py).
        """
        if self._head is not None:
            wakeup.write_answer(self, *wakeup.encoded(self.board.feed, self._head, body, wakeup.accepts(self)))
        wakeup.later(self._wait, body)

    def on_connection_close(self) -> None:
        if self._conditional is not None:
            self._conditional.cancel()
        if self.event_stream is not None:
            self.event_stream.end()
        if self._wait is not None and not self._wait.done():
            self._lane.forget(self)
            self._wait.set_result(None)


class TalkHandler(BodyHandler):
    """``/talks/{title}``: read, create or replace, delete one talk."""

    def get(self, title: str) -> None:
        talk = self.board.store.get(self.title(title))
        if talk is None:
            raise HTTPError(404, "there is no talk titled %r", title)
        talk = self.board.feed.shown([talk])[0]  # with its owner's tag, as in /talks
        self.send_json(json.dumps(talk, ensure_ascii=False).encode("utf-8"))

    head = get  # GET's status and headers; Tornado leaves out the body

    async def put(self, title: str) -> None:
        title = self.title(title)
        try:
            presenter, summary = parse_talk(self.body())
        except BadInput as e:
            raise HTTPError(400, "%s", e) from None
        owner = self.application.access.claim(self, title, self.board.store)
        try:
            await self.board.put(title, presenter, summary, owner)
        except NotTheOwner:
            raise HTTPError(403, NOT_THE_OWNER) from None
        except BoardFull as e:
            raise HTTPError(409, "%s", e) from None
        self.set_status(204)

    async def delete(self, title: str) -> None:
        title = self.title(title)
        me = self.application.access.release(self, title, self.board.store)
        try:
            await self.board.delete(title, me)
        except NotTheOwner:
            raise HTTPError(403, NOT_THE_OWNER) from None
        self.set_status(204)


class CommentsHandler(BodyHandler):
    """``POST /talks/{title}/comments``: add a comment to a talk."""

    async def post(self, title: str) -> None:
        title = self.title(title)
        try:
            author, message = parse_comment(self.body())
        except BadInput as e:
            raise HTTPError(400, "%s", e) from None
        self.application.limits.check_comment_room(self.board.store.get(title))
        try:
            await self.board.add_comment(title, author, message)
        except TalkNotFound:
            raise HTTPError(404, "there is no talk titled %r", title) from None
        except BoardFull as e:
            raise HTTPError(409, "%s", e) from None
        self.set_status(204)


class NoSuchApiPath(ApiHandler):
    """Any method on a /talks/... path that names no resource: 404 as JSON.

    Without it such paths would fall through to the static files, whose
    errors are HTML pages.
    """

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    async def prepare(self) -> None:
        await super().prepare()
        raise HTTPError(404, "no such API path: %s (a title is one URL-encoded path segment)", self.request.path)


class MetricsHandler(ApiHandler):
    """``GET /metrics``: counters and gauges in the Prometheus text format."""

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.board.metrics.render())

    head = get


class HealthHandler(ApiHandler):
    """``GET /healthz``: 200 while this process serves and reaches its store, else 503.

    For load balancers' health checks, so it asks for no password and
    tells nothing but ``{"ok": ...}``, with PostgreSQL whether the database
    answers and which host of --db is primary, and the newest cut in the
    board's history when there was one (stores.history; stamps are public
    anyway).
    """

    def prepare(self) -> None:
        pass

    async def get(self) -> None:
        ok = not self.application.draining and await self.board.reachable()
        self.set_status(200 if ok else 503)
        self.set_header("Content-Type", JSON_TYPE)
        health: dict = {"ok": ok}
        if isinstance(self.board.store, PostgresStore):
            # Which host of a multi-host --db is primary (docs/deploy.md).
            health["database"] = self.board.store.health()
        if self.board.store.cuts.noticed is not None:
            health["historyCut"] = self.board.store.cuts.noticed.describe()
        self.finish(json.dumps(health))

    head = get


# Scripts only from our own files, never inline, and no framing; see
# docs/client.md.  Style *attributes* are allowed because the book's
# original client (servable with --static-path) hides its template with one.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def _out_of_descriptors(error: BaseException | None) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE)


class PageHandler(StaticFileHandler):
    """The browser client's files from www/; ``/`` is index.html."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")

    async def prepare(self) -> None:
        await self.application.access.check_password(self)
        self.application.access.show_owner(self)

    def write_error(self, status_code: int, **kwargs) -> None:
        if status_code == 405:
            allow_methods(self)
        if _out_of_descriptors(kwargs.get("exc_info", (None, None, None))[1]):
            # The server is short of file descriptors (see accept.py): a
            # passing condition, not a fault in the page.
            self.set_status(503)
            self.set_header("Retry-After", "1")
        super().write_error(self.get_status(), **kwargs)

    def log_exception(self, typ, value, tb) -> None:
        if _out_of_descriptors(value):
            app_log.warning("cannot open a page file: %s", value)
            return
        super().log_exception(typ, value, tb)

    def set_extra_headers(self, path: str) -> None:
        # Revalidate every time (cheap, thanks to ETag / 304), so a new
        # release reaches browsers at once.
        self.set_header("Cache-Control", "no-cache")
