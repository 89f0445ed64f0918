"""The open-files limit: each client the load tester holds is a socket.

The server raises its own limit the same way (talkserver.cli); these few
lines are repeated there on purpose, so that the load tester, a client,
imports nothing from the server it measures.
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
