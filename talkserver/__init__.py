"""talkserver: a real-time skill-sharing server over a long-polling change feed.

Start it with the ``talkserver`` command (see talkserver.cli), or embed it
with ``make_app()``.
"""

from .app import make_app

__all__ = ["make_app"]
__version__ = "0.1.0"
