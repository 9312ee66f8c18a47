"""The stores a test runs on: the workspace's SQLite file and, when CHATLEDGER_TEST_POSTGRES
names a server, a fresh PostgreSQL schema per test (dropped afterwards).

A test asks for the `store` fixture (tests/conftest.py; nothing to import) and runs once per
backend. The `Store` it gets is one empty store:

- `name` ("sqlite" or "postgres"), `url` (what a Ledger opens it with: empty for SQLite, so
  that a CHATLEDGER_DATABASE_URL in the environment cannot send the SQLite runs elsewhere),
  `workspace` (the test's workspace folder, not yet created), `schema`, `dialect`, and `env`
  (what a `chatledger` process needs in its environment to open it);
- `ledger()` and `manager()`, which open it and are closed when the test ends (on PostgreSQL
  each holds connections and a pool thread): closing one earlier is fine too;
- the raw rows, read on a connection of the test's own, outside any Ledger (what they show is
  what was committed): `rows()` for a statement, `log_rows()` for the log, `tables()` for
  every table, `projections()` for every projection table; `execute()` changes the store
  behind chatledger's back, and `log` (a `RawLog`) edits the log's rows one by one, as
  anyone with write access to the database could;
- `spec`, a `StoreSpec`: a picklable description of the same store (the workspace and the
  URL) that a spawned process opens its own Ledger or manager with;
- `at(workspace)`: the same URL with another workspace (on SQLite, another file: a copy).

`open_store` opens a store outside that fixture (the CLI tests' demo is one per module)."""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID

import psycopg
import pytest

from chatledger import ConversationManager, Ledger
from infrastructure.database import Dialect, PostgresDialect, SQLiteDialect
from infrastructure.postgres_store import PostgresDatabase, parse_database_url
from infrastructure.sqlite_store import DB_FILE
from infrastructure.stores import DATABASE_URL_VARIABLE
from projections.runner import all_projections
from tests import postgres
from tests.postgres import fresh_schema, requires_postgres

#: The `store` fixture's parameters (and their test ids): one per backend.
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=[requires_postgres, pytest.mark.postgres]),
]


@dataclass(frozen=True)
class StoreSpec:
    """Everything a fresh process needs to open the same store (picklable, so it crosses a
    spawn): the workspace folder and, for PostgreSQL, the database URL of the test's schema.
    What a spec opens is the caller's to close."""

    workspace: Path
    #: Empty: the workspace's SQLite file, whatever CHATLEDGER_DATABASE_URL says.
    url: str = ""

    @property
    def name(self) -> str:
        return "postgres" if self.url else "sqlite"

    @property
    def schema(self) -> str | None:
        """The PostgreSQL schema every table of this store lives in (None on SQLite)."""
        if not self.url:
            return None
        return dict(parse_qsl(urlsplit(self.url).query))["schema"]

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file of this store (None on PostgreSQL)."""
        return None if self.url else self.workspace / DB_FILE

    def ledger(self, **kwargs: Any) -> Ledger:
        return Ledger(self.workspace, database_url=self.url, **kwargs)

    def manager(self, **kwargs: Any) -> ConversationManager:
        """A manager (answered by the offline model unless told otherwise), as `chatledger
        chat` opens one."""
        return ConversationManager(workspace_path=self.workspace, database_url=self.url, **kwargs)


@dataclass
class _Opened:
    """What a store (and every view of it from `Store.at`) opened, closed together."""

    ledgers: list[Ledger | ConversationManager] = field(default_factory=list)
    connection: PostgresDatabase | None = None

    def close(self) -> None:
        for opened in reversed(self.ledgers):
            opened.close()
        if self.connection is not None:
            self.connection.close()


@dataclass
class Store:
    """One test's store: see the module's docstring."""

    spec: StoreSpec
    _opened: _Opened = field(default_factory=_Opened)

    # -- what it is -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def workspace(self) -> Path:
        return self.spec.workspace

    @property
    def schema(self) -> str | None:
        return self.spec.schema

    @property
    def sqlite_path(self) -> Path | None:
        return self.spec.sqlite_path

    @property
    def dialect(self) -> Dialect:
        return SQLiteDialect() if self.name == "sqlite" else PostgresDialect()

    @property
    def env(self) -> dict[str, str]:
        """For a `chatledger` process (or monkeypatch.setenv): this store, whatever the
        caller's environment holds."""
        return {DATABASE_URL_VARIABLE: self.url}

    def at(self, workspace: Path) -> Store:
        """The same database URL with another workspace: on SQLite the file in that folder
        (a copy, say), on PostgreSQL the same schema. What it opens closes with this store."""
        return Store(StoreSpec(workspace, self.url), self._opened)

    # -- opening it -------------------------------------------------------------------------
    def ledger(self, **kwargs: Any) -> Ledger:
        ledger = self.spec.ledger(**kwargs)
        self._opened.ledgers.append(ledger)
        return ledger

    def manager(self, **kwargs: Any) -> ConversationManager:
        manager = self.spec.manager(**kwargs)
        self._opened.ledgers.append(manager)
        return manager

    # -- its raw rows -----------------------------------------------------------------------
    def rows(self, statement: str, *parameters: Any) -> list[tuple[Any, ...]]:
        """Runs `statement` (with `?` parameters) outside any Ledger: what it sees is what was
        committed, not what some Ledger holds in hand."""
        return self._query(statement, parameters)

    def execute(self, statement: str, *parameters: Any) -> None:
        """Changes the store behind chatledger's back, as anyone with access to it could."""
        self._run(statement, parameters)

    def log_rows(self) -> list[tuple[Any, ...]]:
        """Every stored event, in the log's order: (number, originator_id, position, topic,
        state), in the store's own terms."""
        log, number = self.dialect.events_table, self.dialect.notification_column
        return self._query(
            f"SELECT {number}, originator_id, originator_version, topic, state FROM {log} "
            f"ORDER BY {number}",
            (),
        )

    def tables(self, *names: str) -> dict[str, list[tuple[Any, ...]]]:
        """The named tables (every table of the store if none is named) with all their rows,
        in a stable order: equal before and after means nothing was written to them."""
        if not names:
            if self.name == "sqlite":
                found = self._query("SELECT name FROM sqlite_master WHERE type='table'", ())
            else:
                found = self._query(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema=?",
                    (self.schema,),
                )
            names = tuple(sorted(name for (name,) in found))
        return {
            table: sorted(self._query(f'SELECT * FROM "{table}"', ()), key=repr) for table in names
        }

    def projections(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every projection table whose rows can be read back (as a rebuild is compared with
        the live views), with all its rows."""
        readable = [t for p in all_projections(self.dialect) if p.readable for t in p.tables]
        return self.tables(*readable)

    @property
    def log(self) -> RawLog:
        return PostgresLog(self) if self.sqlite_path is None else SQLiteLog(self.sqlite_path)

    def _query(self, statement: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self.sqlite_path is not None:
            with closing(sqlite3.connect(self.sqlite_path, isolation_level=None)) as db:
                return db.execute(statement, parameters).fetchall()
        return [tuple(row) for row in self._postgres().execute(statement, parameters).fetchall()]

    def _run(self, statement: str, parameters: tuple[Any, ...]) -> None:
        if self.sqlite_path is not None:
            with closing(sqlite3.connect(self.sqlite_path, isolation_level=None)) as db:
                db.execute(statement, parameters)
            return
        self._postgres().execute(statement, parameters)

    def _postgres(self) -> PostgresDatabase:
        # chatledger's own connection class, for its `?` parameters and the schema's path;
        # one per test, opened on first use.
        if self._opened.connection is None:
            self._opened.connection = PostgresDatabase(parse_database_url(self.url))
        return self._opened.connection

    def close(self) -> None:
        self._opened.close()


@contextmanager
def open_store(backend: str, workspace: Path) -> Iterator[Store]:
    """An empty store: `workspace` (a folder not yet created) and, on PostgreSQL, a schema not
    yet created either (the first Ledger creates it), dropped afterwards."""
    with nullcontext("") if backend == "sqlite" else fresh_schema() as url:
        store = Store(StoreSpec(workspace, url))
        try:
            yield store
        finally:
            # Before the schema is dropped: an open connection's locks would hold the drop.
            store.close()


# -- the log's table, row by row ---------------------------------------------------------------
class RawLog(ABC):
    """The table the eventsourcing recorder keeps the log in, read and changed with plain SQL
    (written with `?` parameters and a `{table}` placeholder). Every change must hit exactly
    the rows it names, so a test can never pass by tampering with nothing."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """A connection (with `execute`) whose statements commit together on a clean exit."""

    @abstractmethod
    def _statement(self, statement: str) -> str:
        """`statement` with this store's table name and parameter style."""

    @abstractmethod
    def _key(self, conversation: UUID) -> Any:
        """A conversation id as the originator_id column holds it."""

    def _rows(self, statement: str, *parameters: Any) -> list[Any]:
        with self._transaction() as db:
            return list(db.execute(self._statement(statement), parameters).fetchall())

    def _change(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        with self._transaction() as db:
            for statement, parameters in statements:
                changed = db.execute(self._statement(statement), parameters).rowcount
                assert changed == 1, f"{statement} {parameters} changed {changed} rows"

    def events(self, conversation: UUID) -> list[tuple[int, str]]:
        """(position, topic) of every stored event of the conversation, in position order."""
        return [
            (int(position), str(topic))
            for position, topic in self._rows(
                "SELECT originator_version, topic FROM {table} WHERE originator_id=? "
                "ORDER BY originator_version",
                self._key(conversation),
            )
        ]

    def _column(self, column: str, conversation: UUID, position: int) -> Any:
        rows = self._rows(
            f"SELECT {column} FROM {{table}} WHERE originator_id=? AND originator_version=?",
            self._key(conversation),
            position,
        )
        assert len(rows) == 1, f"no event {conversation} @ {position}"
        return rows[0][0]

    def state(self, conversation: UUID, position: int) -> bytes:
        return bytes(self._column("state", conversation, position))

    def topic(self, conversation: UUID, position: int) -> str:
        return str(self._column("topic", conversation, position))

    def write_state(self, conversation: UUID, position: int, state: bytes) -> None:
        self._change(
            (
                "UPDATE {table} SET state=? WHERE originator_id=? AND originator_version=?",
                (state, self._key(conversation), position),
            )
        )

    def write_topic(self, conversation: UUID, position: int, topic: str) -> None:
        self._change(
            (
                "UPDATE {table} SET topic=? WHERE originator_id=? AND originator_version=?",
                (topic, self._key(conversation), position),
            )
        )

    def delete(self, conversation: UUID, position: int) -> None:
        self._change(
            (
                "DELETE FROM {table} WHERE originator_id=? AND originator_version=?",
                (self._key(conversation), position),
            )
        )

    def swap_positions(self, conversation: UUID, first: int, second: int) -> None:
        """The two rows trade positions, each keeping its payload. Position -1 parks the first
        row, as no two rows may share a position even for a moment."""
        key = self._key(conversation)
        renumber = (
            "UPDATE {table} SET originator_version=? WHERE originator_id=? AND originator_version=?"
        )
        self._change(
            (renumber, (-1, key, first)),
            (renumber, (first, key, second)),
            (renumber, (second, key, -1)),
        )


class SQLiteLog(RawLog):
    """`stored_events` in the workspace's file; the id is the uuid's hex."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path)) as db, db:
            yield db

    def _statement(self, statement: str) -> str:
        return statement.format(table="stored_events")

    def _key(self, conversation: UUID) -> Any:
        return conversation.hex


class PostgresLog(RawLog):
    """`chatledger_events` in the store's schema; the id is a uuid."""

    def __init__(self, store: Store) -> None:
        self.table = f'"{store.schema}".chatledger_events'

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        assert postgres.DSN is not None
        with psycopg.connect(postgres.DSN) as db:
            yield db

    def _statement(self, statement: str) -> str:
        return statement.format(table=self.table).replace("?", "%s")

    def _key(self, conversation: UUID) -> Any:
        return conversation
