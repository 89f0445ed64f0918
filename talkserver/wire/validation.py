"""Parsing and checking what clients send: titles, talks and comments.

Each check raises BadInput with a message meant for the client; nothing is
stored until a body has passed all of them.  The limits are documented in
docs/protocol.md.
"""

from __future__ import annotations

import json
import re
import unicodedata

MAX_TITLE = 200
MAX_NAME = 100
MAX_SUMMARY = 5000
MAX_MESSAGE = 2000


class BadInput(ValueError):
    """A client sent something the server will not store."""


def _check_text(field: str, value: object, limit: int, single_line: bool = False) -> str:
    if not isinstance(value, str):
        raise BadInput(f"{field} must be a string")
    if len(value) > limit:
        raise BadInput(f"{field} is longer than {limit} characters")
    try:
        # JSON can carry lone surrogates ("\ud800") that no UTF-8 answer can hold.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{field} contains invalid Unicode (a lone surrogate)") from None
    allowed = "" if single_line else "\n\t\r"
    if any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in value):
        raise BadInput(f"{field} contains control characters")
    return value


def check_title(title: str) -> str:
    """A talk title from the URL: non-empty, one line, at most MAX_TITLE."""
    if not title:
        raise BadInput("the title must not be empty")
    if title in (".", ".."):
        # Browsers resolve these as path steps, so no page could ever name the talk.
        raise BadInput('the title must not be "." or ".."')
    return _check_text("the title", title, MAX_TITLE, single_line=True)


def _parse_object(body: bytes) -> dict:
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput("the body is not valid UTF-8") from None
    except RecursionError:
        # The decoder recurses per level of nesting; no talk or comment is
        # more than one level deep, so a deep body is simply wrong.
        raise BadInput("the body is nested too deeply") from None
    except ValueError as e:
        raise BadInput(f"the body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadInput("the body must be a JSON object")
    return value


def _two_fields(body: bytes, name_field: str, text_field: str, text_limit: int) -> tuple[str, str]:
    """A person's name (one line) and a longer text, from a JSON object."""
    value = _parse_object(body)
    for field in (name_field, text_field):
        if field not in value:
            raise BadInput(f'"{field}" is missing')
    name = _check_text(f'"{name_field}"', value[name_field], MAX_NAME, single_line=True)
    text = _check_text(f'"{text_field}"', value[text_field], text_limit)
    return name, text


def parse_talk(body: bytes) -> tuple[str, str]:
    """(presenter, summary) from a PUT body."""
    return _two_fields(body, "presenter", "summary", MAX_SUMMARY)


def parse_comment(body: bytes) -> tuple[str, str]:
    """(author, message) from a comment POST body."""
    return _two_fields(body, "author", "message", MAX_MESSAGE)


_CURSOR = re.compile(r"-?[0-9]{1,18}", re.ASCII)


def parse_cursor(text: str) -> int:
    """A changesSince cursor: a decimal integer of at most 18 ASCII digits, nothing around it."""
    if not _CURSOR.fullmatch(text):
        raise BadInput("changesSince must be an integer (the serverTime of an earlier answer)")
    return int(text)
