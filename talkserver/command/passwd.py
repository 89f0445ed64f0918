"""The ``talkserver-passwd`` command: add, change or remove a name in a password file.

    talkserver-passwd FILE NAME            ask for the password (twice)
    talkserver-passwd FILE NAME < file     read it from the first line of stdin
    talkserver-passwd --delete FILE NAME   remove NAME

The file holds one ``name:scrypt$...`` line per person; the server reads it
at start (``talkserver --password-file=FILE``), so restart it after a change.
Whatever stops it is one line on stderr and exit status 2, as for the other
commands.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from talkserver.access.auth import PasswordFileError, hash_password, read_password_file, write_password_file

PROGRAM = "talkserver-passwd"
DESCRIPTION = "Add, change or remove a name in a talkserver password file (talkserver --password-file=FILE)."


def _refuse(message: str) -> None:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        _refuse("the passwords differ; nothing changed")
    return first


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver-passwd`` console script: exit 2 with one line if it cannot."""
    parser = argparse.ArgumentParser(prog=PROGRAM, description=DESCRIPTION)
    parser.add_argument("file", help="the password file (created if missing)")
    parser.add_argument("name", help="the name people type in the browser's prompt")
    parser.add_argument("--delete", action="store_true", help="remove the name instead")
    args = parser.parse_args(argv)
    if not args.name or ":" in args.name or args.name != args.name.strip():
        parser.error("a name must be non-empty, without ':' and without surrounding spaces")
    try:
        users = read_password_file(args.file) if Path(args.file).exists() else {}
    except PasswordFileError as e:
        _refuse(str(e))
    if args.delete:
        if users.pop(args.name, None) is None:
            _refuse(f"{args.name} is not in {args.file}")
    else:
        password = _read_password()
        if not password:
            _refuse("the password must not be empty; nothing changed")
        users[args.name] = hash_password(password)
    write_password_file(args.file, users)


if __name__ == "__main__":
    main()
