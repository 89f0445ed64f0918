"""The open-files limit: every waiting browser, and every client the load tester holds, is a socket.

Shared by the server (talkserver.command.cli) and the load tester
(talkserver.loadtest), so it imports nothing: the load tester, a client,
loads no part of the server it measures by using it.
"""

from __future__ import annotations

import resource


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft
