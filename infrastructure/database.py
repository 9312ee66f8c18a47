"""What the projections and the reads need from the SQL database that holds the log, whichever
database it is (SQLite by default, PostgreSQL when configured).

Projections are written once, in the SQL both databases share, with `?` parameters; a Dialect
says what differs: the parameter style, a few column types, where the log's table is and how
it names an event's place in the log. Full-text search differs more and has one projection
per database (see projections/search.py)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import lru_cache
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.persistence import PersistenceError

from domain.errors import StoreError


class Cursor(Protocol):
    """The DB-API subset projections and reads use (sqlite3 and psycopg cursors have it)."""

    def execute(self, statement: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, statement: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Rows(Protocol):
    """What a read gives back."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Dialect(ABC):
    name: str
    #: The log's table, as the eventsourcing recorder named it.
    events_table: str
    #: The log's column that orders all events (the notification id).
    notification_column: str

    @abstractmethod
    def ddl(self, statement: str) -> str:
        """A CREATE statement written for SQLite, in this database's types."""

    @abstractmethod
    def stream_key(self, conversation_id: UUID) -> Any:
        """A conversation id as the log's originator_id column holds it."""

    @abstractmethod
    def stream_id(self, value: Any) -> UUID:
        """The log's originator_id column value as a conversation id."""

    @abstractmethod
    def contains(self, expression: str) -> str:
        """A condition: the text `expression` holds the text parameter as it is. Not LIKE,
        which takes % and _ in it as wildcards and, in SQLite, stops at a NUL."""


class SQLiteDialect(Dialect):
    name = "sqlite"
    events_table = "stored_events"
    notification_column = "rowid"

    def ddl(self, statement: str) -> str:
        return statement

    def stream_key(self, conversation_id: UUID) -> Any:
        return conversation_id.hex

    def stream_id(self, value: Any) -> UUID:
        return UUID(value)

    def contains(self, expression: str) -> str:
        return f"instr({expression}, ?) > 0"


class PostgresDialect(Dialect):
    name = "postgres"
    events_table = "chatledger_events"
    notification_column = "notification_id"

    def ddl(self, statement: str) -> str:
        return _postgres_ddl(statement)

    def stream_key(self, conversation_id: UUID) -> Any:
        return conversation_id

    def stream_id(self, value: Any) -> UUID:
        return value if isinstance(value, UUID) else UUID(value)

    def contains(self, expression: str) -> str:
        return f"strpos({expression}, ?) > 0"

    # PostgreSQL's text type cannot hold NUL, which is valid text a user may send. Text bound
    # for it is escaped with a noncharacter: NUL as ESCAPE "0", ESCAPE itself as ESCAPE "1".
    # Text holding neither (nearly all) is stored as it is, so searches and indexes see it as
    # written; a search term escaped alike is found in text escaped alike.
    ESCAPE = "\uffff"
    _ESCAPED = re.compile(ESCAPE + "([01])")

    @classmethod
    def text_to_store(cls, text: str) -> str:
        if "\x00" not in text and cls.ESCAPE not in text:
            return text
        return text.replace(cls.ESCAPE, cls.ESCAPE + "1").replace("\x00", cls.ESCAPE + "0")

    @classmethod
    def text_from_store(cls, text: str) -> str:
        if cls.ESCAPE not in text:
            return text
        return cls._ESCAPED.sub(lambda m: "\x00" if m[1] == "0" else cls.ESCAPE, text)


# SQLite's INTEGER is 64 bits and REAL is a double; PostgreSQL's same-named types are not.
_POSTGRES_TYPES = (
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT ROWID\s*$"), ")"),
)


@lru_cache(maxsize=256)
def _postgres_ddl(statement: str) -> str:
    for pattern, replacement in _POSTGRES_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


class Database(ABC):
    """The connection that reads projections and the log, and writes projections outside
    event inserts (catch-up and rebuild). Event inserts project on the recorder's own
    connection, in the insert's transaction (see the projecting recorders)."""

    dialect: Dialect
    #: How messages name the store: its file, or its PostgreSQL database and schema.
    where: str
    #: Opened read-only (as the reading commands open it): whatever would write is refused.
    read_only: bool = False
    #: The errors of the database's driver, which `failures` turns into StoreErrors.
    driver_errors: tuple[type[Exception], ...]
    #: Whether the recorder has the projections write their rows before it takes the log's
    #: lock (then the rows need no notification ids; see ProjectionRunner).
    projects_before_lock: bool = False
    #: Whether a rebuild builds the new tables aside, a batch per transaction, and swaps
    #: them in (see ProjectionRunner.rebuild).
    rebuilds_aside: bool = False

    @abstractmethod
    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> Rows:
        """Runs one statement outside any explicit transaction (reads)."""

    @abstractmethod
    def failed(self, error: Exception) -> StoreError:
        """What a failure of the database, or of the event library on it, means for a
        person, as a StoreError naming the store."""

    @contextmanager
    def failures(self) -> Iterator[None]:
        """Turns a failure of the database, or of the event library on it, into the
        StoreError `failed` gives."""
        caught: tuple[type[Exception], ...] = (PersistenceError, *self.driver_errors)
        try:
            yield
        except caught as error:
            raise self.failed(error) from error

    def refuse_if_read_only(self) -> None:
        """Called before anything that writes."""
        if self.read_only:
            raise StoreError(
                f"{self.where} is open read-only, as the reading commands open it, and this "
                "would write to it. Open it for writing (without read_only) to do that."
            )

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Cursor]:
        """A write transaction serialised with every insert of events, so projecting in it
        can neither miss nor repeat an event."""

    def projection_cursor(self, recorder_cursor: Any) -> Cursor:
        """A cursor for projecting in the transaction of `recorder_cursor`, the recorder's
        cursor inserting events."""
        return recorder_cursor

    @abstractmethod
    def writer_lock(self) -> AbstractContextManager[None]:
        """Held by a command from deciding to saving."""

    def rebuild_lock(self) -> AbstractContextManager[None]:
        """Held by a rebuild from start to end, where rebuilds run in many transactions (see
        `rebuilds_aside`): one rebuild at a time, and writers are not kept waiting."""
        return nullcontext()

    @abstractmethod
    def lock_conversation(self, conversation_id: UUID) -> None:
        """Called inside `writer_lock` before a command reads a conversation it will change;
        released when `writer_lock` exits."""

    @abstractmethod
    def changed_by_others(self) -> bool:
        """Whether another writer may have committed since `note_own_commit` (True when
        unknown)."""

    @abstractmethod
    def note_own_commit(self) -> None:
        """Marks the present state as this process's own."""

    @abstractmethod
    def forget_commits(self) -> None:
        """Forgets what `note_own_commit` marked."""

    @abstractmethod
    def close(self) -> None: ...
