"""Credentials for a password-protected server (HTTP Basic, talkserver's
``--password-file``): the name from ``--user`` (or the URL), the password
from a file, an environment variable or a prompt.

The password is never taken from the command line (other users of the
machine can read a process's arguments), never echoed, and never written
into an error, the summary or the JSON: everything the tool shows names the
user at most, and a URL is shown with its password replaced by ``***``.
Every request of the run carries the same ``Authorization`` header; a
talk server checks it once and recognises it afterwards.
"""

from __future__ import annotations

import base64
import getpass
import os
import sys
import unicodedata
from urllib.parse import urlsplit, urlunsplit

# The environment variable a password may come from.
PASSWORD_VARIABLE = "TALKSERVER_PASSWORD"


class CredentialsError(Exception):
    """The credentials cannot be had as asked; the message holds no password."""


def shown_url(url: str) -> str:
    """``url`` as it may be printed: a password in it replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def read_password(user: str, password_file: str | None) -> str:
    """The password for ``user``: the first line of ``password_file``, else
    ``$TALKSERVER_PASSWORD``, else asked on the terminal (not echoed)."""
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            raise CredentialsError(f"--password-file {password_file}: cannot read it ({getattr(e, 'strerror', None) or 'not UTF-8 text'})") from None
        if not password:
            raise CredentialsError(f"--password-file {password_file}: its first line is empty; put the password there")
        return _checked(password, f"--password-file {password_file}")
    password = os.environ.get(PASSWORD_VARIABLE)
    if password:
        return _checked(password, f"${PASSWORD_VARIABLE}")
    if not sys.stdin.isatty():
        raise CredentialsError(
            f"--user {user} needs a password: give --password-file FILE, set {PASSWORD_VARIABLE}, "
            "or run on a terminal to be asked"
        )
    try:
        password = getpass.getpass(f"talkserver-load: password for {user}: ")
    except EOFError:
        password = ""
    if not password:
        raise CredentialsError(f"--user {user}: no password given")
    return _checked(password, "the password")


def _checked(password: str, where: str) -> str:
    # A talk server refuses credentials with control characters as malformed.
    if any(unicodedata.category(ch) == "Cc" for ch in password):
        raise CredentialsError(f"{where}: the password holds a control character (a tab, a NUL, ...)")
    return password


def check_user(user: str) -> None:
    """Raise CredentialsError if ``user`` cannot be sent as a Basic name."""
    if not user or ":" in user or any(unicodedata.category(ch) == "Cc" for ch in user):
        raise CredentialsError(f"--user {user!r}: give a name without ':' or control characters")


def basic(user: str, password: str) -> str:
    """The ``Authorization`` header's value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
