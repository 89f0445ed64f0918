"""The route table and make_app(), which builds the Tornado Application.

    GET    /talks                    every talk (ETag)      TalksHandler
    GET    /talks?changesSince=T     changes after T (waits) TalksHandler
    GET    /talks  (a stream, a socket) every change, pushed  TalksHandler
    GET    /talks/{title}            one talk               TalkHandler
    PUT    /talks/{title}            create or replace      TalkHandler
    DELETE /talks/{title}            delete                 TalkHandler
    POST   /talks/{title}/comments   add a comment          CommentsHandler
    GET    /metrics                  Prometheus metrics     MetricsHandler
    GET    /healthz                  ready for traffic?     HealthHandler
    *      /talks/anything/else      404 as JSON            NoSuchApiPath
    GET    /anything/else            a file from www/       PageHandler

Titles are single URL-encoded path segments (``/`` inside a title travels
as ``%2F``); Tornado decodes the captured group before the handler sees it.
Before routing, every request passes the checks of guard.py (Host, an
ASCII request target, sizes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import tornado.log
import tornado.web

from talkserver.access.admission import Admission, RequestView
from talkserver.access.auth import Access
from talkserver.access.limits import Limits
from talkserver.follow.board import Board
from talkserver.follow.slowreaders import SlowReaders
from talkserver.follow.transports import Following
from talkserver.operation.metrics import Metrics
from talkserver.stores import MemoryStore, Store
from talkserver.web.handlers import (
    ApiHandler, CommentsHandler, HealthHandler, MetricsHandler, NoSuchApiPath, PageHandler, RefusalHandler,
    TalkHandler, TalksHandler,
)
from talkserver.wire.idle import IdleConnections

if TYPE_CHECKING:
    from talkserver.operation.metrics import Counter

DEFAULT_MAX_BODY_SIZE = 1024 * 1024
# The level of a poll's access-log line when it ends well (TalkApplication.log_line).
POLL_LOG_LEVEL = logging.DEBUG


def default_static_path() -> str:
    """The www/ that ships with talkserver: in a checkout, or installed."""
    package = Path(__file__).resolve().parent.parent  # talkserver/
    for candidate in (package.parent / "www", package / "www"):
        if (candidate / "index.html").is_file():
            return str(candidate)
    return str(package.parent / "www")


def make_app(
    store: Store | None = None,
    *,
    poll_timeout: float = 90.0,
    static_path: str | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    api: str = "changes",
    **settings,
) -> "TalkApplication":
    """Build the talkserver Application around ``store`` (in memory if None).

    ``max_talks`` and ``max_board_bytes`` bound the board
    (talkserver.follow.bounds); like the limits, they are off unless given.

    ``api`` is what a plain ``GET /talks`` answers: ``"changes"`` the
    ``{"serverTime", "talks"}`` object (the book's 2nd edition), ``"etag"``
    the bare array its current edition expects (talkserver.follow.conditional).
    The transports read their own settings (``heartbeat``,
    ``stream_buffer``, ...; follow/transports.py).

    The Application's ``board`` attribute holds the shared state, for tests
    and for code that embeds the server.
    """
    board = Board.from_settings(store if store is not None else MemoryStore(), poll_timeout, settings)
    settings["api"] = api
    api = {"board": board}
    routes = [
        (r"/talks", TalksHandler, api),
        (r"/talks/([^/]+)/comments", CommentsHandler, api),
        (r"/talks/([^/]+)", TalkHandler, api),
        (r"/talks/.*", NoSuchApiPath, api),
        (r"/metrics", MetricsHandler, api),
        (r"/healthz", HealthHandler, api),
        (r"/(.*)", PageHandler, {"path": static_path or default_static_path(), "default_filename": "index.html"}),
    ]
    settings.setdefault("fast_polls", True)
    return TalkApplication(routes, board, max_body_size=max_body_size, **settings)


class TalkApplication(tornado.web.Application):
    """An Application whose requests first meet the transports' front door
    (the fast path of long polls, follow/fastpolls.py), and whose other
    requests pass the admission policy's guard before routing.

    Its services are declared here; handlers and transports reach them as
    ``self.application.<name>``.  The admission rules (``admission``, with
    its ``limits`` and ``access``) and ``slow_readers`` are off unless named
    in the settings (talkserver.access).
    """

    board: Board  # the store, its feed, waiters and slow lane
    following: Following  # the registered transports (follow/transports.py)
    metrics: Metrics  # the board's, what /metrics shows
    admission: Admission  # who may do what: guard, password, origin, limits
    limits: Limits  # the admission's per-address poll cap, write rate, comments per talk
    access: Access  # the admission's passwords, and talk ownership
    slow_readers: SlowReaders  # connections leaving answers unread
    requests: Counter  # answers by status code
    polls: Counter  # polls answered, by transport (not in the access log)
    idle: IdleConnections  # connections waiting for headers (fast path; talkserver.wire.idle)
    draining: bool = False  # set by shutdown.drain: /healthz answers 503

    def __init__(self, routes, board: Board, **settings) -> None:
        super().__init__(routes, **settings)
        self.board = board
        self.idle = IdleConnections()
        self.metrics = board.metrics
        self.following = Following(board, self.settings)
        self.admission = Admission.from_settings(self.settings)
        self.limits = self.admission.limits
        self.access = self.admission.access
        if self.access.protect_talks:
            board.feed.owner_tag = self.access.owner_tag  # talks show their owner's public tag
        self.slow_readers = SlowReaders(self.settings.get("send_timeout"), self.metrics)
        self.requests = self.metrics.counter(
            "talkserver_requests_total", "HTTP requests answered, by status code.", label="code"
        )
        self.polls = self.metrics.counter(
            "talkserver_polls_answered_total",
            "Polls, event streams and sockets that ended with an answer, by transport"
            " (written to the access log only at --logging=debug).",
            label="transport",
        )
        self.metrics.gauge(
            "talkserver_writes_in_flight", "Writes started and not yet answered.",
            lambda: self.limits.writes_in_flight,
        )

    @property
    def fast_path(self) -> bool:
        """Whether every request first meets the transports' front door."""
        return bool(self.settings["fast_polls"]) and not self.transforms

    def start_request(self, server_conn, request_conn):
        delegate = self.following.front_door(self, server_conn, request_conn) if self.fast_path else None
        return delegate or self.route_request(server_conn, request_conn)

    def route_request(self, server_conn, request_conn):
        """Tornado's own delegate for a request: routing, then a handler."""
        return super().start_request(server_conn, request_conn)

    def find_handler(self, request, **kwargs):
        refused = self.admission.before_routing(RequestView.of(request))
        if refused is not None:
            status, message = refused
            return self.get_handler_delegate(request, RefusalHandler, {"status": status, "message": message})
        return super().find_handler(request, **kwargs)

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        """Tornado's hook for every finished request: ``log_answer``."""
        request = handler.request
        transport = handler.following if isinstance(handler, ApiHandler) else None
        self.log_answer(handler.get_status(), request.method, request.uri, request.remote_ip,
                        request.request_time(), transport)

    def log_answer(
        self, status: int, method: str, uri: str, remote_ip: str | None, seconds: float,
        transport: str | None = None,
    ) -> None:
        """Count an answer in /metrics and give it its access-log line,
        in Tornado's own format (``count_answers``, then ``log_line``)."""
        self.count_answers(status, transport)
        self.log_line(status, method, uri, remote_ip, seconds, transport)

    def count_answers(self, status: int, transport: str | None = None, count: int = 1) -> None:
        """Count ``count`` answers with ``status`` in /metrics (polls also by
        ``transport``, the way they followed the board); the fast path
        counts a wake-up's answers at once."""
        self.requests.inc(str(status), count)
        if status < 400 and transport is not None:
            self.polls.inc(transport, count)

    def log_line(
        self, status: int, method: str, uri: str, remote_ip: str | None, seconds: float,
        transport: str | None = None,
    ) -> None:
        """An answer's access-log line, in Tornado's own format.

        A poll (``transport`` names how it followed the board) that ends
        well is logged only at debug level: at the default level one
        change to 10,000 clients would write 10,000 lines of nothing an
        operator needs.  Writes, refusals and errors, and every other
        request, are logged as before.
        """
        if status < 400:
            level = logging.INFO if transport is None else POLL_LOG_LEVEL
        elif status < 500:
            level = logging.WARNING
        else:
            level = logging.ERROR
        tornado.log.access_log.log(level, "%d %s %s (%s) %.2fms", status, method, uri, remote_ip, 1000.0 * seconds)

    def polls_logged(self) -> bool:
        """Whether a poll that ends well gets an access-log line now (``log_line``);
        the fast path asks once per wake-up, not per poll."""
        return tornado.log.access_log.isEnabledFor(POLL_LOG_LEVEL)
