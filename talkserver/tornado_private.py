"""Every use of Tornado's private state, in one place, and the check that it is there.

Tornado's public interfaces (``RequestHandler``, ``HTTPMessageDelegate``,
``HTTPConnection.write_headers/write/finish``, ``HTTPServer``) cover
almost everything talkserver does.  What they do not cover, this module
does, each function saying which public behaviour it stands in for and why
the public way was not enough.  Nothing else in talkserver reaches into
Tornado's underscored names, so a Tornado upgrade is checked here.

``check()`` runs at start-up (talkserver.cli): when the installed Tornado
lacks any of what this module uses, the server refuses to start with one
line naming the versions it supports, rather than failing on the first
request.
"""

from __future__ import annotations

from tornado.http1connection import HTTP1Connection


def close_when_finished(connection: HTTP1Connection) -> None:
    """Close the connection once the answer is finished, whatever keep-alive
    the client asked for.

    Public equivalent: an answer with ``Connection: close``; but Tornado
    decides keep-alive from the request alone and overrides the header for
    an HTTP/1.0 client that sent ``Connection: keep-alive``.  An event
    stream over HTTP/1.0 has no chunking and no length, so only the close
    can tell its client that the server ended it.
    """
    connection._disconnect_on_finish = True  # type: ignore[attr-defined]


def drop_body_error(request) -> None:
    """Let a streamed-body request whose client left be freed by reference counting.

    Public behaviour it completes: ``RequestHandler.on_connection_close``,
    which for a ``@stream_request_body`` handler fails the request's body
    future with StreamClosedError.  ``RequestHandler._execute`` awaits that
    future, so the error is raised there and keeps a traceback whose frame
    holds the handler, which holds the request, which holds the future: a
    cycle of about 8 kB per aborted upload that only a full collection
    frees.  Called once ``_execute`` has caught it, this drops the traceback.
    """
    future = request._body_future  # type: ignore[attr-defined]
    if future.done() and future.exception() is not None:
        future.exception().__traceback__ = None
