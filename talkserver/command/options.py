"""The ``talkserver`` command's options: defined, grouped, checked, read from files, shown.

They are Tornado options (``tornado.options.OptionParser``), kept in a
parser of talkserver's own (``options``) beside Tornado's logging options,
so ``--help`` can show them as an operator looks for them: talkserver's own
first, in ``GROUPS``, Tornado's logging options last.

An operator's mistake never starts a server that does something else than
asked, and never ends in a traceback: ``parse()`` raises ``Refused`` with
one line naming the option and what is wrong with it, and the command
exits 2 (talkserver.command.cli).  That covers:

- unknown names, on the command line and in a config file alike (Tornado
  ignores unknown names in a file, so a misspelled ``pasword_file`` would
  start an open server), with the closest valid name;
- values of the wrong type, and values out of range: each option's check
  runs as Tornado's option callback, so a value from a config file is
  checked exactly as one from the command line (the checks, bounds on
  every number and duration included, are in talkserver.command.checks);
- a ``postgresql://`` URL Python's parser cannot read (talkserver.command.dburl);
- words on the command line that are not options;
- booleans other than true/false (Tornado reads any word but
  false/0/f as true, so ``--xheaders=no`` would turn it on);
- a config file that is missing, unreadable, or not valid Python (an
  expression too long or too deeply nested for Python's compiler
  included), and values too large to print or to convert.

Config files (``--config=FILE``) are read first, in the order given, and
the rest of the command line then overrides them.
"""

from __future__ import annotations

import ast
import difflib
import importlib.metadata
import math
import os
import re
import sys
import textwrap
import types
from collections.abc import Callable
from typing import Any, TextIO

from tornado.log import define_logging_options
from tornado.options import Error, OptionParser

from talkserver.command.checks import (
    Check, above_zero, at_least, check_allowed_hosts, check_db, check_port, check_retention, check_static_path,
    non_empty, one_of, out_of_bounds, seconds,
)
from talkserver.operation import collector
from talkserver.access import limits
from talkserver.web.app import DEFAULT_MAX_BODY_SIZE
from talkserver.follow import bounds, streams
from talkserver.follow.conditional import API_MODES
from talkserver.stores import SYNC_MODES, Settings
from talkserver.command.dbwait import DEFAULT_WAIT

PROGRAM = "talkserver"

# (group, heading) in the order --help shows them; Tornado's logging options come last.
GROUPS = {
    "serving": "Serving",
    "storage": "Storage",
    "limits": "Limits (per client address)",
    "access": "Access",
    "following": "Following the board (long polls, event streams)",
    "command": "The command",
}
LOGGING_HEADING = "Logging (Tornado's options)"

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
LOG_LEVELS = ("debug", "info", "warning", "error", "none")
LOG_ROTATE_MODES = ("size", "time")
_LOG_ROTATE_WHEN = re.compile(r"(?i)^(s|m|h|d|midnight|w[0-6])$")
# Up to the last @: a password may hold unencoded / or @ by mistake.
_PASSWORD = re.compile(r"(://[^/:@\s]*:)\S*@")
# How much of a value a refusal repeats.
_SHOWN_CHARACTERS = 80


class Refused(Exception):
    """The command cannot run as asked; ``str()`` is the one line that says why."""


class _BadValue(Exception):
    """A check's verdict on one value; the caller adds where the value came from."""


class TalkOptions(OptionParser):
    """Tornado's OptionParser, with talkserver's grouping in ``--help``."""

    def print_help(self, file: TextIO | None = None) -> None:
        """Print the options, talkserver's own by group, then Tornado's logging options."""
        file = sys.stdout if file is None else file
        by_group: dict[str, list] = {group: [] for group in [*GROUPS, ""]}
        for option in self._options.values():
            group = option.group_name if option.group_name in GROUPS else "command" if option.name == "help" else ""
            by_group[group].append(option)
        print(f"Usage: {PROGRAM} [--option=value ...]   (or in a --config file: option = value)", file=file)
        for group, members in by_group.items():
            print(f"\n{GROUPS.get(group, LOGGING_HEADING)}:", file=file)
            for option in members:
                _print_option(option, file)

    def option(self, name: str):
        """The tornado option called ``name`` (dashes or underscores)."""
        return self._options[self._normalize_name(name)]


