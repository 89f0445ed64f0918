"""Which store a ``--db`` value names: one table from its scheme to the class.

    :memory:                    MemoryStore (stores.memory)
    a file path                 SQLiteStore (stores.sqlite)
    postgresql://, postgres://  PostgresStore (stores.postgres; asyncpg is an optional extra)

The classes are named as ``module:Class`` strings and imported when first
asked for, so the optional drivers load only for the store in use.  The
command (opening, and checking ``--db`` before anything starts), /healthz and
``talkserver-import`` ask here and name no kind of store; adding one is its
module plus a line in STORES.
"""

from __future__ import annotations

import importlib
import re

from talkserver.stores.contract import Settings, Store, StoreOpenError

# The scheme of a --db value -> the store class, as "module:Class".  The
# value ":memory:" and a plain file path have pseudo-schemes of their own.
STORES: dict[str, str] = {
    ":memory:": "talkserver.stores.memory:MemoryStore",
    "file": "talkserver.stores.sqlite:SQLiteStore",
    "postgresql": "talkserver.stores.postgres:PostgresStore",
    "postgres": "talkserver.stores.postgres:PostgresStore",
}

# "scheme://..." (RFC 3986 scheme syntax); anything else is a file path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


class UnknownStore(ValueError):
    """``--db`` names a scheme no store is registered for; the message is one line."""


def scheme(db: str) -> str:
    """The key of STORES that ``db`` falls under (which need not be registered)."""
    if db == ":memory:":
        return db
    found = _SCHEME.match(db)
    return found.group(1).lower() if found else "file"


def store_class(db: str) -> type[Store]:
    """The class of the store ``db`` names; UnknownStore if none is registered for it."""
    try:
        module, name = STORES[scheme(db)].split(":")
    except KeyError:
        known = ", ".join(f"{s}://" for s in STORES if s not in (":memory:", "file"))
        raise UnknownStore(
            f"{scheme(db)}:// is not a store talkserver knows: give an SQLite file path, :memory: or {known}"
        ) from None
    return getattr(importlib.import_module(module), name)


def check(db: str) -> str | None:
    """What is wrong with ``db`` before anything is opened (None: nothing), for the option check."""
    if not db:
        return "name a file, :memory: or postgresql://..."
    try:
        return store_class(db).check_db(db)
    except UnknownStore as e:
        return str(e)


def display(db: str) -> str:
    """``db`` as logs may show it (a URL without its password)."""
    try:
        return store_class(db).display(db)
    except UnknownStore:
        return db


async def open_store(db: str, settings: Settings = Settings()) -> Store:
    """Open the store ``db`` names; StoreOpenError (one line) if it cannot be used."""
    try:
        cls = store_class(db)
    except UnknownStore as e:
        raise StoreOpenError(str(e)) from None
    return await cls.open(db, settings)
