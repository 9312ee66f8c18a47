"""Opening a PostgreSQL store, chosen by a `postgresql://` URL: the log through the
eventsourcing library's PostgreSQL recorder (psycopg 3 and its pool), the projections in the
same database and schema, committed with the events they project.

A URL may name a schema with `?schema=name` (as Prisma's URLs do): every table lives there, so
one database can hold several independent stores. The other query parameters are libpq's."""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from uuid import UUID

import psycopg
from eventsourcing.persistence import PersistenceError
from eventsourcing.utils import get_topic
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row

from domain.errors import ConcurrencyConflict, StoreError
from infrastructure.database import Cursor, Database, PostgresDialect
from infrastructure.event_store import EventStore
from infrastructure.projecting_recorder import ProjectingPostgresRecorder
from infrastructure.redaction import mask, passwords_in, redact
from infrastructure.schema import (
    MARKER_TABLE,
    META_TABLE_DDL,
    READ_SCHEMA_VERSION,
    RECORD_SCHEMA_VERSION,
    SCHEMA_VERSION,
    check_schema_version,
    no_store_in,
)

#: Seconds to wait for the server, and for another writer's lock on the log.
CONNECT_TIMEOUT = 10
LOCK_TIMEOUT = 30
#: Lower case only: the library and our search_path name the schema unquoted, and PostgreSQL
#: folds unquoted names to lower case.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


#: libpq's two spellings, and SQLAlchemy's naming psycopg as the driver (read as the first).
_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def is_postgres_url(url: str) -> bool:
    return url.startswith(_SCHEMES)


@dataclass(frozen=True)
class PostgresLocation:
    dbname: str
    host: str
    port: str
    user: str
    # Never shown, not even by repr (a traceback's locals, a debugger, a log).
    password: str = field(repr=False)
    schema: str
    #: The URL's other libpq parameters, for our own connection (it may hold the password).
    conninfo: str = field(repr=False)

    def __str__(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname} ({self.schema})"

    def redact(self, text: str) -> str:
        """`text` (a driver's error, say) with the password masked."""
        return mask(text, {self.password, *passwords_in(self.conninfo)})


def parse_database_url(url: str) -> PostgresLocation:
    given = url
    if url.startswith("postgresql+psycopg://"):
        url = "postgresql://" + url.removeprefix("postgresql+psycopg://")
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise StoreError(f"The database URL is not valid: {redact(str(error), given)}.") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for key, value in query if key == "schema"), "public")
    # fullmatch: `$` would also match before a trailing newline.
    if not _SCHEMA_NAME.fullmatch(schema):
        raise StoreError(
            f"Schema {schema!r} in the database URL is not a plain PostgreSQL name "
            "(lower-case letters, digits and underscores, at most 63)."
        )
    if schema.startswith("pg_") or schema == "information_schema":
        raise StoreError(f"Schema {schema!r} belongs to PostgreSQL itself; name another.")
    # Not urlunsplit: it drops the "//" of a URL without a host (postgresql:///dbname).
    others = urlencode([q for q in query if q[0] != "schema"])
    libpq_url = re.split("[?#]", url, maxsplit=1)[0] + (f"?{others}" if others else "")
    try:
        params = conninfo_to_dict(libpq_url)
    except psycopg.ProgrammingError as error:
        message = redact(str(error).strip(), given)
        raise StoreError(f"The database URL is not valid: {message}.") from None
    return PostgresLocation(
        dbname=str(params.get("dbname") or os.environ.get("PGDATABASE") or "postgres"),
        host=str(params.get("host") or os.environ.get("PGHOST") or "localhost"),
        port=str(params.get("port") or os.environ.get("PGPORT") or "5432"),
        user=str(params.get("user") or os.environ.get("PGUSER") or getpass.getuser()),
        password=str(params.get("password") or os.environ.get("PGPASSWORD") or ""),
        schema=schema,
        conninfo=libpq_url,
    )


@lru_cache(maxsize=512)
def _pyformat(statement: str) -> str:
    # Our SQL never holds "?" or "%" outside parameters, so the translation is textual.
    return statement.replace("?", "%s")


def _bound(parameters: Sequence[Any]) -> list[Any]:
    return [PostgresDialect.text_to_store(p) if isinstance(p, str) else p for p in parameters]