def _print_option(option, file: TextIO) -> None:
    name = option.name.replace("_", "-")
    if option.type is not bool:
        name += "=" + (option.metavar or option.type.__name__.upper())
    text = option.help or ""
    if option.default is not None and option.default != "":
        default = str(option.default).lower() if option.type is bool else option.default
        text += f" (default: {default})"
    lines = textwrap.wrap(text, 79 - 32) or [""]
    if len(name) > 27:
        lines.insert(0, "")
    print(f"  --{name:<27} {lines[0]}".rstrip(), file=file)
    for line in lines[1:]:
        print(f"{'':32}{line}", file=file)


options = TalkOptions()
define_logging_options(options)


def define(name: str, default: Any = None, *, help: str, group: str, type: type | None = None,
           metavar: str | None = None, check: Check | None = None) -> None:
    """Define one of talkserver's options; ``check`` returns what is wrong with a value, or None."""
    assert group in GROUPS

    def checked(value: Any) -> None:
        if value is None:
            return
        problem = out_of_bounds(value) or (check(value) if check is not None else None)
        if problem:
            raise _BadValue(problem)

    options.define(name, default=default, type=type, help=help, metavar=metavar, group=group, callback=checked)


# -- the options ----------------------------------------------------------------

define("port", 8000, group="serving", metavar="PORT", check=check_port,
       help="TCP port to listen on; 0 picks a free one (the first log line says which)")
define("address", "127.0.0.1", group="serving", metavar="ADDRESS",
       help="address to listen on: an address or name of this machine; 0.0.0.0 for every IPv4 interface, "
            "an empty value for every interface")
define("processes", 1, group="serving", metavar="N", check=at_least(0, " (0: one per core)"),
       help="worker processes sharing the port (0: one per core); more than 1 needs a postgresql:// --db")
define("xheaders", False, group="serving",
       help="behind a reverse proxy: take the client address from X-Real-Ip / X-Forwarded-For")
define("static_path", None, type=str, group="serving", metavar="DIR", check=check_static_path,
       help="directory of the page (default: the bundled www/)")
define("gc", "tuned", group="serving", metavar="tuned|python", check=one_of(collector.POLICIES),
       help="how the garbage collector runs: tuned for thousands of waiting polls, python for Python's own settings")

define("db", "talks.db", group="storage", metavar="PATH|URL", check=check_db,
       help="an SQLite file (relative to the working directory), :memory: to keep nothing, or "
            "postgresql://user:pass@host:port/dbname to share one board between processes and hosts")
define("db_timeout", Settings.timeout, group="storage", metavar="SECONDS", check=seconds("db_timeout"),
       help="seconds a PostgreSQL call may take; a write with no answer by then gets 504 (outcome unknown) "
            "or 503 (not saved)")
define("db_wait", DEFAULT_WAIT, group="storage", metavar="SECONDS", check=at_least(0, " (0: give up at once)"),
       help="seconds to wait at start-up for a PostgreSQL database that is not reachable yet, trying again "
            "with pauses growing to 5 s (0: give up at once); a wrong password or a missing database fails at once")
define("sync", "normal", group="storage", metavar="normal|full", check=one_of(SYNC_MODES),
       help="normal: every answered write survives a crash of the server; full: also a power loss, but slower")
define("retention", 7.0, group="storage", metavar="DAYS", check=check_retention,
       help="days a deleted talk's tombstone is kept; older cursors get the full list and reset")

