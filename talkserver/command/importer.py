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
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from talkserver.stores import Settings, StoreOpenError, UnknownStore, open_store, store_class

# Neither store follows anything: one copy, then both are closed.
_ONCE = Settings(follow=False)


async def copy_board(source: str, target: str, replace: bool) -> str:
    """Copy the board; returns a one-line report, or raises SystemExit with one line."""
    if not Path(source).is_file():
        raise SystemExit(f"talkserver-import: {source}: no such file")
    try:
        old = await open_store(source, _ONCE)
    except StoreOpenError as e:
        raise SystemExit(f"talkserver-import: {e}") from None
    try:
        try:
            new = await open_store(target, _ONCE)
        except StoreOpenError as e:
            raise SystemExit(f"talkserver-import: {e}") from None
        try:
            present = await new.talk_count()
            if present and not replace:
                raise SystemExit(
                    f"talkserver-import: the PostgreSQL board is not empty ({present} talks and tombstones);"
                    " add --replace to overwrite it"
                )
            talks = old.all_talks()
            head = await new.replace_board(talks, old.head, {t["title"]: old.owner(t["title"]) for t in talks})
        finally:
            await new.close()
    finally:
        await old.close()
    comments = sum(len(t["comments"]) for t in talks)
    return f"copied {len(talks)} talks and {comments} comments; the new board starts at serverTime {head}"


def _shared(db: str) -> bool:
    """Whether ``db`` names a store several servers share (the PostgreSQL board this copies into)."""
    try:
        return store_class(db).shared
    except UnknownStore:
        return False


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``talkserver-import`` console script."""
    parser = argparse.ArgumentParser(prog="talkserver-import", description=__doc__.split("\n\n")[0])
    parser.add_argument("sqlite_file", help="the SQLite board (a talkserver --db file)")
    parser.add_argument("postgresql_url", help="postgresql://user:pass@host:port/dbname")
    parser.add_argument("--replace", action="store_true", help="overwrite a PostgreSQL board that has talks")
    args = parser.parse_args(argv)
    if not _shared(args.postgresql_url):
        parser.error(f"{args.postgresql_url!r} is not a postgresql:// URL")
    print(asyncio.run(copy_board(args.sqlite_file, args.postgresql_url, args.replace)))


if __name__ == "__main__":
    main()