def _loaded(row: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(PostgresDialect.text_from_store(v) if isinstance(v, str) else v for v in row)


class PostgresCursor:
    """A psycopg cursor that takes the `?` parameters our SQL is written with, and keeps
    text whole that PostgreSQL's text type could not hold (see PostgresDialect)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self.cursor = cursor

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> PostgresCursor:
        self.cursor.execute(_pyformat(statement), _bound(parameters))
        return self

    def executemany(self, statement: str, parameters: Iterable[Sequence[Any]]) -> None:
        self.cursor.executemany(_pyformat(statement), map(_bound, parameters))

    def fetchone(self) -> Any:
        row = self.cursor.fetchone()
        return None if row is None else _loaded(row)

    def fetchall(self) -> list[Any]:
        return [_loaded(row) for row in self.cursor.fetchall()]

    def __iter__(self) -> Iterator[Any]:
        return map(_loaded, self.cursor)


class PostgresDatabase(Database):
    dialect = PostgresDialect()
    driver_errors = (psycopg.Error,)
    projects_before_lock = True

    def __init__(self, location: PostgresLocation, *, read_only: bool = False) -> None:
        self.location = location
        self.where = str(location)
        self.read_only = read_only
        self.connection = self._connect()
        self._search_path = location.schema
        #: Names the advisory lock between projecting writers and rebuilds (see transaction).
        self._gate = f"chatledger-projections:{location.schema}"
        self._locked = False

    def _connect(self) -> psycopg.Connection[Any]:
        location = self.location
        try:
            return psycopg.connect(
                location.conninfo,
                dbname=location.dbname,
                host=location.host,
                port=location.port,
                user=location.user,
                password=location.password,
                connect_timeout=CONNECT_TIMEOUT,
                autocommit=True,
                row_factory=tuple_row,
                # A lock wait (a conversation's lock, a rebuild's) ends with an error
                # rather than never; opened read-only, the server refuses any write too.
                options=f"-c search_path={location.schema} -c lock_timeout={LOCK_TIMEOUT}s"
                + (" -c default_transaction_read_only=on" if self.read_only else ""),
            )
        except psycopg.OperationalError as error:
            raise StoreError(
                location.redact(f"Cannot connect to PostgreSQL at {location}: {error}".strip())
            ) from None

    def failed(self, error: Exception) -> StoreError:
        if self.connection.broken:
            # The server closed the connection (a restart, a failover, a terminated
            # backend): the next call connects again.
            self.connection = self._connect()
            self._locked = False
        return StoreError(
            self.location.redact(f"PostgreSQL at {self.location} failed: {error}".strip())
        )

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> Cursor:
        try:
            return PostgresCursor(self.connection.cursor()).execute(statement, parameters)
        except psycopg.OperationalError as error:
            if not self.connection.broken:
                raise self.failed(error) from None
            # A read on a connection the server closed can safely be repeated.
            self.failed(error)
            try:
                return PostgresCursor(self.connection.cursor()).execute(statement, parameters)
            except psycopg.OperationalError as again:
                raise self.failed(again) from None
        except psycopg.Error as error:
            raise self.failed(error) from None

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        self.refuse_if_read_only()
        try:
            with self.connection.transaction():
                cursor = PostgresCursor(self.connection.cursor())
                # Writers project before they take the log's lock (see projection_cursor):
                # wait for those under way, and hold off new ones, before taking it too.
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (self._gate,))
                # The lock the recorder takes to insert events: while it is held no event
                # is inserted (or projected) by anyone else.
                cursor.execute(f"LOCK TABLE {self.dialect.events_table} IN EXCLUSIVE MODE")
                yield cursor
        except (psycopg.Error, PersistenceError) as error:
            raise self.failed(error) from None

    def projection_cursor(self, recorder_cursor: Any) -> Cursor:
        """A cursor in the recorder's insert transaction, on this store's schema (the
        library's pooled connections use the server's default search path)."""
        cursor = PostgresCursor(recorder_cursor.connection.cursor(row_factory=tuple_row))
        # The shared side of the gate `transaction` closes: a writer projects before it
        # takes the log's lock, a rebuild takes the log's lock and then drops the projections'
        # tables; without the gate each would wait for the other.
        cursor.execute(
            "SELECT set_config('search_path', ?, true), pg_advisory_xact_lock_shared(hashtext(?))",
            (self._search_path, self._gate),
        )
        return cursor

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        self.refuse_if_read_only()
        try:
            yield
        finally:
            if self._locked:
                self._locked = False
                self.execute("SELECT pg_advisory_unlock_all()")

    def lock_conversation(self, conversation_id: UUID) -> None:
        # Writers on many hosts share the database. Optimistic concurrency on the stream's
        # next position alone keeps the log right, but writers racing for one conversation
        # then retry over and over (4 processes: 40% of saves, p99 300 ms); a lock per
        # conversation, held from reading to saving, queues them instead. A command changes
        # at most one existing conversation, so two commands never wait on each other.
        key = int.from_bytes(conversation_id.bytes[:8], "big", signed=True)
        try:
            self.execute("SELECT pg_advisory_lock(?)", (key,))
        except StoreError as error:
            if isinstance(error.__context__, psycopg.errors.LockNotAvailable):
                raise ConcurrencyConflict(
                    f"Conversation {conversation_id} stayed locked by another writer for "
                    f"{LOCK_TIMEOUT} s. Retry the call."
                ) from None
            raise
        self._locked = True

    def changed_by_others(self) -> bool:
        # Nothing as cheap as SQLite's data_version says whether another host committed.
        return True

    def note_own_commit(self) -> None:
        """Nothing to note: see changed_by_others."""

    def forget_commits(self) -> None:
        """Nothing noted: see changed_by_others."""

    @contextmanager
    def setup_lock(self) -> Iterator[None]:
        """Serialises creating the tables: concurrent CREATE ... IF NOT EXISTS can fail."""
        key = sql.Literal(f"chatledger:{self.location.schema}")
        self.connection.execute(sql.SQL("SELECT pg_advisory_lock(hashtext({}))").format(key))
        try:
            yield
        finally:
            self.connection.execute(sql.SQL("SELECT pg_advisory_unlock(hashtext({}))").format(key))

    def close(self) -> None:
        self.connection.close()


def _prepare_schema(database: PostgresDatabase, *, read_only: bool, must_exist: bool) -> None:
    """Checks the store's schema version, creating its schema and first table if it has
    none, unless it must exist already (read-only, it must)."""
    location = database.location
    if read_only or must_exist:
        found = database.execute(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = ? AND tablename = ?",
            (location.schema, MARKER_TABLE),
        ).fetchone()
        if found is None:
            raise no_store_in(location)
    else:
        database.connection.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(location.schema))
        )
        database.execute(META_TABLE_DDL)
    row = database.execute(READ_SCHEMA_VERSION).fetchone()
    check_schema_version(row[0] if row else None, str(location))
    if not read_only:
        database.execute(RECORD_SCHEMA_VERSION, (str(SCHEMA_VERSION),))


def open_postgres(
    url: str, cache_size: int, *, read_only: bool = False, must_exist: bool = False
) -> tuple[PostgresDatabase, EventStore]:
    location = parse_database_url(url)
    database = PostgresDatabase(location, read_only=read_only)
    try:
        with database.setup_lock():
            _prepare_schema(database, read_only=read_only, must_exist=must_exist)
            store = EventStore(
                {
                    "PERSISTENCE_MODULE": "eventsourcing.postgres",
                    "POSTGRES_DBNAME": location.dbname,
                    "POSTGRES_HOST": location.host,
                    "POSTGRES_PORT": location.port,
                    "POSTGRES_USER": location.user,
                    "POSTGRES_PASSWORD": location.password,
                    "POSTGRES_SCHEMA": location.schema,
                    "POSTGRES_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
                    "POSTGRES_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
                    "AGGREGATE_CACHE_MAXSIZE": str(max(1, cache_size)),
                    "APPLICATION_RECORDER_TOPIC": get_topic(ProjectingPostgresRecorder),
                    "CREATE_TABLE": "n" if read_only else "y",
                }
            )
    except psycopg.Error as error:
        database.close()
        raise StoreError(
            location.redact(f"Cannot open the store at {location}: {error}".strip())
        ) from None
    except BaseException:
        database.close()
        raise
    store.failures = database.failures
    return database, store