define("max_polls_per_ip", limits.DEFAULT_MAX_POLLS_PER_IP, group="limits", metavar="N", check=at_least(0),
       help="waiting long polls per client address (0: no limit); past it polls go to the slow lane, "
            "answered every 5 s, and past 5 times it they get 429")
define("write_rate", limits.DEFAULT_WRITE_RATE, group="limits", metavar="PER_S", check=at_least(0),
       help="writes per second per client address (0: no limit); more get 429; "
            "clients on this machine are exempt unless --limit-local-writes")
define("write_burst", limits.DEFAULT_WRITE_BURST, group="limits", metavar="N", check=at_least(1),
       help="writes a client address may make at once before --write-rate applies")
define("limit_local_writes", False, group="limits",
       help="apply --write-rate to clients on this machine (loopback addresses) too")
define("max_comments", limits.DEFAULT_MAX_COMMENTS, group="limits", metavar="N", check=at_least(0),
       help="comments per talk (0: no limit); more get 409")
define("max_talks", bounds.DEFAULT_MAX_TALKS, group="limits", metavar="N", check=at_least(0),
       help="talks on the board, tombstones of deleted ones included (0: no limit); a write of one more gets 409 "
            "once no tombstone is left to forget")
define("max_board_bytes", bounds.DEFAULT_MAX_BYTES, group="limits", metavar="BYTES", check=at_least(0),
       help="stored bytes of the board's talks, comments and tombstones (0: no limit); a write past it gets 409")
define("max_body_size", DEFAULT_MAX_BODY_SIZE, group="limits", metavar="BYTES", check=above_zero,
       help="largest request body in bytes; a larger one gets 413")
define("idle_timeout", 60.0, group="limits", metavar="SECONDS", check=seconds("idle_timeout"),
       help="seconds a connection may take to send a request's headers or body before it is closed")
define("send_timeout", 60.0, group="limits", metavar="SECONDS", check=seconds("send_timeout", off="never"),
       help="seconds a client may leave more than 64 KiB of an answer unread before its connection is closed (0: never)")

define("allowed_hosts", None, type=str, group="access", metavar="NAMES", check=check_allowed_hosts,
       help="comma-separated names the server answers to in Host ('*' for any, .example.org for subdomains); "
            "others get 400, except on /healthz (default: the loopback names on a loopback address, any name otherwise)")
define("password_file", None, type=str, group="access", metavar="FILE", check=non_empty,
       help="require HTTP Basic credentials from this file (add users with talkserver-passwd FILE NAME; "
            "default: none, no password is asked)")
define("protect_talks", False, group="access",
       help="only the browser that proposed a talk may replace or delete it")
define("cookie_secret", None, type=str, group="access", metavar="SECRET", check=non_empty,
       help="key for the --protect-talks cookie (default: generated and kept beside --db; "
            "required, the same everywhere, with PostgreSQL)")

define("poll_timeout", 90.0, group="following", metavar="SECONDS", check=seconds("poll_timeout"),
       help="seconds a long poll waits before it is answered with no changes")
define("api", "changes", group="following", metavar="changes|etag", check=one_of(API_MODES),
       help="what plain GET /talks answers: changes ({serverTime, talks}, the book's 2nd edition) or "
            "etag (the bare array, with ETag and Prefer: wait polling, its 3rd and 4th)")
define("heartbeat", streams.DEFAULT_HEARTBEAT, group="following", metavar="SECONDS",
       check=seconds("heartbeat", off="none"),
       help="seconds between keep-alive comments on an idle event stream, and between pings to every "
            "WebSocket (one that answers none for two intervals is closed) (0: none)")
define("stream_buffer", streams.DEFAULT_BUFFER_LIMIT, group="following", metavar="BYTES", check=above_zero,
       help="bytes an event stream's or a WebSocket's client may leave unread before it is closed "
            "(it reconnects and catches up)")
