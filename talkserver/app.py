"""The route table and make_app(), which builds the Tornado Application.

    GET    /talks                    every talk             TalksHandler
    GET    /talks?changesSince=T     changes after T (waits) TalksHandler
    GET    /talks/{title}            one talk               TalkHandler
    PUT    /talks/{title}            create or replace      TalkHandler
    DELETE /talks/{title}            delete                 TalkHandler
    POST   /talks/{title}/comments   add a comment          CommentsHandler
    GET    /metrics                  Prometheus metrics     MetricsHandler
    GET    /healthz                  ready for traffic?     HealthHandler
    GET    /anything/else            a file from www/       PageHandler

Titles are single URL-encoded path segments (``/`` inside a title travels
as ``%2F``); Tornado decodes the captured group before the handler sees it.
"""

from __future__ import annotations

from pathlib import Path

import tornado.log
import tornado.web

from .auth import Access
from .board import Board
from .handlers import CommentsHandler, HealthHandler, MetricsHandler, PageHandler, TalkHandler, TalksHandler
from .limits import Limits
from .stores import MemoryStore, Store

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
    **settings,
) -> tornado.web.Application:
    """Build the talkserver Application around ``store`` (in memory if None).

    The Application's ``board`` attribute holds the shared state, for tests
    and for code that embeds the server.
    """
    board = Board(store if store is not None else MemoryStore(), poll_timeout)
    requests = board.metrics.counter(
        "talkserver_requests_total", "HTTP requests answered, by status code.", label="code"
    )
    api = {"board": board}
    routes = [
        (r"/talks", TalksHandler, api),
        (r"/talks/([^/]+)/comments", CommentsHandler, api),
        (r"/talks/([^/]+)", TalkHandler, api),
        (r"/metrics", MetricsHandler, api),
        (r"/healthz", HealthHandler, api),
        (r"/(.*)", PageHandler, {"path": static_path or default_static_path(), "default_filename": "index.html"}),
    ]

    def log_request(handler: tornado.web.RequestHandler) -> None:
        status = handler.get_status()
        requests.inc(str(status))
        access_log(status, handler)

    app = tornado.web.Application(
        routes, max_body_size=max_body_size, log_function=log_request, **settings
    )
    app.board = board  # type: ignore[attr-defined]
    # Hardening (talkserver.limits, talkserver.auth): off unless named in settings.
    app.limits = Limits.from_settings(app.settings)  # type: ignore[attr-defined]
    app.access = Access.from_settings(app.settings)  # type: ignore[attr-defined]
    return app


def access_log(status: int, handler: tornado.web.RequestHandler) -> None:
    """One line per request, in Tornado's own access-log format."""
    if status < 400:
        log = tornado.log.access_log.info
    elif status < 500:
        log = tornado.log.access_log.warning
    else:
        log = tornado.log.access_log.error
    log("%d %s %.2fms", status, handler._request_summary(), 1000.0 * handler.request.request_time())
