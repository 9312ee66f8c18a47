"""Running one test on every store chatledger can keep its log in: the workspace's SQLite file
and, when CHATLEDGER_TEST_POSTGRES names a server, a fresh PostgreSQL schema per test.

A test asks for the `store` fixture (import `store_fixture` from here), opens its Ledgers
and managers through it (they are closed when the test ends: on PostgreSQL each holds
connections and a pool thread) and reads the raw tables through `store.rows`, on a connection
of its own."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from chatledger import ConversationManager
from chatledger.ledger import Ledger
from infrastructure.database import Dialect, PostgresDialect, SQLiteDialect
from infrastructure.postgres_store import PostgresDatabase, parse_database_url
from infrastructure.sqlite_store import DB_FILE
from tests.postgres import fresh_schema, requires_postgres

STORES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=[requires_postgres, pytest.mark.postgres]),
]


@dataclass
class Store:
    name: str
    #: What a Ledger opens the store with. Empty for SQLite rather than None, so a
    #: CHATLEDGER_DATABASE_URL in the environment cannot send the SQLite runs elsewhere.
    url: str
    dialect: Dialect
    opened: list[Ledger | ConversationManager] = field(default_factory=list)
    _connection: PostgresDatabase | None = None

    @property
    def schema(self) -> str:
        return dict(parse_qsl(urlsplit(self.url).query))["schema"]

    def ledger(self, workspace: Path, **kwargs: Any) -> Ledger:
        ledger = Ledger(workspace, database_url=self.url, **kwargs)
        self.opened.append(ledger)
        return ledger

    def manager(self, workspace: Path, **kwargs: Any) -> ConversationManager:
        manager = ConversationManager(workspace_path=workspace, database_url=self.url, **kwargs)
        self.opened.append(manager)
        return manager

    def rows(self, workspace: Path, statement: str, *parameters: Any) -> list[tuple[Any, ...]]:
        """Runs `statement` (with `?` parameters) outside any Ledger: what it sees is what was
        committed, not what some Ledger holds in hand. (`workspace` locates a SQLite store; a
        PostgreSQL store is its schema.)"""
        if self.name == "sqlite":
            with closing(sqlite3.connect(workspace / DB_FILE, isolation_level=None)) as db:
                return db.execute(statement, parameters).fetchall()
        return [tuple(row) for row in self._postgres().execute(statement, parameters).fetchall()]

    def execute(self, workspace: Path, statement: str, *parameters: Any) -> None:
        """Changes the store behind chatledger's back, as anyone with access to it could."""
        if self.name == "sqlite":
            with closing(sqlite3.connect(workspace / DB_FILE, isolation_level=None)) as db:
                db.execute(statement, parameters)
            return
        self._postgres().execute(statement, parameters)

    def _postgres(self) -> PostgresDatabase:
        # chatledger's own connection class, for its `?` parameters and the schema's path;
        # one per test, opened on first use.
        if self._connection is None:
            self._connection = PostgresDatabase(parse_database_url(self.url))
        return self._connection

    def schema_tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """On PostgreSQL, every table of the store's schema with all its rows, in a stable
        order: equal before and after means nothing was written. (A SQLite store is better
        compared as its file, byte for byte.)"""
        assert self.name == "postgres"
        names = self._postgres().execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema=?",
            (self.schema,),
        )
        return {
            table: sorted(self._postgres().execute(f'SELECT * FROM "{table}"'), key=repr)
            for (table,) in sorted(names)
        }

    def close(self) -> None:
        for opened in reversed(self.opened):
            opened.close()
        if self._connection is not None:
            self._connection.close()


# Named apart from its fixture name, so importing it does not shadow the tests' arguments.
@pytest.fixture(params=STORES, name="store")
def store_fixture(request: pytest.FixtureRequest) -> Iterator[Store]:
    sqlite = request.param == "sqlite"
    with nullcontext("") if sqlite else fresh_schema() as url:
        opened = Store(request.param, url, SQLiteDialect() if sqlite else PostgresDialect())
        try:
            yield opened
        finally:
            # Before the schema is dropped: an open connection's locks would hold the drop.
            opened.close()
