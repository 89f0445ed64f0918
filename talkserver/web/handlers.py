"""The HTTP handlers: parse and check a request, call the board, shape the answer.

The route table in app.py shows which handler serves which path.  Client
errors are raised as ``HTTPError(status, message)`` and answered as
``{"error": message}``; a client can never cause a 500.
"""

from __future__ import annotations

import errno
import json

from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.httputil import responses
from tornado.log import app_log
from tornado.web import HTTPError, RequestHandler, StaticFileHandler, stream_request_body

from talkserver.access.admission import Refusal, RequestView
from talkserver.access.auth import NOT_THE_OWNER
from talkserver.follow import lifecycle, wakeup
from talkserver.follow.board import Board
from talkserver.follow.bounds import BoardFull
from talkserver.follow.transport import Transport
from talkserver.wire import tornado_private
from talkserver.wire.headers import API_HEADERS, JSON_TYPE
from talkserver.stores import NotTheOwner, StoreWriteFailed, WriteOutcomeUnknown
from talkserver.stores import TalkNotFound
from talkserver.wire.validation import BadInput, check_title, parse_comment, parse_talk

def answer_refusal(handler: RequestHandler, refusal: Refusal) -> None:
    """Answer an admission rule's no (from ``write_error``, wherever in the
    request it was raised) as ``{"error": message}`` with its headers."""
    handler.set_status(refusal.status)
    for name, value in refusal.headers.items():
        handler.set_header(name, value)
    handler.set_header("Content-Type", JSON_TYPE)
    handler.finish(json.dumps({"error": refusal.message}))


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

    # How this request follows the board (a transport's name), None for
    # anything else: followers are counted, not logged (app.log_request).
    following: str | None = None

    async def prepare(self) -> None:
        # The admission policy: password, write rate, origin (access/admission.py).
        await self.application.admission.admit(RequestView.of(self.request), self)

    def on_finish(self) -> None:
        lifecycle.release(self.application, self, self.request.connection.stream)

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
        if isinstance(exc, Refusal):
            answer_refusal(self, exc)
            return
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
        if isinstance(value, HTTPError) and value.status_code < 500 or isinstance(value, Refusal):
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
            self.application.admission.release(self)
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
        self.application.admission.release(self)
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
    """``GET /talks``: every talk, the changes since a cursor, or a stream of
    them, served by whichever registered transport takes the request
    (follow/transports.py).
    """

    transport: Transport | None = None
    follower: object | None = None  # what the transport parked for this request

    async def get(self) -> None:
        self.transport = self.application.following.pick(self.request)
        await self.transport.follow(self)

    async def head(self) -> None:
        """``HEAD /talks``: GET's status and headers, at once.

        A HEAD is answered with what GET would answer now and never waits
        (each transport sees the method): a poll with nothing new gets the
        headers of the empty answer, a conditional request those of its 200
        or 304 as if it had not asked to wait, a stream its headers alone.
        """
        await self.get()

    def on_connection_close(self) -> None:
        if self.follower is not None:
            self.transport.client_gone(self.follower)


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


class RefusalHandler(RequestHandler):
    """Answers any method with the status and message the guard chose
    (access/guard.py, asked before routing)."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, status: int, message: str) -> None:
        self.status, self.message = status, message

    def prepare(self) -> None:
        self.set_status(self.status)
        for name, value in API_HEADERS:
            self.set_header(name, value)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(json.dumps({"error": self.message}))


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
        database = self.board.store.health()
        if database is not None:
            # A shared store's connection: which host of a multi-host --db
            # is primary (docs/deploy.md).
            health["database"] = database
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
        await self.application.admission.admit(RequestView.of(self.request), self)
        self.application.access.show_owner(self)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Refusal):
            answer_refusal(self, exc)
            return
        if status_code == 405:
            allow_methods(self)
        if _out_of_descriptors(kwargs.get("exc_info", (None, None, None))[1]):
            # The server is short of file descriptors (see accept.py): a
            # passing condition, not a fault in the page.
            self.set_status(503)
            self.set_header("Retry-After", "1")
        super().write_error(self.get_status(), **kwargs)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, Refusal):
            return  # the access log has its line
        if _out_of_descriptors(value):
            app_log.warning("cannot open a page file: %s", value)
            return
        super().log_exception(typ, value, tb)

    def set_extra_headers(self, path: str) -> None:
        # Revalidate every time (cheap, thanks to ETag / 304), so a new
        # release reaches browsers at once.
        self.set_header("Cache-Control", "no-cache")
