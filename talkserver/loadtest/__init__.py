"""``talkserver-load``: a load generator that behaves like many browsers.

It is a client of the server, not part of it, and lives apart:

    cli.py       the command line, the phases of a run and the report
    clients.py   raw HTTP/1.1 clients: pollers (browsers) and writers
    tally.py     counts deliveries, losses, duplicates and fan-out latency
"""

from talkserver.loadtest.cli import main

__all__ = ["main"]
