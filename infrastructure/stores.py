"""Which store a Ledger opens: the workspace's SQLite file by default, or the PostgreSQL
database named by a `database_url` argument or the CHATLEDGER_DATABASE_URL variable."""

from __future__ import annotations

import os
from pathlib import Path

from domain.errors import InvalidInput, StoreError
from infrastructure.database import Database
from infrastructure.event_store import EventStore
from infrastructure.postgres_store import is_postgres_url, open_postgres
from infrastructure.sqlite_store import open_sqlite

DATABASE_URL_VARIABLE = "CHATLEDGER_DATABASE_URL"


def database_url_from(argument: str | None) -> str | None:
    """The argument if given, else the environment's; empty means the default store."""
    if argument is None:
        argument = os.environ.get(DATABASE_URL_VARIABLE)
        if argument is None:
            return None
    if not isinstance(argument, str):
        raise InvalidInput(
            f"database_url must be a string such as postgresql://user@host:5432/dbname, "
            f"not {type(argument).__name__}."
        )
    return argument.strip() or None


def open_store(
    workspace: Path, database_url: str | None, cache_size: int
) -> tuple[Database, EventStore]:
    url = database_url_from(database_url)
    if url is None:
        return open_sqlite(workspace, cache_size)
    if not is_postgres_url(url):
        raise StoreError(
            f"Unsupported database URL {url!r}: give a postgresql://user@host:port/dbname URL, "
            f"or leave {DATABASE_URL_VARIABLE} unset for the workspace's SQLite file."
        )
    return open_postgres(url, cache_size)
