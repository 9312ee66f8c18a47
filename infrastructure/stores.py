"""Which store a Ledger opens: the workspace's SQLite file by default, or the PostgreSQL
database named by a `database_url` argument or the CHATLEDGER_DATABASE_URL variable."""

from __future__ import annotations

import os
from pathlib import Path

from domain.errors import InvalidInput, StoreError
from infrastructure.database import Database
from infrastructure.event_store import EventStore
from infrastructure.postgres_store import is_postgres_url, open_postgres
from infrastructure.redaction import redact
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
    workspace: Path,
    database_url: str | None,
    cache_size: int,
    *,
    read_only: bool = False,
    must_exist: bool = False,
) -> tuple[Database, EventStore]:
    """Opens the store. `read_only` writes nothing (not a table, not a file) and refuses
    every write; it and `must_exist` refuse a store that is not there yet, instead of
    creating it."""
    url = database_url_from(database_url)
    if url is None:
        return open_sqlite(workspace, cache_size, read_only=read_only, must_exist=must_exist)
    if not is_postgres_url(url):
        raise StoreError(
            f"Unsupported database URL {redact(url)!r}: give a "
            "postgresql://user@host:port/dbname URL, or leave "
            f"{DATABASE_URL_VARIABLE} unset for the workspace's SQLite file."
        )
    return open_postgres(url, cache_size, read_only=read_only, must_exist=must_exist)
