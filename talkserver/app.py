"""The route table and make_app(), which builds the Tornado Application.

    GET    /talks                    every talk (ETag)      TalksHandler
    GET    /talks?changesSince=T     changes after T (waits) TalksHandler
    GET    /talks  (text/event-stream) every change, pushed  TalksHandler
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

from pathlib import Path

import tornado.log
import tornado.web

from . import guard
from .follow import fastpolls
from .auth import Access
from .follow.board import Board
from .follow.conditional import ConditionalPolls
from .handlers import CommentsHandler, HealthHandler, MetricsHandler, NoSuchApiPath, PageHandler, TalkHandler, TalksHandler
from .limits import Limits
from .follow.slowlane import DEFAULT_INTERVAL
from .follow.slowreaders import SlowReaders
from .stores import MemoryStore, Store
from .follow.streams import DEFAULT_BUFFER_LIMIT, DEFAULT_HEARTBEAT

DEFAULT_MAX_BODY_SIZE = 1024 * 1024


def default_static_path() -> str:
    """The www/ that ships with talkserver: in a checkout, or installed."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "www", here / "www"):
        if (candidate / "index.html").is_file():
            return str(candidate)
    return str(here.parent / "www")


def make_app(
    store: Store | None = None,
    *,
    poll_timeout: float = 90.0,
    static_path: str | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    api: str = "changes",
    heartbeat: float = DEFAULT_HEARTBEAT,
    stream_buffer: int = DEFAULT_BUFFER_LIMIT,
    **settings,
) -> tornado.web.Application:
    """Build the talkserver Application around ``store`` (in memory if None).

    ``api`` is what a plain ``GET /talks`` answers: ``"changes"`` the
    ``{"serverTime", "talks"}`` object (the book's 2nd edition), ``"etag"``
    the bare array its current edition expects (talkserver.follow.conditional).

    The Application's ``board`` attribute holds the shared state, for tests
    and for code that embeds the server.
    """
    board = Board(
        store if store is not None else MemoryStore(), poll_timeout,
        slow_lane_interval=settings.get("slow_lane_interval", DEFAULT_INTERVAL),
        heartbeat=heartbeat, stream_buffer=stream_buffer,
    )
    conditional = ConditionalPolls(board, api)
    requests = board.metrics.counter(
        "talkserver_requests_total", "HTTP requests answered, by status code.", label="code"
    )
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

    def log_request(handler: tornado.web.RequestHandler) -> None:
        request = handler.request
        app.log_answer(handler.get_status(), request.method, request.uri, request.remote_ip, request.request_time())

    settings.setdefault("fast_polls", True)
    app = TalkApplication(
        routes, max_body_size=max_body_size, log_function=log_request, **settings
    )
    app.requests = requests  # type: ignore[attr-defined]
    app.board = board  # type: ignore[attr-defined]
    app.conditional = conditional  # type: ignore[attr-defined]
    # Hardening (talkserver.limits, talkserver.auth): off unless named in settings.
    app.limits = Limits.from_settings(app.settings)  # type: ignore[attr-defined]
    board.metrics.gauge(
        "talkserver_writes_in_flight", "Writes started and not yet answered.",
        lambda: app.limits.writes_in_flight,
    )
    app.access = Access.from_settings(app.settings)  # type: ignore[attr-defined]
    if app.access.protect_talks:
        board.feed.owner_tag = app.access.owner_tag  # talks show their owner's public tag
    app.slow_readers = SlowReaders(app.settings.get("send_timeout"), board.metrics)  # type: ignore[attr-defined]
    return app


class TalkApplication(tornado.web.Application):
    """An Application whose plain long polls take the fast path of
    fastpolls.py, and whose other requests pass guard.py's checks before
    routing."""

    requests: object  # the requests-by-status counter of /metrics

    def start_request(self, server_conn, request_conn):
        if self.settings["fast_polls"] and not self.transforms:
            return fastpolls.PollDelegate(self, server_conn, request_conn)
        return self.route_request(server_conn, request_conn)

    def route_request(self, server_conn, request_conn):
        """Tornado's own delegate for a request: routing, then a handler."""
        return super().start_request(server_conn, request_conn)

    def find_handler(self, request, **kwargs):
        refused = guard.problem(request, self.settings.get("allowed_hosts"))
        if refused is not None:
            status, message = refused
            return self.get_handler_delegate(
                request, guard.RefusalHandler, {"status": status, "message": message}
            )
        return super().find_handler(request, **kwargs)

    def log_answer(self, status: int, method: str, uri: str, remote_ip: str | None, seconds: float) -> None:
        """Count an answer in /metrics and give it its access-log line,
        in Tornado's own format."""
        self.requests.inc(str(status))
        if status < 400:
            log = tornado.log.access_log.info
        elif status < 500:
            log = tornado.log.access_log.warning
        else:
            log = tornado.log.access_log.error
        log("%d %s %s (%s) %.2fms", status, method, uri, remote_ip, 1000.0 * seconds)
