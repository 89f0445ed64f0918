"""``talkserver-import``: copy an SQLite board into PostgreSQL.

    talkserver-import talks.db postgresql://user:pass@host/dbname [--replace]

The SQLite file is opened the way the server opens it, so a file still in
use by a running talkserver is refused.  A PostgreSQL board that already
has talks is left alone unless ``--replace`` is given.  Talks and comments
are copied in one transaction (tombstones are not: no cursor from before
the copy can use them).  The new board's history starts after both old
ones, so a page that followed either server gets one clean reset
(``"reset": true``) and goes on from there.  Servers already following the
PostgreSQL board reload it at once.

Whatever stops it is one line on stderr, ``talkserver-import: ...``, and
exit status 2, as for the other commands.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from talkserver.command.dburl import url_problem
from talkserver.stores import (
    Settings, StoreOpenError, StoreWriteFailed, UnknownStore, WriteOutcomeUnknown, open_store, store_class,
)
from talkserver.words import counted

PROGRAM = "talkserver-import"
DESCRIPTION = "Copy an SQLite board (a talkserver --db file) into a PostgreSQL database."


# Neither store follows anything: one copy, then both are closed.
_ONCE = Settings(follow=False)


class Refused(Exception):
    """The copy cannot be made; ``str()`` is the one line that says why."""


async def copy_board(source: str, target: str, replace: bool) -> str:
    """Copy the board; returns a one-line report, or raises Refused."""
    if not Path(source).is_file():
        raise Refused(f"{source}: no such file")
    try:
        old = await open_store(source, _ONCE)
    except StoreOpenError as e:
        raise Refused(str(e)) from None
    try:
        try:
            new = await open_store(target, _ONCE)
        except StoreOpenError as e:
            raise Refused(str(e)) from None
        try:
            present = await new.talk_count()
            if present and not replace:
                raise Refused(
                    f"the PostgreSQL board is not empty ({counted(present, 'talk or tombstone', 'talks and tombstones')});"
                    " add --replace to overwrite it"
                )
            talks = old.all_talks()
            head = await new.replace_board(talks, old.head, {t["title"]: old.owner(t["title"]) for t in talks})
        except StoreWriteFailed as e:
            raise Refused(f"nothing was copied: {e}") from None
        except WriteOutcomeUnknown as e:
            raise Refused(f"the copy may or may not have been made (run it again with --replace): {e}") from None
        finally:
            await new.close()
    finally:
        await old.close()
    comments = sum(len(t["comments"]) for t in talks)
    return (f"copied {counted(len(talks), 'talk')} and {counted(comments, 'comment')}; "
            f"the new board starts at serverTime {head}")


def _shared(db: str) -> bool:
    """Whether ``db`` names a store several servers share (the PostgreSQL board this copies into)."""
    try:
        return store_class(db).shared
    except UnknownStore:
        return False


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver-import`` console script: exit 2 with one line if it cannot copy."""
    parser = argparse.ArgumentParser(prog=PROGRAM, description=DESCRIPTION)
    parser.add_argument("sqlite_file", help="the SQLite board (a talkserver --db file)")
    parser.add_argument("postgresql_url", help="postgresql://user:pass@host:port/dbname")
    parser.add_argument("--replace", action="store_true", help="overwrite a PostgreSQL board that has talks")
    args = parser.parse_args(argv)  # its own mistakes: usage and exit 2
    try:
        if not _shared(args.postgresql_url):
            raise Refused("the second argument must be a postgresql:// URL")
        problem = url_problem(args.postgresql_url)
        if problem:
            raise Refused(f"the PostgreSQL URL: {problem}")
        print(asyncio.run(copy_board(args.sqlite_file, args.postgresql_url, args.replace)))
    except Refused as e:
        print(f"{PROGRAM}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
