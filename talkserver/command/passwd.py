"""The ``talkserver-passwd`` command: add, change or remove a name in a password file.

    talkserver-passwd FILE NAME            ask for the password (twice)
    talkserver-passwd FILE NAME < file     read it from the first line of stdin
    talkserver-passwd --delete FILE NAME   remove NAME

The file holds one ``name:scrypt$...`` line per person; the server reads it
at start (``talkserver --password-file=FILE``), so restart it after a change.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from talkserver.access.auth import PasswordFileError, hash_password, read_password_file, write_password_file


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("talkserver-passwd: the passwords differ; nothing changed")
    return first


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver-passwd`` console script."""
    parser = argparse.ArgumentParser(prog="talkserver-passwd", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="the password file (created if missing)")
    parser.add_argument("name", help="the name people type in the browser's prompt")
    parser.add_argument("--delete", action="store_true", help="remove the name instead")
    args = parser.parse_args(argv)
    if not args.name or ":" in args.name or args.name != args.name.strip():
        parser.error("a name must be non-empty, without ':' and without surrounding spaces")
    try:
        users = read_password_file(args.file) if Path(args.file).exists() else {}
    except PasswordFileError as e:
        raise SystemExit(f"talkserver-passwd: {e}") from None
    if args.delete:
        if users.pop(args.name, None) is None:
            raise SystemExit(f"talkserver-passwd: {args.name} is not in {args.file}")
    else:
        password = _read_password()
        if not password:
            raise SystemExit("talkserver-passwd: the password must not be empty; nothing changed")
        users[args.name] = hash_password(password)
    write_password_file(args.file, users)


if __name__ == "__main__":
    main()
