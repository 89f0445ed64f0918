"""The PostgreSQL board's schema: its migrations, in versioned SQL files, and bringing a database to the newest.

Each file of ``sql/`` named ``v<N>_<what>.sql`` takes the schema from
version N - 1 to N; ``talkserver_schema`` records how many have run.  Only
ever add a file: a database that ran version N never runs it again, so an
edit to an old file reaches new databases only.  The files ship inside the
package (setup.cfg ``package_data``), and are read with importlib.resources,
so an installed talkserver finds them wherever it is installed.
"""

from __future__ import annotations

import re
from importlib import resources

# Any two talkserver versions migrating one database at once take turns.
MIGRATION_LOCK = 0x74616C6B  # "talk"

# The database's clock in milliseconds, as the write functions read it.
DB_CLOCK_MS = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

# The head, the changes after $1, the epoch, the history ids of the head
# and of $1, and the stamp of the title $2; see talkserver_catch_up in
# sql/v4_history_ids.sql.
CATCH_UP = "SELECT * FROM talkserver_catch_up($1, $2)"

_FILE = re.compile(r"v(\d+)_[a-z0-9_]+\.sql")


def _migrations() -> list[str]:
    """The SQL script of each version, in order; refuses a gap in the numbering (a file lost in packaging)."""
    found = {}
    for entry in resources.files(__package__).joinpath("sql").iterdir():
        named = _FILE.fullmatch(entry.name)
        if named:
            found[int(named.group(1))] = entry.read_text(encoding="utf-8")
    if sorted(found) != list(range(1, len(found) + 1)):
        raise RuntimeError(f"talkserver's PostgreSQL migrations are incomplete: versions {sorted(found)}")
    return [found[number] for number in sorted(found)]


MIGRATIONS: list[str] = _migrations()
SCHEMA_VERSION = len(MIGRATIONS)


class NewerSchema(Exception):
    """The database was migrated by a newer talkserver (``version`` is its schema version)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"schema version {version} is newer than this talkserver knows ({SCHEMA_VERSION})")
        self.version = version


async def prepare(conn, created_sql: str = DB_CLOCK_MS) -> None:
    """Bring the schema on ``conn`` to SCHEMA_VERSION and create the head row, once for all processes.

    One transaction holding an advisory lock, so servers starting together
    take turns and the second finds the work done.  ``created_sql`` is the
    new board's creation time (the database clock, or a test's).  Raises
    NewerSchema for a database a newer talkserver migrated.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        # Asked first: creating it, even IF NOT EXISTS, needs CREATE on the
        # schema, which a database user that only reads and writes the
        # tables of a board made before does not have.
        if await conn.fetchval("SELECT to_regclass('talkserver_schema') IS NULL"):
            await conn.execute("CREATE TABLE talkserver_schema (version integer NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM talkserver_schema") or 0
        if version > SCHEMA_VERSION:
            raise NewerSchema(version)
        for number in range(version, SCHEMA_VERSION):
            # No arguments: the simple query protocol, which runs a whole script.
            await conn.execute(MIGRATIONS[number])
            await conn.execute("INSERT INTO talkserver_schema (version) VALUES ($1)", number + 1)
        # A new board's creation time is its first serverTime; cursors from
        # before it (another, wiped board) get a reset.  One reading of the
        # clock for both: a cursor at the creation time must not count as
        # older than history.
        await conn.execute(
            f"INSERT INTO head (stamp, pruned_through) SELECT created, created FROM (SELECT {created_sql} AS created)"
            " AS c WHERE NOT EXISTS (SELECT 1 FROM head)"
        )
