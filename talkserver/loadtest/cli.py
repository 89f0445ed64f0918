"""``talkserver-load``: the command line, and running what it asks for.

    talkserver-load --url http://127.0.0.1:8000 --clients 1000 --writers 2 \\
        --duration 10 [--rate R] [--transport sse] [--json out.json] [--plot out.png]

This module reads the options into a ``Plan`` (every mistake found before
the run: one line on stderr, exit 2), runs it (run.py: connect, write,
drain; crowd.py: the clients) on the chosen event loop, and prints the
verdict (report.py), writing the JSON and the plot (plot.py) if asked.

``--spaced SECONDS`` is the fan-out benchmark: one writer, one change at a
time, each sent SECONDS after every client is waiting again, so that each
figure is the time one change takes to reach all clients.  ``--interval
SECONDS`` is the same with changes at fixed times by the clock, as real
changes come, whether or not the server has taken the clients' new polls
back.  ``--pid`` reads the server's memory before the clients connect, once
they all wait, and every second of the run.  ``--churn SECONDS`` makes each
client hang up and reconnect about that often, as browsers come and go.
``--host-header`` sends another ``Host`` than the URL's, for a server behind
a proxy; a refusal is reported with the server's own reason.

The exit status is 0 for a clean run, 1 when anything was lost, duplicated
or failed, 2 for bad arguments or a server that cannot be reached, and 130
when interrupted.  See docs/loadtest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from urllib.parse import urlsplit

from talkserver.loadtest.credentials import PASSWORD_VARIABLE, CredentialsError, basic, check_user, read_password, shown_url
from talkserver.loadtest.crowd import CLIENTS, Crowd
from talkserver.loadtest.plot import plot
from talkserver.loadtest.report import clean, plot_title, results, summary
from talkserver.loadtest.run import Plan, Run, Unreachable, run_on_loop
from talkserver.loadtest.tally import last_client_ms
from talkserver.loadtest.workers import Workers
from talkserver.operation.openfiles import raise_open_files_limit

# File descriptors the tool needs beside one per connection.
SPARE_FILES = 64


# -- the command line ------------------------------------------------------


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake told in one line (exit 2) rather than after the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parse_plan(argv: list[str] | None = None) -> Plan:
    """The run described by ``argv``; exits with status 2 and a message if it is wrong."""
    parser = _Parser(
        prog="talkserver-load",
        description="Drive a talk server with long-polling clients and writers; "
        "report fan-out latency and lost, duplicated or failed deliveries.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument("--user", metavar="NAME",
                        help="the name for a password-protected server (HTTP Basic); the password comes from "
                        f"--password-file, ${PASSWORD_VARIABLE} or a prompt, never from the command line")
    parser.add_argument("--password-file", metavar="FILE",
                        help="a file whose first line is --user's password (the plain password, not talkserver's hashed file)")
    parser.add_argument("--host-header", metavar="HOST",
                        help="the Host header to send, for a proxy that routes or checks by name (default: the URL's host:port)")
    parser.add_argument("--clients", type=_positive(int), default=100, help="long-polling clients (default %(default)s)")
    parser.add_argument("--transport", choices=tuple(CLIENTS), default="poll",
                        help="how clients follow the board: long polls, server-sent event streams, "
                        "or WebSockets (default %(default)s)")
    parser.add_argument("--writers", type=_count, default=1, help="writers making changes (default %(default)s)")
    parser.add_argument("--duration", type=_positive(float), default=10.0, help="seconds of writing (default %(default)s)")
    parser.add_argument("--rate", type=_positive(float), help="changes per second, all writers together (default: as fast as answered)")
    parser.add_argument("--spaced", type=_positive(float), metavar="SECONDS",
                        help="fan-out benchmark: one change at a time, sent SECONDS after every client waits again")
    parser.add_argument("--interval", type=_positive(float), metavar="SECONDS",
                        help="fan-out at a steady rate: one writer, one change every SECONDS by the clock")
    parser.add_argument("--churn", type=_positive(float), metavar="SECONDS",
                        help="each client hangs up and reconnects (same cursor) about every SECONDS, at random")
    parser.add_argument("--drain", type=_positive(float), default=10.0,
                        help="seconds to wait after writing for clients to catch up (default %(default)s)")
    parser.add_argument("--pid", type=_positive(int), help="the server's process id: report its memory per waiting client, its CPU while writing, and its RSS once a second")
    parser.add_argument("--clients-per-address", type=_count, default=100, metavar="N",
                        help="on a loopback URL, spread clients over 127.0.0.0/8 source addresses, N each, "
                        "and give each writer its own (0: all from one address; default %(default)s)")
    parser.add_argument("--workers", type=_positive(int), default=1, metavar="N",
                        help="hold the clients in N processes (each its share of the clients and source addresses), "
                        "for more clients than one process's open-files limit or one core allows; one verdict (default 1)")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="the client's event loop; auto takes uvloop when installed (extra 'fast')")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument("--plot", dest="plot_path", metavar="FILE", help="draw the fan-out latency distribution as PNG (extra 'plot')")
    args = parser.parse_args(argv)

    url = urlsplit(args.url)
    shown = shown_url(args.url)  # never the password, in any message
    try:
        port = url.port or 80
    except ValueError:
        parser.error(f"--url {shown}: the port is not a number")
    if url.scheme != "http" or not url.hostname:
        parser.error(f"--url {shown}: give an http:// URL such as http://127.0.0.1:8000")
    if url.path not in ("", "/") or url.query:
        parser.error(f"--url {shown}: give the server's root, without a path")
    if url.password is not None:
        parser.error(f"--url {shown}: do not put the password in the URL (other users see the command line); "
                     f"give --user with --password-file FILE or ${PASSWORD_VARIABLE}")
    user = args.user
    if url.username:
        if user is not None and user != url.username:
            parser.error(f"--user {user} and the URL's user {url.username} differ: give one")
        user = url.username
    if args.password_file is not None and user is None:
        parser.error("--password-file needs --user NAME")
    if args.host_header is not None and not re.fullmatch(r"[!-~]+", args.host_header):
        parser.error(f"--host-header {args.host_header!r}: give a host name such as talks.example.org (ASCII, no spaces)")
    if args.spaced and args.writers != 1:
        parser.error("--spaced measures one change at a time: use it with --writers 1")
    if args.spaced and args.rate:
        parser.error("--spaced and --rate do not go together: --spaced sets the pace")
    if args.interval and args.writers != 1:
        parser.error("--interval makes one change at a time: use it with --writers 1")
    if args.interval and (args.rate or args.spaced):
        parser.error("--interval sets the pace: do not combine it with --rate or --spaced")
    if args.workers > args.clients:
        parser.error(f"--workers {args.workers}: more workers than --clients {args.clients}")
    # Each worker holds its share of the clients; the writers stay with the first process.
    per_process = -(-args.clients // args.workers)
    needed = per_process + args.writers + SPARE_FILES
    limit = raise_open_files_limit()
    if needed > limit:
        parser.error(
            f"--clients {args.clients} needs {needed} open files, more than the limit {limit}"
            + (f" of each of --workers {args.workers}" if args.workers > 1 else "")
            + ": use more --workers, or raise the hard limit (ulimit -Hn, as root)"
        )
    if args.pid and not os.path.exists(f"/proc/{args.pid}/status"):
        parser.error(f"--pid {args.pid}: no such process")
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("--loop uvloop needs uvloop: pip install 'talkserver[fast]'")
    for option, path in (("--json", args.json_path), ("--plot", args.plot_path)):
        # Found out now, not after a run of many minutes.
        if path and not os.path.isdir(os.path.dirname(path) or "."):
            parser.error(f"{option} {path}: the directory {os.path.dirname(path)} does not exist")
    if args.plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'talkserver[plot]'")
    authorization = None
    if user is not None:
        # Last, so a mistake elsewhere is told before the password is asked for.
        try:
            check_user(user)
            authorization = basic(user, read_password(user, args.password_file))
        except CredentialsError as e:
            parser.error(str(e))
    return Plan(
        host=url.hostname, port=port, url=f"http://{url.netloc.rpartition('@')[2]}", clients=args.clients,
        user=user, authorization=authorization, workers=args.workers,
        writers=args.writers, duration=args.duration, rate=args.rate, spaced=args.spaced,
        interval=args.interval, churn=args.churn,
        drain=args.drain, pid=args.pid, json_path=args.json_path, plot_path=args.plot_path,
        loop=args.loop, clients_per_address=args.clients_per_address, transport=args.transport,
        host_header=args.host_header,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver-load`` console script."""
    try:
        plan = parse_plan(argv)
    except KeyboardInterrupt:  # at the password prompt
        print("\ntalkserver-load: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

    async def followers(target, log):
        """The clients: in this process, or in --workers processes."""
        if plan.workers > 1:
            return await Workers.start(plan, log)
        return Crowd(plan.transport, target, log, range(plan.clients))

    run = Run(plan, followers)
    try:
        run.event_loop = run_on_loop(run.go(), plan.loop)
    except Unreachable as e:
        print(f"talkserver-load: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ntalkserver-load: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    result = results(run)
    try:
        print(summary(result), flush=True)
    except BrokenPipeError:
        # Piped into head, say: the reader has what it wanted.  Python's
        # advice: point stdout at /dev/null so the exit's flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    try:
        if plan.json_path:
            with open(plan.json_path, "w") as out:
                json.dump(result, out, indent=2)
                out.write("\n")
        if plan.plot_path:
            last = last_client_ms(run.log, run.outcome["last_receive"])
            plot(run.outcome["latencies_ms"], last, plan.plot_path, plot_title(result))
    except OSError as e:
        # The directory was checked before the run; it may have gone since.
        print(f"talkserver-load: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(0 if clean(result) else 1)