define("fast_polls", True, group="following",
       help="serve plain long polls without a RequestHandler (half the CPU per poll); "
            "false sends every request through Tornado's routing, for comparison")

define("config", None, type=str, group="command", metavar="FILE",
       help="read options from this file (Python syntax: port = 8000) before the rest of the command line "
            "(default: none)")
define("version", None, type=bool, group="command", help="print the version and exit")


def version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    try:
        return importlib.metadata.version(PROGRAM)
    except importlib.metadata.PackageNotFoundError:
        from talkserver import __version__
        return __version__


# -- parsing ------------------------------------------------------------------


def parse(args: list[str]) -> None:
    """Set ``options`` from the command line ``args`` (without the program name).

    Raises ``Refused`` for any mistake; ``--help`` and ``--version`` print
    and exit 0.  Tornado's logging is set up once everything is read.
    """
    settings: list[tuple[str, str]] = []
    files: list[str] = []
    for arg in args:
        if arg in ("-h", "-help"):
            arg = "--help"
        if not arg.startswith("-") or arg.strip("-") == "":
            raise Refused(f"{arg!r} is not an option: options look like --name=value (see --help)")
        name, equals, value = arg.lstrip("-").partition("=")
        _known(name, f"--{name}", dash="-")
        if name.replace("-", "_") in ("help", "version") and (not equals or _truth(value)):
            _print_and_exit(options.print_help if name == "help" else lambda: print(f"{PROGRAM} {version()}"))
        if name.replace("-", "_") == "config":
            if not value:
                raise Refused("--config needs a file: --config=FILE")
            files.append(value)
        settings.append((name, value if equals else None))
    for path in files:
        read_config(path)
    for name, value in settings:
        _set_from_text(name, value, f"--{name}" if value is None else _redacted(f"--{name}={_cut(value)}"))
    _check_logging()
    try:
        options.run_parse_callbacks()  # Tornado's: sets up logging
    except OSError as e:
        raise Refused(f"--log-file-prefix={options.log_file_prefix}: cannot write the log there ({e.strerror})") from None


def _print_and_exit(show: Callable[[], None]) -> None:
    """Print ``--help`` or ``--version`` and exit 0 (quietly when stdout is closed early, as by head)."""
    try:
        show()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(0)


def read_config(path: str) -> None:
    """Set ``options`` from a config file of Python assignments (``port = 8000``)."""
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        raise Refused(f"--config={path}: cannot read it ({e.strerror})") from None
    try:
        code = compile(source, path, "exec")
        lines = _assignment_lines(source)
    except (SyntaxError, ValueError) as e:
        line = getattr(e, "lineno", None)
        where = f"{path}, line {line}" if line else path
        raise Refused(f"{where}: not valid Python ({getattr(e, 'msg', e)}); write option = value, "
                      "with quotes around text") from None
    except (RecursionError, MemoryError):
        # Python's compiler recurses once per operator: 200,000 terms in
        # one expression are past its stack.
        raise Refused(f"{path}: an expression too long or too deeply nested for Python to compile; "
                      "write option = value") from None
    namespace: dict[str, Any] = {"__file__": os.path.abspath(path)}
    try:
        exec(code, namespace)
    except Exception as e:
        hint = " (Python writes True, False, and text in quotes)" if isinstance(e, NameError) else ""
        raise Refused(f"{path}, line {_error_line(e, path)}: {type(e).__name__}: {e}{hint}") from None
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue  # the file's own helpers: imports, functions, private names
        where = f"{path}, line {lines[name]}" if name in lines else path
        _known(name, f"{where}: {name}", dash="_")
        if name.replace("-", "_") in ("config", "help", "version"):
            raise Refused(f"{where}: {name} can only be given on the command line")
        shown = _redacted(f"{where}: {name} = {_shown(value)}")
        if isinstance(value, str):
            _set_from_text(name, value, shown)
        else:
            _set_value(name, value, shown)


