"""talkserver: a real-time skill-sharing server over a long-polling change feed.

Start it with the ``talkserver`` command (see talkserver.command.cli), or embed it
with ``make_app()``.
"""

__all__ = ["make_app"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # make_app is imported on first use, not with the package: the load
    # tester (talkserver.loadtest) is a client and must not load the server.
    if name == "make_app":
        from talkserver.web.app import make_app

        return make_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
