"""A talkserver for talkserver-load's tests: as it is, or breaking the protocol.

Built with make_app() directly, so no command-line defaults (such as
per-address limits, which one machine's hundreds of clients would hit)
come into play.  Usage: ``python load_server.py PORT MODE``:

- ``plain``: the server as it is.
- ``drop``: answers that carry a deletion are replaced by an empty answer
  with the new serverTime, so every client misses every deletion.
- ``repeat``: the first answer for each (cursor, change) hands back the old
  cursor as serverTime, so every client is sent the same change twice.
"""

import asyncio
import sys

import tornado.httpserver
import tornado.netutil

from talkserver import make_app
from talkserver.follow.feed import encode_answer


def break_feed(app, mode: str) -> None:
    if mode == "plain":
        return
    feed, store = app.board.feed, app.board.store
    since = feed.since
    repeated = set()

    def drop_deletions(cursor):
        body = since(cursor)
        if body is not None and b'"deleted":true' in body:
            return encode_answer(store.head, [])
        return body

    def repeat_once(cursor):
        body = since(cursor)
        if body is not None and (cursor, store.head) not in repeated:
            repeated.add((cursor, store.head))
            return encode_answer(cursor, store.changes_since(cursor).talks)
        return body

    feed.since = {"drop": drop_deletions, "repeat": repeat_once}[mode]


async def serve(port: int, mode: str) -> None:
    app = make_app(poll_timeout=10)
    break_feed(app, mode)
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    tornado.httpserver.HTTPServer(app).add_sockets(sockets)
    # As talkserver does: the port bound (PORT 0 picks a free one), for whoever started us.
    print(f"talkserver listening on http://127.0.0.1:{sockets[0].getsockname()[1]}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
