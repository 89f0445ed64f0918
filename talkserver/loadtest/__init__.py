"""``talkserver-load``: a load generator that behaves like many browsers.

It is a client of the server, not part of it, and lives apart:

    cli.py       the command line: options into a Plan, run it, print the verdict
    run.py       the phases of a run: connect, write, drain; the writers
    crowd.py     the clients one process holds and the tally of what they see
    workers.py   --workers N: crowds in N processes, their outcomes merged
    credentials.py  --user and its password (file, environment, prompt)
    clients.py   raw HTTP/1.1 clients: pollers (browsers) and writers
    streams.py   the event-stream client (--transport sse)
    websocket.py the WebSocket client (--transport websocket)
    churn.py     clients that hang up and come back (--churn)
    tally.py     the change log; deliveries, losses, duplicates, fan-out latency
    report.py    the verdict: the JSON's figures and the summary table
    plot.py      the latencies drawn as a PNG (--plot)
"""

from talkserver.loadtest.cli import main

__all__ = ["main"]