def _shown(value: Any) -> str:
    """A config file's value as a refusal repeats it: short, whatever its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # Python will not even print a whole number of over 4,300 digits.
        return f"a {math.floor(value.bit_length() * math.log10(2)) + 1}-digit number"
    try:
        return _cut(repr(value))
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARACTERS else text[:_SHOWN_CHARACTERS - 3] + "..."


def _redacted(text: str) -> str:
    """``text`` without the password of a URL in it (``--db=postgresql://user:secret@...``)."""
    return _PASSWORD.sub(r"\1***@", text)


def _known(name: str, shown: str, dash: str) -> None:
    """Refuse an unknown option name, suggesting the closest known one."""
    if name and name in options:
        return
    names = [n.replace("_", "-").replace("-", dash) for n in options]
    close = difflib.get_close_matches(name.replace("_", "-").replace("-", dash), names, n=1)
    prefix = "--" if dash == "-" else ""
    hint = f" (did you mean {prefix}{close[0]}?)" if close else " (see --help)"
    raise Refused(f"{shown}: no such option{hint}")


def _truth(text: str) -> bool | None:
    word = text.strip().lower()
    return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None


def _set_from_text(name: str, text: str | None, shown: str) -> None:
    """Set an option from text, as Tornado parses the command line, refusing what it would misread."""
    option = options.option(name)
    if option.type is bool:
        truth = True if text is None else _truth(text)
        if truth is None:
            raise Refused(f"{shown}: use true or false")
        text = "true" if truth else "false"
    elif text is None:
        raise Refused(f"{shown}: needs a value (--{option.name.replace('_', '-')}=...)")
    try:
        options.parse_command_line([PROGRAM, f"--{option.name}={text}"], final=False)
    except _BadValue as e:
        raise Refused(f"{shown}: {e}") from None
    except (ValueError, Error):
        raise Refused(f"{shown}: {_kind(option.type)}") from None


def _set_value(name: str, value: Any, shown: str) -> None:
    """Set an option to a config file's value, of the option's own type (an int for a float is fine)."""
    option = options.option(name)
    if option.type is float and type(value) is int:
        try:
            value = float(value)
        except OverflowError:
            raise Refused(f"{shown}: must be a finite number") from None
    if value is None and option.default is not None or (
        value is not None and type(value) is not option.type
    ):
        raise Refused(f"{shown}: {_kind(option.type)}")
    try:
        options[name] = value
    except _BadValue as e:
        raise Refused(f"{shown}: {e}") from None
    except Error:
        raise Refused(f"{shown}: {_kind(option.type)}") from None


def _kind(kind: type) -> str:
    return {
        int: "must be a whole number",
        float: "must be a number",
        bool: "use true or false",
        str: "must be text (in quotes)",
    }.get(kind, f"must be a {kind.__name__}")


def _check_logging() -> None:
    """Tornado's logging options are checked here: a bad value would be a traceback in Tornado."""
    if options.logging is None or options.logging.lower() not in LOG_LEVELS:
        raise Refused(f"--logging={options.logging}: use one of {', '.join(LOG_LEVELS)}")
    if options.log_rotate_mode not in LOG_ROTATE_MODES:
        raise Refused(f"--log-rotate-mode={options.log_rotate_mode}: use one of {', '.join(LOG_ROTATE_MODES)}")
    if not _LOG_ROTATE_WHEN.match(options.log_rotate_when or ""):
        raise Refused(f"--log-rotate-when={options.log_rotate_when}: use S, M, H, D, midnight or W0 to W6")


def _assignment_lines(source: bytes) -> dict[str, int]:
    """The line where a config file first sets each top-level name."""
    lines: dict[str, int] = {}
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if isinstance(target, ast.Name):
                lines.setdefault(target.id, node.lineno)
    return lines


def _error_line(error: BaseException, path: str) -> int | str:
    """The config file's line where ``error`` was raised."""
    line: int | str = "?"
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
